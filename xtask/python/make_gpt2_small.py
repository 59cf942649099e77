#!/usr/bin/env python3
"""Write a GPT-2-small-shaped checkpoint with random weights for `cargo xtask perf`.

    python xtask/python/make_gpt2_small.py --root <repo root> [--out DIR]

12 layers, d_model 768, 12 heads, vocab 50257, n_positions 1024 (124M parameters, transformers'
GPT2Config defaults), weights from GPT2LMHeadModel's own initialisation under torch seed 0,
written with GPT2LMHeadModel.save_pretrained (HF layout: config.json, generation_config.json,
model.safetensors), plus the real GPT-2 tokenizer copied from models-cache/tiny-gpt2/.

Default output: models-cache/generated/gpt2-small/ (ignored by git). Nothing is done when the
directory already holds all four files. The directory is written under a temporary name and
renamed, so an interrupted run never leaves a half-written checkpoint behind. Performance does
not depend on the weight values; the shape and seed of the team's earlier Python measurements.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json")
SEED = 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = args.root.resolve()
    out = (args.out or root / "models-cache" / "generated" / "gpt2-small").resolve()
    tokenizer = root / "models-cache" / "tiny-gpt2" / "tokenizer.json"

    if all((out / f).is_file() for f in FILES):
        print(f"checkpoint present: {out}")
        return 0
    if not tokenizer.is_file():
        print(f"missing {tokenizer} (the embedded model's tokenizer)", file=sys.stderr)
        return 1

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=50257,
        n_positions=1024,
        n_ctx=1024,  # TransformerLens reads it (the hub's gpt2 config.json has it)
        n_embd=768,
        n_layer=12,
        n_head=12,
        bos_token_id=50256,
        eos_token_id=50256,
    )
    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(config).eval()
    n_params = sum(p.numel() for p in model.parameters())

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(str(staging))
        shutil.copyfile(tokenizer, staging / "tokenizer.json")
        missing = [f for f in FILES if not (staging / f).is_file()]
        if missing:
            raise SystemExit(f"save_pretrained did not write {missing}")
        if out.exists():
            shutil.rmtree(out)
        staging.chmod(0o755)
        for f in staging.iterdir():
            f.chmod(0o644)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    size = (out / "model.safetensors").stat().st_size
    print(f"wrote {out}: {n_params / 1e6:.1f}M parameters, model.safetensors {size / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
