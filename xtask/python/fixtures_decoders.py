"""The `decoders` stage of fixtures.py: random Llama-family checkpoints and their HF goldens.

For every config in DECODER_CONFIGS: build the HF model (LlamaForCausalLM, MistralForCausalLM,
Qwen2ForCausalLM, Qwen3ForCausalLM) from its config kwargs, overwrite every parameter from a
seeded generator (norm weights 1 + N(0, 0.1), biases N(0, 0.05), q/k/v N(0, 0.2), every other
matrix N(0, 0.1)), save_pretrained into tests/fixtures/<name>/model/, reload it with eager
attention and write tests/fixtures/<name>/hf.{json,safetensors} exactly as the GPT-2 goldens
(fixtures.hf_goldens: logits, losses, every hidden state, greedy generation with and without the
KV cache, for single prompts and a left-padded batch).

Each config exercises the knobs that break naive code: a GQA ratio above 1, rope_theta other than
10000 (and not an integer), llama3 and linear rope scaling, tied and untied embeddings, a sliding
window shorter than the prompts (and than a cached generation), q/k/v biases, Qwen3's q/k norms
with head_dim decoupled from hidden_size / num_attention_heads. Directory names say nothing of the
family (TransformerLens infers some architectures from the path).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import fixtures

# BOS = EOS = vocab_size - 1, as for the GPT-2 goldens (fixtures.make_prompts relies on it).
VOCAB = 384

DECODER_CONFIGS = [
    {
        "name": "dec-a",
        "class": "LlamaForCausalLM",
        "seed": 3023,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "attention_bias": True,
            "mlp_bias": True,
            "rope_parameters": {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        },
    },
    {
        "name": "dec-b",
        "class": "LlamaForCausalLM",
        "seed": 3004,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 48,
            "intermediate_size": 80,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 64,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
            "rope_parameters": {"rope_type": "linear", "rope_theta": 2500.0, "factor": 2.0},
        },
    },
    {
        "name": "dec-c",
        "class": "MistralForCausalLM",
        "seed": 3005,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "intermediate_size": 112,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "sliding_window": 4,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000.0},
        },
    },
    {
        "name": "dec-d",
        "class": "Qwen2ForCausalLM",
        "seed": 3006,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 20.5},
        },
    },
    {
        "name": "dec-e",
        "class": "Qwen3ForCausalLM",
        "seed": 3007,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 24,
            "max_position_embeddings": 64,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,
            "attention_bias": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": 60.5},
        },
    },
]


def config_class(class_name: str):
    import transformers

    return getattr(transformers, class_name.replace("ForCausalLM", "Config"))


def model_class(class_name: str):
    import transformers

    return getattr(transformers, class_name)


def param_kind(name: str) -> str:
    if name.endswith(".bias"):
        return "bias"
    if name.endswith("norm.weight"):
        return "norm_weight"
    if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
        return "qkv"
    return "matrix"


def randomize_(model, seed: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    kinds = {}
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied lm_head is embed_tokens itself
            noise = torch.randn(tuple(p.shape), generator=g, dtype=torch.float32)
            kind = param_kind(name)
            scale = {"bias": 0.05, "norm_weight": 0.1, "qkv": 0.2, "matrix": 0.1}[kind]
            p.copy_((1.0 if kind == "norm_weight" else 0.0) + scale * noise)
            kinds[name] = kind
    return kinds


def build_and_save(spec: dict, out_dir: Path) -> dict:
    import torch

    hf = dict(spec["hf"])
    hf.update(bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, pad_token_id=None)
    cfg = config_class(spec["class"])(architectures=[spec["class"]], **hf)
    torch.manual_seed(spec["seed"])
    model = model_class(spec["class"])(cfg).to(torch.float32).eval()
    kinds = randomize_(model, spec["seed"])
    tied = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tied == spec["hf"]["tie_word_embeddings"], spec["name"]
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tlrs-dec-") as td:
        model.save_pretrained(td, safe_serialization=True)
        written = sorted(p.name for p in Path(td).iterdir())
        for f in written:
            shutil.copyfile(Path(td) / f, out_dir / f)
    return {"files_written_by_save_pretrained": written, "param_kinds": kinds}


def load(spec: dict, model_dir: Path):
    import torch

    cls = model_class(spec["class"])
    return cls.from_pretrained(str(model_dir), attn_implementation="eager", dtype=torch.float32).eval()


def stage_decoders(root: Path, only: list[str] | None = None) -> None:
    fixtures.setup_torch()
    fixtures.quiet_libraries()
    for spec in DECODER_CONFIGS:
        if only and spec["name"] not in only:
            continue
        fx = root / "tests" / "fixtures" / spec["name"]
        built = build_and_save(spec, fx / "model")
        model = load(spec, fx / "model")
        spec_for_prompts = {"hf": {**spec["hf"], "vocab_size": VOCAB, "bos_token_id": VOCAB - 1,
                                   "eos_token_id": VOCAB - 1}, "seed": spec["seed"]}
        prompts = fixtures.make_prompts(spec_for_prompts)
        fixtures.hf_goldens(spec_for_prompts, model, prompts, fx)
        fixtures.write_json(
            fx / "config_spec.json",
            {
                "name": spec["name"],
                "class": spec["class"],
                "seed": spec["seed"],
                "hf_kwargs": spec["hf"],
                "init": {"norm_weight": "1 + N(0, 0.1)", "bias": "N(0, 0.05)", "qkv": "N(0, 0.2)",
                         "matrix": "N(0, 0.1)"},
                **built,
                "versions": fixtures.versions(),
            },
        )
        fixtures.log(f"decoders: {spec['name']} ({spec['class']}) written")
