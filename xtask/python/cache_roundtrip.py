#!/usr/bin/env python3
"""Round trip of `tl-bench cache` through TransformerLens 3.9.0 (run by `cargo xtask test`).

Writes cache files with the Rust CLI on the embedded model, loads each into a TransformerLens
`ActivationCache` exactly as the README shows, and compares every activation and gradient with
TransformerLens's own `run_with_cache` on a HookedTransformer built from the same checkpoint:
the same keys, the same shapes, err = max|a - b| / max(1, max|b|) <= 1e-5 (masked attention
scores must be -inf on both sides).

Usage: python xtask/python/cache_roundtrip.py --tl-bench PATH --model-dir DIR
Python is a test tool here only; nothing on the Rust runtime path uses it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixtures  # noqa: E402  (sets the deterministic, offline environment on import)

TOLERANCE = 1e-5
TEXT = "When Mary and John went to the store, John gave a drink to"


def load_cache_file(path: Path, model):
    """The README's snippet: a tl-bench cache file as a TransformerLens ActivationCache."""
    from safetensors import safe_open
    from transformer_lens import ActivationCache

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    tokens, logits = tensors.pop("tokens"), tensors.pop("logits")
    return ActivationCache(tensors, model), tokens, logits, metadata


def err(ours, reference) -> float:
    import torch

    if tuple(ours.shape) != tuple(reference.shape):
        raise AssertionError(f"shape {tuple(ours.shape)} vs {tuple(reference.shape)}")
    ours, reference = ours.double(), reference.double()
    finite = torch.isfinite(reference)
    if not torch.equal(finite, torch.isfinite(ours)) or not torch.equal(
        ours[~finite], reference[~finite]
    ):
        raise AssertionError("non-finite entries differ")
    if not finite.any():
        return 0.0
    diff = (ours[finite] - reference[finite]).abs().max().item()
    return diff / max(1.0, reference[finite].abs().max().item())


def tl_model(model_dir: Path, processed: bool):
    config = json.loads((model_dir / "config.json").read_text())
    spec = {"hf": config, "name": model_dir.name, "seed": 0}
    from tokenizers import Tokenizer

    hf_model = fixtures.load_hf_model(model_dir)
    model = fixtures.build_ht(spec, hf_model, processed=processed, flags=False)
    model.checkpoint_tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    return model


def tl_run(model, tokens, grad_of: str):
    """TransformerLens's own caching hooks for the activations; gradients summed over firings.

    TransformerLens 3.9.0 applies `ln1` three times per block (once each for q, k and v), so its
    `ln1.hook_*` backward hooks fire three times and its own caching hook keeps the last firing
    only: the gradient through one of the three paths. Ours applies `ln1` once and records the
    full gradient, which is the sum of those three firings (docs/bridge-hook-names.md). So the
    reference gradient here is each hook's firings summed; for hooks that fire once, that is
    exactly what TransformerLens's caching hook stores.
    """
    import torch

    cache, fwd, _ = model.get_caching_hooks(incl_bwd=False)
    grads: dict = {}
    firings: dict = {}

    def save_grad(grad, hook):
        name = hook.name + "_grad"
        firings[name] = firings.get(name, 0) + 1
        grads[name] = grads[name] + grad.detach() if name in grads else grad.detach().clone()

    bwd = [(name, save_grad) for name in model.hook_dict]
    with torch.enable_grad(), model.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
        logits = model(tokens, return_type="logits")
        scalar(logits, tokens, grad_of, model).backward()
    model.zero_grad(set_to_none=True)
    repeated = sorted(n for n, c in firings.items() if c > 1)
    expected_repeated = sorted(
        f"blocks.{l}.ln1.{h}_grad" for l in range(model.cfg.n_layers) for h in ("hook_scale", "hook_normalized")
    )
    assert repeated == expected_repeated, f"hooks firing more than once: {repeated}"
    return {**{k: v.detach() for k, v in cache.items()}, **grads}, logits.detach()


def scalar(logits, tokens, grad_of: str, model):
    from transformer_lens.utils import lm_cross_entropy_loss

    if grad_of == "loss":
        return lm_cross_entropy_loss(logits, tokens)
    if grad_of == "sum-last-logprobs":
        return logits[:, -1].log_softmax(-1).sum()
    if grad_of.startswith("logit-diff:"):
        a, b = grad_of.removeprefix("logit-diff:").split(",")
        a, b = single_token(model, a), single_token(model, b)
        return (logits[:, -1, a] - logits[:, -1, b]).sum()
    raise ValueError(grad_of)


def single_token(model, text: str) -> int:
    ids = model.checkpoint_tokenizer.encode(text, add_special_tokens=False).ids
    assert len(ids) == 1, f"{text!r} is {len(ids)} tokens"
    return ids[0]


def check(tl_bench: Path, model_dir: Path, work: Path, case: dict, models: dict) -> float:
    out = work / f"{case['name']}.safetensors"
    args = [str(tl_bench), "cache", "--model", str(model_dir), "--text", TEXT, "--out", str(out)]
    args += ["--impl", case["impl"], "--names", case["names"], "--grad-of", case["grad_of"]]
    if case["processed"]:
        args.append("--processed")
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)

    model = models[case["processed"]]
    cache, tokens, logits, metadata = load_cache_file(out, model)
    assert metadata["grad_of"].startswith(case["grad_of"].split("@")[0]), metadata
    assert metadata["names"] == case["names"] and metadata["impl"] == case["impl"], metadata
    assert json.loads(metadata["tokens"]) == tokens[0].tolist(), metadata
    assert metadata["text"] == TEXT

    expected, expected_logits = tl_run(model, tokens, case["grad_of"])
    ours = dict(cache.items())
    if case["names"] == "tl":
        assert set(ours) == set(expected), (
            f"keys differ: only ours {sorted(set(ours) - set(expected))[:5]}, "
            f"only TL {sorted(set(expected) - set(ours))[:5]}"
        )
    else:
        missing = set(expected) - set(ours)
        assert not missing, f"TransformerLens keys missing: {sorted(missing)[:5]}"
        assert any(k.endswith(".hook_in") for k in ours), "no bridge names in a 'both' file"
    worst, worst_name = err(logits, expected_logits), "logits"
    for name, reference in expected.items():
        try:
            e = err(ours[name], reference)
        except AssertionError as error:
            raise AssertionError(f"{case['name']}: {name}: {error}") from None
        if e > TOLERANCE:
            raise AssertionError(f"{case['name']}: {name}: err {e:.3e} > {TOLERANCE}")
        if e > worst:
            worst, worst_name = e, name
    # The cache works as a TransformerLens cache: its helpers run on it.
    stacked = cache.accumulated_resid(incl_mid=True)
    assert stacked.shape[0] == 2 * model.cfg.n_layers + 1, stacked.shape
    assert cache["resid_pre", 1].shape == (1, tokens.shape[1], model.cfg.d_model)
    n_grads = sum(k.endswith("_grad") for k in expected)
    print(f"[roundtrip] {case['name']}: {len(expected)} entries ({n_grads} gradients), worst err {worst:.2e} ({worst_name})")
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tl-bench", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    args = parser.parse_args()
    fixtures.setup_torch()
    fixtures.quiet_libraries()
    models = {processed: tl_model(args.model_dir, processed) for processed in (False, True)}
    cases = [
        {"name": "bridge-loss", "impl": "bridge", "names": "tl", "grad_of": "loss", "processed": False},
        {
            "name": "hooked-logit-diff",
            "impl": "hooked",
            "names": "tl",
            "grad_of": "logit-diff: Mary, John",
            "processed": False,
        },
        {
            "name": "bridge-processed",
            "impl": "bridge",
            "names": "tl",
            "grad_of": "sum-last-logprobs",
            "processed": True,
        },
        {"name": "bridge-both", "impl": "bridge", "names": "both", "grad_of": "loss", "processed": False},
    ]
    with tempfile.TemporaryDirectory(prefix="tlrs-roundtrip-") as work:
        for case in cases:
            check(args.tl_bench, args.model_dir, Path(work), case, models)
    print(f"[roundtrip] passed: {len(cases)} cache files match TransformerLens 3.9.0's run_with_cache")
    return 0


if __name__ == "__main__":
    sys.exit(main())
