#!/usr/bin/env python3
"""Write the random-weight checkpoints `cargo xtask perf` measures.

    python xtask/python/make_perf_checkpoint.py --shape gpt2-small|qwen2.5-0.5b --root <repo root>
                                                [--out DIR]

* `gpt2-small`: 12 layers, d_model 768, 12 heads, vocab 50257, n_positions 1024 (124M
  parameters, transformers' GPT2Config defaults), with the real GPT-2 tokenizer copied from
  models-cache/tiny-gpt2/.
* `qwen2.5-0.5b`: the Llama-family checkpoint, Qwen2.5-0.5B's shape (494M parameters): 24
  layers, d_model 896, 14 query heads sharing 2 key/value heads (grouped-query attention), MLP
  4864, vocab 151936, tied embeddings, RoPE base 1e6, 32768 positions. The real Qwen2 tokenizer
  cannot be fetched here, so the tokenizer is tiny-qwen2's (models-cache/tiny-qwen2/: the same
  byte-level BPE scheme cut to 2256 tokens plus its specials); its ids are a subset of the
  vocabulary, as the real tokenizer's 151646 are of Qwen2's 151936 rows, and bos/eos are its
  `<|endoftext|>`.

Weights come from the model class's own initialisation under torch seed 0, written with
save_pretrained (HF layout: config.json, generation_config.json, model.safetensors).
Performance does not depend on the weight values.

Default output: models-cache/generated/<shape>/ (ignored by git). Nothing is done when the
directory already holds every file. The directory is written under a temporary name and renamed,
so an interrupted run never leaves a half-written checkpoint behind.
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

SEED = 0
WRITTEN = ("config.json", "generation_config.json", "model.safetensors")


def gpt2_small():
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
    return GPT2LMHeadModel, config


def qwen2_5_half_b():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    end_of_text = 2256  # tiny-qwen2's <|endoftext|>
    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        max_window_layers=24,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        use_sliding_window=False,
        sliding_window=None,
        bos_token_id=end_of_text,
        eos_token_id=end_of_text,
    )
    return Qwen2ForCausalLM, config


# shape -> (its model class and config, the embedded model whose tokenizer it takes, those
# tokenizer files).
SHAPES = {
    "gpt2-small": (gpt2_small, "tiny-gpt2", ("tokenizer.json",)),
    "qwen2.5-0.5b": (qwen2_5_half_b, "tiny-qwen2", ("tokenizer.json", "tokenizer_config.json")),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gpt2-small")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = args.root.resolve()
    build, tokenizer_model, tokenizer_files = SHAPES[args.shape]
    out = (args.out or root / "models-cache" / "generated" / args.shape).resolve()
    tokenizer_dir = root / "models-cache" / tokenizer_model
    files = WRITTEN + tokenizer_files

    if all((out / f).is_file() for f in files):
        print(f"checkpoint present: {out}")
        return 0
    missing = [f for f in tokenizer_files if not (tokenizer_dir / f).is_file()]
    if missing:
        print(f"missing {missing} in {tokenizer_dir} (the embedded model's tokenizer)", file=sys.stderr)
        return 1

    import torch

    model_class, config = build()
    torch.manual_seed(SEED)
    model = model_class(config).eval()
    n_params = sum(p.numel() for p in model.parameters())

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(str(staging))
        del model
        for f in tokenizer_files:
            shutil.copyfile(tokenizer_dir / f, staging / f)
        missing = [f for f in files if not (staging / f).is_file()]
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
