#!/usr/bin/env python3
"""The Python side of `cargo xtask perf --compare-python` (docs/performance.md).

    python xtask/python/perf_python.py --model models-cache/generated/gpt2-small --out FILE
                                       [--gqa-model models-cache/generated/qwen2.5-0.5b]
                                       [--device cpu|cuda] [--threads 2] [--quick] [--skip-suite]

On the checkpoint `tl-perf` measures (written by make_perf_checkpoint.py), with the fixtures' venv
(torch 2.13.0, transformers 5.9.0, transformer-lens 3.9.0), it measures:

* the TransformerLens 3.9.0 suite, `run_benchmark_suite(phases=[1, 2, 3])`, in a child process:
  the call's wall time, the import time, the whole process's wall time, its peak RSS (the child's
  own `getrusage(RUSAGE_SELF)`) and CPU time (`getrusage(RUSAGE_CHILDREN)` around it);
* forward passes (batch 1 x 128 and 8 x 128, random token ids, no_grad), medians after a warm-up,
  the variants interleaved repeat by repeat: HF `GPT2LMHeadModel` (default attention, and eager
  attention as the Rust HF tier computes it), HookedTransformer forward and `run_with_cache`,
  TransformerBridge forward and `run_with_cache`;
* HF `generate` with its KV cache (64 greedy tokens from a 128-token prompt);
* load times: a plain read of model.safetensors, `GPT2LMHeadModel.from_pretrained`,
  `HookedTransformer.from_pretrained_no_processing`.

Run with a venv holding transformer-lens 4.x instead (`cargo xtask perf --compare-tl4`), it
measures what that version offers a user today: its suite (TransformerBridge only, phases 1-3)
and the patching sweep through its TransformerBridge.

With `--gqa-model`, the suite runs once more on the Llama-family checkpoint (`suite_gqa` in the
JSON); nothing else is measured on it.

TransformerLens resolves models by official name, so each checkpoint is served offline from a
Hugging Face cache made next to it (models-cache/generated/hf-home, links to the files) under an
official name: the GPT-2-small-shaped one as `gpt2` (as the earlier Python measurements were
taken), the Qwen2.5-0.5B-shaped one as `Qwen/Qwen2.5-0.5B` (TransformerLens reads a Qwen2
model's shape from its config.json). Writes JSON to --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)
# The official name each checkpoint of make_perf_checkpoint.py is served under, by directory.
SERVED_AS = {"gpt2-small": "gpt2", "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B"}
# The name the in-process measurements load (the GPT-2-small-shaped checkpoint's).
NAME = "gpt2"


def served_name(model: Path) -> str:
    try:
        return SERVED_AS[model.name]
    except KeyError:
        raise SystemExit(f"{model}: not a checkpoint of make_perf_checkpoint.py ({sorted(SERVED_AS)})")


def hf_home_for(model: Path) -> Path:
    """The offline HF cache next to `model`, serving it under its official name (links, no
    copies)."""
    name = served_name(model)
    home = model.parent / "hf-home"
    repo = home / "hub" / ("models--" + name.replace("/", "--"))
    commit = hashlib.sha1(f"tlrs-perf {model.name}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in (f for f in FILES if (model / f).is_file()):
        link = snapshot / f
        target = (model / f).resolve()
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(target)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return home


def set_env(model: Path, threads: int, device: str) -> None:
    os.environ["HF_HOME"] = str(hf_home_for(model))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if device == "cpu":
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def quiet() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:
        pass


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# As tl-perf: a sample during which other processes kept more than BUSY_LIMIT cores busy is
# taken again, at most RETRIES times.
BUSY_LIMIT = 0.25
RETRIES = 3


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    if n == 0:
        return float("nan")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def stat(samples: list[float], others: list[float] | None = None, retaken: int = 0) -> dict:
    return {
        "median_ms": median(samples),
        "min_ms": min(samples),
        "samples_ms": samples,
        "others_cores": median(others) if others else None,
        "retaken": retaken,
    }


def cpu_snap() -> tuple[float, float, float]:
    """(wall, busy CPU seconds of the machine, CPU seconds of this process and its children)."""
    try:
        fields = open("/proc/stat").readline().split()
        busy = sum(float(fields[i]) for i in (1, 2, 3, 6, 7)) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        busy = 0.0
    t = os.times()
    return time.perf_counter(), busy, t.user + t.system + t.children_user + t.children_system


def others_since(before: tuple[float, float, float]) -> float:
    after = cpu_snap()
    wall = after[0] - before[0]
    if wall <= 0:
        return 0.0
    return max(0.0, ((after[1] - before[1]) - (after[2] - before[2])) / wall)


def quiet_sample(device: str, f, retries: int = RETRIES):
    """(ms, cores other processes used, runs discarded, f's result)."""
    again = 0
    while True:
        before = cpu_snap()
        sync(device)
        t = time.perf_counter()
        out = f()
        sync(device)
        ms = (time.perf_counter() - t) * 1e3
        busy = others_since(before)
        if busy > BUSY_LIMIT and again < retries:
            again += 1
            continue
        return ms, busy, again, out


def interleaved(device: str, warmup: int, repeats: int, variants: dict) -> dict:
    for f in variants.values():
        for _ in range(warmup):
            f()
    samples: dict[str, list[float]] = {k: [] for k in variants}
    others: dict[str, list[float]] = {k: [] for k in variants}
    retaken = {k: 0 for k in variants}
    for _ in range(repeats):
        for name, f in variants.items():
            ms, busy, again, _ = quiet_sample(device, f)
            samples[name].append(ms)
            others[name].append(busy)
            retaken[name] += again
    return {k: stat(samples[k], others[k], retaken[k]) for k in variants}


# ---- the suite, in a child process -------------------------------------------------------------


def tl_major() -> int:
    """The installed transformer-lens's major version."""
    import importlib.metadata

    return int(importlib.metadata.version("transformer-lens").split(".")[0])


def suite_child(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    import torch
    from transformer_lens.benchmarks import run_benchmark_suite

    import_s = time.perf_counter() - t0
    quiet()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    # 3.x compares the bridge with its HookedTransformer too; 4.x's suite is the bridge's alone.
    references = {"use_ht_reference": True} if tl_major() < 4 else {}
    t1 = time.perf_counter()
    results = run_benchmark_suite(
        served_name(args.model),
        device=args.device,
        dtype=torch.float32,
        use_hf_reference=True,
        enable_compatibility_mode=True,
        verbose=False,
        phases=[1, 2, 3],
        **references,
    )
    suite_s = time.perf_counter() - t1
    severities = [str(getattr(r, "severity", "")).split(".")[-1].upper() for r in results]
    failed = [r.name for r in results if not r.passed]
    doc = {
        "import_s": import_s,
        "suite_s": suite_s,
        "results": len(results),
        "passed": sum(bool(r.passed) for r in results),
        "failed": len(failed),
        "failures": failed,
        "warnings_passed": sum(
            1 for r, s in zip(results, severities) if r.passed and s.startswith("WARN")
        ),
        "torch_threads": torch.get_num_threads(),
        # This process's own peak: getrusage(RUSAGE_CHILDREN) in the parent is the largest of
        # every suite child it has run.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    Path(args.child_out).write_text(json.dumps(doc))
    return 0


def run_suite(args: argparse.Namespace, model: Path, out_dir: Path) -> dict:
    """The suite on `model`, in a child process (which serves it from the offline cache)."""
    child_out = out_dir / f"perf-python-suite-{os.getpid()}.json"
    cmd = [
        sys.executable,
        __file__,
        "--model",
        str(model),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--suite-child",
        str(child_out),
    ]
    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    cpu_before = children_cpu()
    before = cpu_snap()
    t = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    others = others_since(before)
    cpu = children_cpu() - cpu_before
    if proc.returncode != 0 or not child_out.exists():
        raise SystemExit(f"the Python suite failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    doc = json.loads(child_out.read_text())
    child_out.unlink()
    doc.update(
        {
            "process_wall_s": wall,
            "cpu_s": cpu,
            "others_cores": others,
            "command": f"run_benchmark_suite('{served_name(model)}', phases=[1, 2, 3], verbose=False) "
            f"in a child process (transformer-lens {tl_major()}.x)",
        }
    )
    return doc


# ---- in-process measurements -------------------------------------------------------------------


def measure(args: argparse.Namespace) -> dict:
    import torch

    quiet()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    import transformer_lens
    import transformers
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import GPT2LMHeadModel

    quiet()
    dev = args.device
    quick = args.quick
    reps_small, reps_large, reps_gen, reps_load = (1, 1, 1, 1) if quick else (5, 3, 3, 3)
    new_tokens = 8 if quick else 64
    out: dict = {
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "transformer_lens": getattr(transformer_lens, "__version__", "3.9.0"),
        },
        "threads": torch.get_num_threads(),
        "device": dev,
    }

    model_dir = str(args.model)
    st_file = args.model / "model.safetensors"

    def read():
        with open(st_file, "rb") as f:
            return f.read()

    def load_hf():
        return GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32).to(dev).eval()

    def load_ht():
        return HookedTransformer.from_pretrained_no_processing(
            NAME, device=dev, dtype=torch.float32
        )

    log("loads")
    out["load"] = interleaved(
        dev, 1, reps_load, {"read": read, "hf": load_hf, "ht": load_ht}
    )

    log("models")
    hf = load_hf()
    hf_eager = (
        GPT2LMHeadModel.from_pretrained(
            model_dir, dtype=torch.float32, attn_implementation="eager"
        )
        .to(dev)
        .eval()
    )
    ht = load_ht()
    if not quick:
        out["patching"] = patching_sweep(ht)
    bridge = TransformerBridge.boot_transformers(NAME, device=dev, dtype=torch.float32)
    out["attn_implementation_default"] = getattr(hf.config, "_attn_implementation", None)

    forward = {}
    with torch.no_grad():
        for batch, reps in ((1, reps_small), (8, reps_large)):
            log(f"forward {batch}x128")
            g = torch.Generator().manual_seed(batch)
            tokens = torch.randint(0, 50257, (batch, 128), generator=g).to(dev)
            counts = {}

            def ht_cache():
                _, cache = ht.run_with_cache(tokens)
                counts["ht_cache"] = len(cache)

            def bridge_cache():
                _, cache = bridge.run_with_cache(tokens)
                counts["tl_bridge_cache"] = len(cache)

            forward[f"{batch}x128"] = interleaved(
                dev,
                1,
                reps,
                {
                    "hf": lambda: hf(tokens).logits,
                    "hf_eager": lambda: hf_eager(tokens).logits,
                    "tl_bridge": lambda: bridge(tokens),
                    "tl_bridge_cache": bridge_cache,
                    "ht": lambda: ht(tokens),
                    "ht_cache": ht_cache,
                },
            )
            forward[f"{batch}x128"]["cache_entries"] = counts
    out["forward"] = forward
    del hf_eager, bridge, ht

    log("generation")
    g = torch.Generator().manual_seed(7)
    prompt = torch.randint(0, 50257, (1, 128), generator=g).to(dev)

    def generate(n):
        with torch.no_grad():
            res = hf.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                use_cache=True,
                pad_token_id=50256,
            )
        assert res.shape[1] == 128 + n, res.shape
        return res

    generate(4)
    samples, others, retaken = [], [], 0
    for _ in range(reps_gen):
        ms, busy, again, _ = quiet_sample(dev, lambda: generate(new_tokens))
        samples.append(ms)
        others.append(busy)
        retaken += again
    s = stat(samples, others, retaken)
    out["generation"] = {
        "new_tokens": new_tokens,
        "prompt_tokens": 128,
        "hf_cached": {
            "seconds": s["median_ms"] / 1e3,
            "tokens_per_s": new_tokens / (s["median_ms"] / 1e3),
            "stat": s,
        },
    }
    return out


# The prompt pair of tl-perf's patching sweep (crates/bench-suite/src/bin/tl-perf/workloads.rs).
PATCH_CLEAN = "When Mary and John went to the store, John gave a drink to"
PATCH_CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"


def measure_tl4(args: argparse.Namespace) -> dict:
    """transformer-lens 4.x: the patching sweep through its TransformerBridge."""
    import importlib.metadata

    import torch
    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    quiet()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    bridge = TransformerBridge.boot_transformers(NAME, device=args.device, dtype=torch.float32)
    out = {
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "transformer_lens": importlib.metadata.version("transformer-lens"),
        },
        "threads": torch.get_num_threads(),
        "device": args.device,
    }
    if not args.quick:
        out["patching"] = patching_sweep(bridge)
    return out


def patching_sweep(ht) -> dict:
    """TransformerLens's get_act_patch_resid_pre on tl-perf's prompt pair (`ht`: a
    HookedTransformer, or 4.x's TransformerBridge): one forward pass per (layer, position), the
    metric the logit difference ' Mary' - ' John'."""
    import torch
    from transformer_lens import patching

    log("patching sweep")
    clean, corrupted = ht.to_tokens(PATCH_CLEAN), ht.to_tokens(PATCH_CORRUPTED)
    mary, john = ht.to_single_token(" Mary"), ht.to_single_token(" John")

    def metric(logits):
        return logits[0, -1, mary] - logits[0, -1, john]

    with torch.no_grad():
        _, cache = ht.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_pre"))
        start = time.perf_counter()
        result = patching.get_act_patch_resid_pre(ht, corrupted, cache, metric)
        seconds = time.perf_counter() - start
    out = {"ht_s": seconds, "patches": int(result.numel()), "prompt_tokens": int(clean.shape[1])}
    try:
        out["attribution_s"] = median([attribution(ht, clean, corrupted, metric) for _ in range(3)])
    except Exception as e:  # another version's hook API: say so rather than fail the run
        out["attribution_error"] = f"{type(e).__name__}: {e}"
    out["cache_loop_s"] = median([cache_loop(ht) for _ in range(3)])
    return out


def attribution(model, clean, corrupted, metric) -> float:
    """Attribution patching as TransformerLens's tutorial does it: a clean run_with_cache, then
    the corrupted run with a forward and a backward caching hook on every hook point and a
    backward pass from the metric; (clean - corrupted) * grad at every point. Seconds."""
    import torch

    start = time.perf_counter()
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
    acts, grads = {}, {}

    def fwd(t, hook):
        acts[hook.name] = t.detach()

    def bwd(g, hook):
        grads[hook.name] = g.detach()

    # Every hook point the clean run cached (the ones that fire: TransformerLens refuses hooks on
    # points whose option is off).
    fired = set(clean_cache.keys())
    model.reset_hooks()
    model.add_hook(lambda name: name in fired, fwd, "fwd")
    model.add_hook(lambda name: name in fired, bwd, "bwd")
    try:
        metric(model(corrupted)).backward()
    finally:
        model.reset_hooks()
    attributions = {
        n: (clean_cache[n] - acts[n]) * g
        for n, g in grads.items()
        if n in clean_cache and n in acts and clean_cache[n].shape == g.shape
    }
    model.zero_grad(set_to_none=True)
    assert attributions, "no attribution computed"
    return time.perf_counter() - start


def cache_loop(model) -> float:
    """run_with_cache of every hook over 64 random 32-token prompts in batches of 8. Seconds."""
    import torch

    g = torch.Generator().manual_seed(100)
    batches = [torch.randint(0, 50257, (8, 32), generator=g) for _ in range(8)]
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            model.run_with_cache(batch)
    return time.perf_counter() - start


def log(msg: str) -> None:
    print(f"perf_python: {msg} ...", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--gqa-model", type=Path, help="also run the suite on this checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-suite", action="store_true")
    parser.add_argument("--suite-child", dest="child_out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.model = args.model.resolve()
    set_env(args.model, args.threads, args.device)
    if args.child_out:
        return suite_child(args)
    if args.out is None:
        parser.error("--out is required")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    doc: dict = {}
    major = tl_major()
    if not args.skip_suite:
        log(f"the TransformerLens {major}.x suite (phases 1-3, child process)")
        doc["suite"] = run_suite(args, args.model, args.out.parent)
        if args.gqa_model:
            log(f"the TransformerLens {major}.x suite on {args.gqa_model.name}")
            doc["suite_gqa"] = run_suite(args, args.gqa_model.resolve(), args.out.parent)
    doc.update(measure(args) if major < 4 else measure_tl4(args))
    doc["wall_s"] = time.perf_counter() - started
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    log(f"wrote {args.out} ({doc['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
