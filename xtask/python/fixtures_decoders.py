"""The `decoders` stage of fixtures.py: random Llama-family checkpoints and their HF goldens.

For every config in DECODER_CONFIGS: build the HF model (LlamaForCausalLM, MistralForCausalLM,
Qwen2ForCausalLM, Qwen3ForCausalLM) from its config kwargs, overwrite every parameter from a
seeded generator (norm weights 1 + N(0, 0.1), biases N(0, 0.05), q/k/v N(0, 0.2), every other
matrix N(0, 0.1)), save_pretrained into tests/fixtures/<name>/model/, reload it with eager
attention and write tests/fixtures/<name>/hf.{json,safetensors} exactly as the GPT-2 goldens
(fixtures.hf_goldens: logits, losses, every hidden state, greedy generation with and without the
KV cache, for single prompts and a left-padded batch).

It also writes tests/fixtures/<name>/hooked_{unprocessed,processed}.{json,safetensors}: TransformerLens
3.9.0 HookedTransformer goldens in the format of the GPT-2 ones (fixtures.ht_goldens), for a
HookedTransformer built the way TL builds one from a local directory (convert_hf_model_config ->
HookedTransformerConfig -> get_pretrained_state_dict -> load_and_process_state_dict), with the
corrections listed under "corrections" in each JSON wherever TL 3.9.0 would not compute what HF
computes (see tl_config_and_corrections / tl_state_dict_corrections below).

And tests/fixtures/<name>/bridge_hooks.json: TransformerLens 3.9.0's TransformerBridge booted on the
model dir, hook names / aliases / cached keys and shapes, unprocessed and in compatibility mode, in
the format of the GPT-2 ones (fixtures.bridge_listing; see bridge_decoder_goldens below), plus what
enable_compatibility_mode did to these RMSNorm models.

Each config exercises the knobs that break naive code: a GQA ratio above 1, rope_theta other than
10000 (and not an integer), llama3 and linear rope scaling, tied and untied embeddings, a sliding
window shorter than the prompts (and than a cached generation), q/k/v biases, Qwen3's q/k norms
with head_dim decoupled from hidden_size / num_attention_heads. Directory names say nothing of the
family (TransformerLens infers some architectures from the path).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections import OrderedDict
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
    # GPT-NeoX (Pythia). neox-a: parallel residual, a quarter of each head rotated, a rope base
    # TL 3.9.0 never reads; neox-b: sequential, tied embeddings, linear rope scaling (which TL
    # ignores for this family), half of each head rotated; neox-c: no attention biases (TL's
    # converter and bridge both need them), every dimension rotated, gelu_new.
    {
        "name": "neox-a",
        "class": "GPTNeoXForCausalLM",
        "seed": 3101,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "layer_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "use_parallel_residual": True,
            "attention_bias": True,
            "hidden_act": "gelu",
            "rope_parameters": {"rope_type": "default", "rope_theta": 500.0,
                                "partial_rotary_factor": 0.25},
        },
    },
    {
        "name": "neox-b",
        "class": "GPTNeoXForCausalLM",
        "seed": 3102,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 48,
            "intermediate_size": 80,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "layer_norm_eps": 1e-5,
            "tie_word_embeddings": True,
            "use_parallel_residual": False,
            "attention_bias": True,
            "hidden_act": "gelu",
            "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0,
                                "partial_rotary_factor": 0.5},
        },
    },
    {
        "name": "neox-c",
        "class": "GPTNeoXForCausalLM",
        "seed": 3103,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "intermediate_size": 112,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "layer_norm_eps": 1e-4,
            "tie_word_embeddings": False,
            "use_parallel_residual": True,
            "attention_bias": False,
            "hidden_act": "gelu_new",
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "partial_rotary_factor": 1.0},
        },
    },
    # GPT-J and Phi: one LayerNorm feeding attention and the MLP in parallel. gptj-a: adjacent
    # rotary pairs on half of each head, n_inner TL ignores; gptj-b: every dimension rotated,
    # tied embeddings (the head keeps its bias), an epsilon TL ignores. phi-a: 6 of 16 dims
    # rotated (TL reads the top-level partial_rotary_factor, 0.5, and rounds), rope base 500;
    # phi-b: grouped key/value heads (TL's converter cannot load them: HF goldens only), tied;
    # phi-c: qk_layernorm (TL ignores it, its bridge refuses it: HF goldens only).
    {
        "name": "gptj-a",
        "class": "GPTJForCausalLM",
        "seed": 3201,
        "hf": {
            "vocab_size": VOCAB,
            "n_embd": 64,
            "n_inner": 96,
            "n_layer": 2,
            "n_head": 4,
            "n_positions": 64,
            "rotary_dim": 8,
            "layer_norm_epsilon": 1e-5,
            "tie_word_embeddings": False,
            "activation_function": "gelu_new",
        },
    },
    {
        "name": "gptj-b",
        "class": "GPTJForCausalLM",
        "seed": 3202,
        "hf": {
            "vocab_size": VOCAB,
            "n_embd": 48,
            "n_inner": None,
            "n_layer": 2,
            "n_head": 4,
            "n_positions": 64,
            "rotary_dim": 12,
            "layer_norm_epsilon": 1e-4,
            "tie_word_embeddings": True,
            "activation_function": "gelu_new",
        },
    },
    {
        "name": "phi-a",
        "class": "PhiForCausalLM",
        "seed": 3301,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "layer_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "hidden_act": "gelu_new",
            "rope_parameters": {"rope_type": "default", "rope_theta": 500.0,
                                "partial_rotary_factor": 0.4},
        },
    },
    {
        "name": "phi-b",
        "class": "PhiForCausalLM",
        "seed": 3302,
        "tl_goldens": False,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 48,
            "intermediate_size": 80,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
            "layer_norm_eps": 1e-5,
            "tie_word_embeddings": True,
            "hidden_act": "gelu_new",
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "partial_rotary_factor": 0.5},
        },
    },
    {
        "name": "phi-c",
        "class": "PhiForCausalLM",
        "seed": 3303,
        "tl_goldens": False,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "layer_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "hidden_act": "gelu_new",
            "qk_layernorm": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "partial_rotary_factor": 0.5},
        },
    },
    # GPT-Neo: learned positions, unscaled scores, global and local layers. neo-a: a window of 4
    # keys (shorter than the prompts) on the second layer, tied; neo-b: local first with a window
    # of 3, an intermediate_size TL ignores, untied, eps 1e-4.
    {
        "name": "neo-a",
        "class": "GPTNeoForCausalLM",
        "seed": 3401,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "num_layers": 2,
            "num_heads": 4,
            "attention_types": [[["global", "local"], 1]],
            "window_size": 4,
            "intermediate_size": None,
            "max_position_embeddings": 64,
            "layer_norm_epsilon": 1e-5,
            "activation_function": "gelu_new",
            "tie_word_embeddings": True,
        },
    },
    {
        "name": "neo-b",
        "class": "GPTNeoForCausalLM",
        "seed": 3402,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 48,
            "num_layers": 2,
            "num_heads": 4,
            "attention_types": [[["local", "global"], 1]],
            "window_size": 3,
            "intermediate_size": 96,
            "max_position_embeddings": 64,
            "layer_norm_epsilon": 1e-4,
            "activation_function": "gelu_new",
            "tie_word_embeddings": False,
        },
    },
    # OPT: learned positions offset by 2, counted from the mask. opt-a: pre-LN, tied, ReLU;
    # opt-b: no biases (TL's converter needs them: zero ones on a copy), GELU, untied; opt-c:
    # post-LN with projected word embeddings (OPT-350m's layout: TL cannot hold it, HF goldens
    # only); opt-d: LayerNorms without weights (the same).
    {
        "name": "opt-a",
        "class": "OPTForCausalLM",
        "seed": 3501,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "ffn_dim": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "do_layer_norm_before": True,
            "word_embed_proj_dim": 64,
            "enable_bias": True,
            "activation_function": "relu",
            "tie_word_embeddings": True,
        },
    },
    {
        "name": "opt-b",
        "class": "OPTForCausalLM",
        "seed": 3502,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 48,
            "ffn_dim": 80,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "do_layer_norm_before": True,
            "enable_bias": False,
            "activation_function": "gelu",
            "tie_word_embeddings": False,
        },
    },
    {
        "name": "opt-c",
        "class": "OPTForCausalLM",
        "seed": 3503,
        "tl_goldens": False,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "ffn_dim": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "do_layer_norm_before": False,
            "word_embed_proj_dim": 32,
            "enable_bias": True,
            "activation_function": "relu",
            "tie_word_embeddings": True,
        },
    },
    {
        "name": "opt-d",
        "class": "OPTForCausalLM",
        "seed": 3504,
        "tl_goldens": False,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "ffn_dim": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "do_layer_norm_before": True,
            "layer_norm_elementwise_affine": False,
            "enable_bias": True,
            "activation_function": "relu",
            "tie_word_embeddings": False,
        },
    },
    # Gemma 1-3, Phi-3, OLMo-2 (issue 13). Prompts are 7-12 tokens: every sliding window here
    # (4) is shorter, and the soft caps are small enough to bind on these weights.
    # gemma-a: MQA, head_dim 24 on hidden 64, tied, tanh-GELU, attention biases.
    {
        "name": "gemma-a",
        "class": "GemmaForCausalLM",
        "seed": 3601,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 24,
            "hidden_act": "gelu_pytorch_tanh",
            "max_position_embeddings": 64,
            "rms_norm_eps": 1e-6,
            "attention_bias": True,
            "tie_word_embeddings": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000.0},
        },
    },
    # gemma2-a: sliding (layer 0) and global (1), query_pre_attn_scalar 24 != head_dim 16, both
    # soft caps binding, tied.
    {
        "name": "gemma2-a",
        "bf16_goldens": True,
        "class": "Gemma2ForCausalLM",
        "seed": 3602,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": 64,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
            "query_pre_attn_scalar": 24,
            "sliding_window": 4,
            "attn_logit_softcapping": 1.5,
            "final_logit_softcapping": 2.5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        },
    },
    # gemma3-a: three layers, pattern 2 (sliding, global, sliding), the two rotary bases, the
    # global one linearly scaled, q/k norms, a final soft cap, untied.
    {
        "name": "gemma3-a",
        "bf16_goldens": True,
        "class": "Gemma3ForCausalLM",
        "seed": 3603,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": 64,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,
            "query_pre_attn_scalar": 20,
            "sliding_window": 4,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
            "final_logit_softcapping": 2.5,
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
            },
        },
    },
    # gemma3-b: use_bidirectional_attention (HF goldens only: TL 3.9.0 has no bidirectional
    # attention): a sliding_window of 6 read as 4, keys on both sides; global layers see every key.
    {
        "name": "gemma3-b",
        "class": "Gemma3ForCausalLM",
        "seed": 3609,
        "tl_goldens": False,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "hidden_activation": "gelu_pytorch_tanh",
            "max_position_embeddings": 64,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
            "query_pre_attn_scalar": 16,
            "sliding_window": 6,
            "sliding_window_pattern": 2,
            "use_bidirectional_attention": True,
        },
    },
    # phi3-a: fused qkv and gate/up, GQA, half of each head rotated, a window on every layer.
    {
        "name": "phi3-a",
        "bf16_goldens": True,
        "class": "Phi3ForCausalLM",
        "seed": 3604,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
            "original_max_position_embeddings": 64,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "sliding_window": 4,
            "rope_parameters": {"rope_type": "default", "rope_theta": 500.0,
                                "partial_rotary_factor": 0.5},
        },
    },
    # gemma-b: d_model 48, whose sqrt(48) = 6.9282 is not a bfloat16 (6.9375 is): the bf16
    # goldens (hf_bf16.safetensors) see the embedding scale rounded to the embedding's dtype.
    {
        "name": "gemma-b",
        "class": "GemmaForCausalLM",
        "seed": 3607,
        "tl_goldens": False,
        "bf16_goldens": True,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 48,
            "intermediate_size": 80,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "hidden_act": "gelu_pytorch_tanh",
            "max_position_embeddings": 64,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        },
    },
    # phi3-b: longrope (HF goldens only: TL 3.9.0 ignores Phi-3's rope scaling) with a pretraining
    # context of 8: the 12-token prompts take the long factors, the 7-token one the short, and
    # its generation crosses over (HF then drops the cache and recomputes).
    {
        "name": "phi3-b",
        "class": "Phi3ForCausalLM",
        "seed": 3608,
        "tl_goldens": False,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 64,
            "original_max_position_embeddings": 8,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "rope_parameters": {
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.75,
                "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5],
                "long_factor": [1.0, 1.5, 2.5, 4.0, 6.0, 9.0],
            },
        },
    },
    # olmo2-a: post-sublayer norms only, q/k norms over the whole projection (multi-head: TL
    # 3.9.0's converter handles no other).
    {
        "name": "olmo2-a",
        "bf16_goldens": True,
        "class": "Olmo2ForCausalLM",
        "seed": 3605,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 64,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0},
        },
    },
    # olmo2-b: grouped KV heads, tied (HF only: TL 3.9.0's OLMo-2 converter is multi-head only).
    {
        "name": "olmo2-b",
        "class": "Olmo2ForCausalLM",
        "seed": 3606,
        "tl_goldens": False,
        "hf": {
            "vocab_size": VOCAB,
            "hidden_size": 64,
            "intermediate_size": 80,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 64,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": True,
            "attention_bias": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        },
    },
]

LLAMA_CLASSES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")
GEMMA_CLASSES = ("GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM")


def config_class(class_name: str):
    import transformers

    if class_name == "Gemma3ForCausalLM":
        return transformers.Gemma3TextConfig
    return getattr(transformers, class_name.replace("ForCausalLM", "Config"))


def model_class(class_name: str):
    import transformers

    return getattr(transformers, class_name)


def param_kind(name: str) -> str:
    if name.endswith(".bias"):
        return "bias"
    if name.endswith(("norm.weight", "ln_1.weight", "ln_2.weight", "ln_f.weight")):
        return "norm_weight"
    if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "query_key_value.weight",
                      "qkv_proj.weight")):
        return "qkv"
    return "matrix"


def randomize_(model, seed: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    kinds = {}
    # Gemma's RMSNorms multiply by 1 + w: their weights are offsets from 1, drawn around 0.
    norm_centre = 0.0 if type(model).__name__ in GEMMA_CLASSES else 1.0
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied lm_head is embed_tokens itself
            noise = torch.randn(tuple(p.shape), generator=g, dtype=torch.float32)
            kind = param_kind(name)
            scale = {"bias": 0.05, "norm_weight": 0.1, "qkv": 0.2, "matrix": 0.1}[kind]
            p.copy_((norm_centre if kind == "norm_weight" else 0.0) + scale * noise)
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
    tied = (model.get_output_embeddings().weight.data_ptr()
            == model.get_input_embeddings().weight.data_ptr())
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


def bf16_goldens(spec: dict, fx: Path, prompts) -> None:
    """hf_bf16.safetensors: the HF model loaded in bfloat16 (eager), per prompt its embeddings
    (the embedding module's output, Gemma's scale included) and logits."""
    import torch

    cls = model_class(spec["class"])
    model = cls.from_pretrained(str(fx / "model"), attn_implementation="eager",
                                dtype=torch.bfloat16).eval()
    tensors = OrderedDict()
    for pid, p in prompts.items():
        ids = torch.tensor(p["tokens"], dtype=torch.int64)
        kw = fixtures.hf_forward_kwargs(p)
        with torch.no_grad():
            tensors[f"{pid}/embeddings"] = model.get_input_embeddings()(ids).contiguous()
            tensors[f"{pid}/logits"] = model(input_ids=ids, **kw).logits.contiguous()
        tensors[f"{pid}/tokens"] = ids
        tensors[f"{pid}/attention_mask"] = torch.tensor(p["attention_mask"], dtype=torch.int64)
    fixtures.save_tensors(fx / "hf_bf16.safetensors", tensors)


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
        hf_logits = fixtures.hf_goldens(spec_for_prompts, model, prompts, fx)
        if spec.get("bf16_goldens", False):
            bf16_goldens(spec, fx, prompts)
        if spec.get("tl_goldens", True):
            _, ht_logits = ht_decoder_goldens(spec, model, fx / "model", prompts, fx, hf_logits)
            with tempfile.TemporaryDirectory(prefix="tlrs-tok-") as td:
                tokenizer = fixtures.load_dummy_tokenizer(spec_for_prompts, Path(td))
                bridge_decoder_goldens(spec, fx, prompts, tokenizer, hf_logits, ht_logits)
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


# =================================================================================================
# TransformerLens 3.9.0 HookedTransformer goldens
# =================================================================================================

# Corrections applied to TL 3.9.0's own build so that it computes what HF computes (each one is
# also written, with a sentence, to the "corrections" list of every hooked_*.json; without any one
# of them the logits differ from HF's by 3e-3 .. 1.3 relative):
#   dec-a (Llama):   q/k/v/o biases (attention_bias) and down_proj bias -> b_Q/_b_K/_b_V/b_O/b_out
#                    (TL's converter writes zeros); gate_proj/up_proj biases (mlp_bias) need a patched
#                    GatedMLP forward (patch_mlp_hf_biases: b_gate inside hook_pre, b_in inside
#                    hook_pre_linear). llama3 rope: TL derives it correctly (asserted).
#   dec-b (Llama):   d_head and rotary_dim = head_dim 16 (TL: hidden // heads = 12); linear rope via
#                    TL's cfg.rotary_scaling_factor = 2.0 (TL ignores rope_type 'linear' for Llama).
#   dec-c (Mistral): none (head_dim honoured, sliding window 4 = TL local attention, asserted).
#   dec-d (Qwen2):   rotary_base 20.5 (TL: int(20.5) = 20).
#   dec-e (Qwen3):   rotary_base 60.5 (TL: int(60.5) = 60); head_dim 24 and q/k norms: TL is right.
# (file stem, processed). Processed = TL's from_pretrained defaults (fold_ln,
# center_writing_weights, center_unembed, fold_value_biases = True); see weight_processing_record
# for what TL actually does to an RMS-norm model.
HT_DEC_VARIANTS = [("hooked_unprocessed", False), ("hooked_processed", True)]
# Acceptance: err = max|a-b| / max(1, max|b|) over real (non-padding) positions, TL vs HF.
HT_DEC_TOL = 1e-5


def hf_attention_windows(hf_cfg) -> list:
    """HF's effective sliding window per layer (None = full causal attention)."""
    if getattr(hf_cfg, "attention_layers", None) is not None:  # GPT-Neo
        return [hf_cfg.window_size if t == "local" else None for t in hf_cfg.attention_layers]
    sw = getattr(hf_cfg, "sliding_window", None)
    layer_types = getattr(hf_cfg, "layer_types", None)
    n = hf_cfg.num_hidden_layers
    if layer_types is None:  # Mistral: one window for every layer
        return [sw] * n
    return [sw if t == "sliding_attention" else None for t in layer_types]


# TransformerLens 3.9.0 builds Gemma and OLMo-2 configurations from tables keyed by official
# model name (loading_from_pretrained.py: google/gemma-2b, gemma-2-2b, gemma-3-1b, OLMo-2-0425-1B),
# never from a config.json. For the random checkpoints the table entry is written here by hand:
# the same keys as TL's entry for that family, the sizes and knobs from the checkpoint (each knob
# where the table's value differs from the checkpoint's is also listed as a correction).
HAND_BUILT_TL = ("GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Olmo2ForCausalLM")


def tl_table_entry(spec: dict, hf_cfg) -> tuple[dict, list]:
    """(TL cfg dict as its table would hold it for this checkpoint, corrections)."""
    cls = spec["class"]
    n_layers = hf_cfg.num_hidden_layers
    head_dim = getattr(hf_cfg, "head_dim", None) or hf_cfg.hidden_size // hf_cfg.num_attention_heads
    c = {
        "d_model": hf_cfg.hidden_size,
        "d_head": head_dim,
        "n_heads": hf_cfg.num_attention_heads,
        "d_mlp": hf_cfg.intermediate_size,
        "n_layers": n_layers,
        "n_ctx": hf_cfg.max_position_embeddings,
        "eps": hf_cfg.rms_norm_eps,
        "d_vocab": hf_cfg.vocab_size,
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "gated_mlp": True,
        "original_architecture": cls,
    }
    corrections = []
    if cls == "Olmo2ForCausalLM":
        c.update(act_fn="silu", rotary_base=hf_cfg.rope_parameters["rope_theta"],
                 attn_types=["global"] * n_layers)
        return c, corrections
    c.update(
        final_rms=True,
        rotary_dim=head_dim,
        n_key_value_heads=hf_cfg.num_key_value_heads,
        use_attn_scale=True,
    )
    if cls == "GemmaForCausalLM":
        c.update(act_fn="gelu", rotary_base=hf_cfg.rope_parameters["rope_theta"])
        if hf_cfg.hidden_act != "gelu":
            corrections.append(
                f"act_fn: TL's Gemma 1 tables use 'gelu' (exact); set to HF's hidden_act "
                f"'{hf_cfg.hidden_act}' (transformers 5.9.0's GemmaMLP reads hidden_act)."
            )
            c["act_fn"] = hf_cfg.hidden_act
        return c, corrections
    # Gemma 2 and 3: the table's sliding pattern, soft caps and post-norms.
    windows = hf_attention_windows(hf_cfg)
    c.update(
        act_fn=hf_cfg.hidden_activation,
        use_normalization_before_and_after=True,
        use_local_attn=True,
        window_size=hf_cfg.sliding_window,
        attn_types=["local" if w is not None else "global" for w in windows],
    )
    scale = float(hf_cfg.query_pre_attn_scalar) ** 0.5
    if scale != float(head_dim) ** 0.5:
        corrections.append(
            f"attn_scale: TL's Gemma 2/3 tables leave it at sqrt(d_head) = {float(head_dim) ** 0.5} "
            f"(but for gemma-2-27b); set to sqrt(query_pre_attn_scalar) = {scale}, as HF scales."
        )
        c["attn_scale"] = scale
    if cls == "Gemma2ForCausalLM":
        c.update(rotary_base=hf_cfg.rope_parameters["rope_theta"])
        if hf_cfg.attn_logit_softcapping is not None:
            c["attn_scores_soft_cap"] = hf_cfg.attn_logit_softcapping
        if hf_cfg.final_logit_softcapping is not None:
            c["output_logits_soft_cap"] = hf_cfg.final_logit_softcapping
        return c, corrections
    full = hf_cfg.rope_parameters["full_attention"]
    local = hf_cfg.rope_parameters["sliding_attention"]
    assert local.get("rope_type", "default") == "default", local
    c.update(
        use_qk_norm=True,
        rotary_base=full["rope_theta"],
        rotary_base_local=local["rope_theta"],
    )
    if full.get("rope_type", "default") == "linear":
        c["rotary_scaling_factor"] = full["factor"]
    if hf_cfg.final_logit_softcapping is not None:
        c["output_logits_soft_cap"] = hf_cfg.final_logit_softcapping
    return c, corrections


def tl_config_and_corrections(spec: dict, model_dir: Path):
    """TL 3.9.0's own config dict for the directory (convert_hf_model_config), then corrected so that
    the HookedTransformer computes what HF computes. Returns (cfg kwargs, TL's raw dict, corrections).

    convert_hf_model_config infers the architecture from the *path string* first ("llama" / "gemma"
    anywhere in it), so it is called with the relative path "model" from inside the fixture dir:
    the repository's location cannot change the result, and the inferred architecture is asserted.
    """
    import contextlib

    import torch
    import transformers
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    hf_cfg = transformers.AutoConfig.from_pretrained(str(model_dir))
    if spec["class"] in HAND_BUILT_TL:
        c, corrections = tl_table_entry(spec, hf_cfg)
        raw = dict(c)
        c.update(
            device="cpu",
            dtype=torch.float32,
            tokenizer_name=None,
            model_name=f"fixture-{spec['name']}",
            seed=spec["seed"],
            init_weights=True,
        )
        raw["tokenizer_name"] = model_dir.name
        raw["built_by_hand"] = "TL 3.9.0's table entry for the family, sized from config.json"
        return c, raw, corrections
    with contextlib.chdir(model_dir.parent):
        raw = convert_hf_model_config(model_dir.name)
    assert raw["original_architecture"] == spec["class"], (raw["original_architecture"], spec["class"])
    c = dict(raw)
    corrections = []
    gptj = spec["class"] == "GPTJForCausalLM"
    learned_positions = spec["class"] in ("GPTNeoForCausalLM", "OPTForCausalLM")
    # GPT-J has no rope parameters: its base is 10000 in the modelling code.
    if gptj or learned_positions:
        rope = {"rope_theta": 10000.0, "rope_type": "default"}
    else:
        rope = dict(hf_cfg.rope_parameters)
    n_heads = hf_cfg.num_attention_heads
    head_dim = getattr(hf_cfg, "head_dim", None) or hf_cfg.hidden_size // n_heads

    # d_head: TL uses hidden_size // num_attention_heads for Llama and Qwen2 (ignores head_dim).
    if c["d_head"] != head_dim:
        corrections.append(
            f"d_head: TL derived {c['d_head']} (= hidden_size // num_attention_heads = "
            f"{hf_cfg.hidden_size} // {n_heads}); set to HF head_dim {head_dim} (attn_scale = "
            f"sqrt(d_head) follows)."
        )
        c["d_head"] = head_dim
    # rotary_dim: the Llama family rotates the whole head (partial_rotary_factor 1); TL sets
    # rotary_dim = hidden_size // num_attention_heads for Llama/Qwen2 (Mistral: None -> d_head in
    # __post_init__). GPT-NeoX rotates int(head_dim * partial_rotary_factor), rounded up to pairs
    # (HF's inv_freq has ceil(r / 2) entries); TL uses round(rotary_pct * d_head).
    neox = spec["class"] == "GPTNeoXForCausalLM"
    if neox:
        truncated = int(head_dim * rope["partial_rotary_factor"])
        rotary_dim = 2 * ((truncated + 1) // 2)
    elif gptj:
        rotary_dim = hf_cfg.rotary_dim
    elif spec["class"] in ("PhiForCausalLM", "Phi3ForCausalLM"):
        rotary_dim = int(head_dim * rope.get("partial_rotary_factor", 1.0))
    else:
        rotary_dim = head_dim
    if learned_positions:
        assert c.get("positional_embedding_type", "standard") == "standard"
    elif c.get("rotary_dim") is not None and c["rotary_dim"] != rotary_dim:
        corrections.append(
            f"rotary_dim: TL derived {c['rotary_dim']}; set to HF's {rotary_dim} (the dimensions "
            "of each head HF rotates)."
        )
        c["rotary_dim"] = rotary_dim
    # rotary_base: TL truncates rope_theta with int() for Qwen2 / Qwen3 (get_pretrained_model_config
    # restores it for Qwen2 only, and only when given hf_cfg; convert_hf_model_config does not).
    theta = rope["rope_theta"]
    tl_base = 10000 if learned_positions else c.get("rotary_base", 10000)
    if float(tl_base) != float(theta) or (not neox and isinstance(tl_base, int) != isinstance(theta, int)):
        why = ("TL 3.9.0's GPT-NeoX configuration never reads rope_theta / rotary_emb_base, so "
               "the dataclass default applies" if neox else "int() of rope_theta")
        corrections.append(
            f"rotary_base: TL used {tl_base!r} ({why}); set to HF rope_theta {theta!r}."
        )
        c["rotary_base"] = theta
    rope_type = rope.get("rope_type", "default")
    if rope_type == "linear":
        # TL has linear scaling as cfg.rotary_scaling_factor (freq * factor for non-local layers,
        # abstract_attention.calculate_sin_cos_rotary), but convert_hf_model_config never sets it
        # for Llama: the rope would be unscaled.
        if c.get("rotary_scaling_factor", 1.0) != rope["factor"]:
            corrections.append(
                f"rotary_scaling_factor: TL ignores rope_parameters rope_type 'linear' (factor "
                f"{rope['factor']}) for {spec['class']} and left it at 1.0; set to {rope['factor']} "
                "(TL's own linear-scaling field: angles = pos / (freq * factor), i.e. HF's "
                "inv_freq / factor)."
            )
            c["rotary_scaling_factor"] = rope["factor"]
    elif rope_type == "llama3":
        want = {
            "use_NTK_by_parts_rope": True,
            "NTK_by_parts_factor": rope["factor"],
            "NTK_by_parts_low_freq_factor": rope["low_freq_factor"],
            "NTK_by_parts_high_freq_factor": rope["high_freq_factor"],
            "NTK_original_ctx_len": rope["original_max_position_embeddings"],
        }
        got = {k: c.get(k) for k in want}
        assert got == want, ("TL's llama3 rope fields differ from HF", got, want)
    elif rope_type != "default":
        raise NotImplementedError(f"rope_type {rope_type}")
    # Sliding window: TL's local attention masks j <= i - window_size (AbstractAttention.
    # _make_causal_mask: key > query - window), HF's sliding_window_overlay kv_idx > q_idx - W: the
    # same set. Only asserted (no correction needed for Mistral; Qwen2/Qwen3 here use full attention).
    windows = hf_attention_windows(hf_cfg)
    tl_windows = [
        c.get("window_size") if (c.get("attn_types") or ["global"] * len(windows))[i] == "local" else None
        for i in range(len(windows))
    ]
    assert tl_windows == windows, (tl_windows, windows)
    if spec["class"] == "Qwen3ForCausalLM":
        assert c.get("use_qk_norm") is True
    # GQA: TL's Llama/Qwen3 branches set n_key_value_heads None when equal to n_heads (plain
    # Attention); every Llama-family config here has a ratio > 1.
    if spec["class"] in LLAMA_CLASSES + ("Phi3ForCausalLM",):
        assert c.get("n_key_value_heads") == hf_cfg.num_key_value_heads != n_heads
    else:
        assert c.get("n_key_value_heads") is None
    if neox:
        assert c.get("parallel_attn_mlp") == hf_cfg.use_parallel_residual
        assert c["rotary_adjacent_pairs"] is False
    if gptj or spec["class"] == "PhiForCausalLM":
        assert c.get("parallel_attn_mlp") is True
        assert bool(c.get("rotary_adjacent_pairs")) is gptj
    if spec["class"] == "GPTNeoForCausalLM":
        assert c["use_attn_scale"] is False and c["use_local_attn"] is True
        # TL 3.9.0's GPT-Neo configuration: d_mlp = 4 * hidden_size whatever the file says.
        if hf_cfg.intermediate_size is not None and c["d_mlp"] != hf_cfg.intermediate_size:
            corrections.append(
                f"d_mlp: TL used {c['d_mlp']} (4 * hidden_size; its GPT-Neo configuration ignores "
                f"intermediate_size); set to HF's intermediate_size {hf_cfg.intermediate_size}."
            )
            c["d_mlp"] = hf_cfg.intermediate_size
    if gptj:
        # TL 3.9.0's GPT-J configuration: d_mlp = 4 * n_embd and eps = 1e-5 whatever the file says.
        if c["d_mlp"] != hf_cfg.n_inner and hf_cfg.n_inner is not None:
            corrections.append(
                f"d_mlp: TL used {c['d_mlp']} (4 * n_embd; its GPT-J configuration ignores "
                f"n_inner); set to HF's n_inner {hf_cfg.n_inner}."
            )
            c["d_mlp"] = hf_cfg.n_inner
        if c["eps"] != hf_cfg.layer_norm_epsilon:
            corrections.append(
                f"eps: TL used {c['eps']} (fixed in its GPT-J configuration); set to HF's "
                f"layer_norm_epsilon {hf_cfg.layer_norm_epsilon}."
            )
            c["eps"] = hf_cfg.layer_norm_epsilon

    c.update(
        device="cpu",
        dtype=torch.float32,
        tokenizer_name=None,  # token ids only (TL would try AutoTokenizer on the model dir)
        model_name=f"fixture-{spec['name']}",
        seed=spec["seed"],
        init_weights=True,  # every parameter is then overwritten by load_and_process_state_dict
    )
    raw = dict(raw)
    raw["tokenizer_name"] = model_dir.name  # the relative path it was called with
    return c, raw, corrections


def _gated_mlp_hf_biases_forward(self, x):
    """GatedMLP.forward with HF's biased Linear layers (Llama mlp_bias=True):
    hook_pre = x @ W_gate + b_gate, hook_pre_linear = x @ W_in + b_in,
    hook_post = act(hook_pre) * hook_pre_linear, out = hook_post @ W_out + b_out.
    (Stock TL 3.9.0 has no b_gate and adds b_in AFTER the product: act(pre) * pre_linear + b_in.)"""
    import torch.nn.functional as F

    pre_act = self.hook_pre(F.linear(x, self.W_gate.T.contiguous(), self.b_gate))
    pre_linear = self.hook_pre_linear(F.linear(x, self.W_in.T.contiguous(), self.b_in))
    post_act = self.hook_post(self.act_fn(pre_act) * pre_linear)
    return F.linear(post_act, self.W_out.T.contiguous(), self.b_out)


def patch_mlp_hf_biases(model) -> None:
    import types

    import torch
    import torch.nn as nn

    for block in model.blocks:
        mlp = block.mlp
        assert type(mlp).__name__ == "GatedMLP", type(mlp)
        mlp.register_parameter("b_gate", nn.Parameter(torch.zeros(mlp.d_mlp, dtype=model.cfg.dtype)))
        mlp.forward = types.MethodType(_gated_mlp_hf_biases_forward, mlp)


def tl_state_dict_corrections(hf_model, cfg, sd: dict) -> list:
    """Put every HF bias into TL's state dict where get_pretrained_state_dict left zeros (TL 3.9.0's
    Llama / Mistral / Qwen3 converters write zero b_Q/b_K/b_V/b_O/b_in/b_out and ignore HF's
    attention_bias / mlp_bias). Gate/up biases need the patched MLP (patch_mlp_hf_biases)."""
    import torch

    gqa = "_" if cfg.n_key_value_heads is not None else ""
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    fixed: "OrderedDict[str, list]" = OrderedDict()
    for li, layer in enumerate(hf_model.model.layers):
        at, mlp = layer.self_attn, layer.mlp
        targets = [
            (at.q_proj, "attn.b_Q", (cfg.n_heads, cfg.d_head)),
            (at.k_proj, f"attn.{gqa}b_K", (n_kv, cfg.d_head)),
            (at.v_proj, f"attn.{gqa}b_V", (n_kv, cfg.d_head)),
            (at.o_proj, "attn.b_O", (cfg.d_model,)),
            (mlp.gate_proj, "mlp.b_gate", (cfg.d_mlp,)),
            (mlp.up_proj, "mlp.b_in", (cfg.d_mlp,)),
            (mlp.down_proj, "mlp.b_out", (cfg.d_model,)),
        ]
        for lin, tl_name, shape in targets:
            if lin.bias is None:
                continue
            key = f"blocks.{li}.{tl_name}"
            want = lin.bias.detach().clone().to(torch.float32).reshape(shape)
            if key in sd and torch.equal(sd[key], want):
                continue
            assert key not in sd or not sd[key].any(), f"{key}: TL wrote a nonzero, different bias"
            sd[key] = want
            fixed.setdefault(tl_name, []).append(li)
    out = []
    for tl_name, layers in fixed.items():
        hf = {"attn.b_Q": "q_proj", "attn.b_K": "k_proj", "attn._b_K": "k_proj", "attn.b_V": "v_proj",
              "attn._b_V": "v_proj", "attn.b_O": "o_proj", "mlp.b_gate": "gate_proj",
              "mlp.b_in": "up_proj", "mlp.b_out": "down_proj"}[tl_name]
        how = {
            "mlp.b_gate": "TL's GatedMLP has no gate bias: a b_gate parameter is registered and the "
            "MLP forward patched to add it inside hook_pre",
            "mlp.b_in": "the patched MLP forward adds b_in inside hook_pre_linear (x @ W_in + b_in), "
            "not after the product as stock TL does",
        }.get(tl_name, "loaded into TL's existing parameter")
        out.append(
            f"{tl_name} (layers {layers}): TL's converter wrote zeros and dropped HF's "
            f"{hf}.bias; set to HF's bias ({how})."
        )
    return out


def hf_model_with_zero_attention_biases(spec: dict, hf_model):
    """TL 3.9.0's GPT-NeoX converter reads query_key_value.bias and dense.bias unconditionally
    (pretrained/weight_conversions/neox.py), so a checkpoint with attention_bias=False crashes it.
    Returns (a copy of the HF model with zero biases there, the corrections list); the model
    itself where nothing needs adding."""
    import copy

    import torch
    import torch.nn as nn

    if spec["class"] == "OPTForCausalLM" and not hf_model.config.enable_bias:
        source = copy.deepcopy(hf_model)
        for layer in source.model.decoder.layers:
            at = layer.self_attn
            for lin in (at.q_proj, at.k_proj, at.v_proj, at.out_proj, layer.fc1, layer.fc2):
                lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype))
        return source, [
            "enable_bias=False: TL's OPT converter reads every projection's bias unconditionally "
            "(it crashes without them); converted from a copy of the HF model with zero biases "
            "there (the same function)."
        ]
    if spec["class"] != "GPTNeoXForCausalLM" or hf_model.config.attention_bias:
        return hf_model, []
    source = copy.deepcopy(hf_model)
    for layer in source.gpt_neox.layers:
        for lin in (layer.attention.query_key_value, layer.attention.dense):
            lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype))
    return source, [
        "attention_bias=False: TL's GPT-NeoX converter reads attention.query_key_value.bias and "
        "attention.dense.bias unconditionally (it crashes without them); converted from a copy of "
        "the HF model with zero biases there (the same function)."
    ]


def build_ht_decoder(spec: dict, hf_model, model_dir: Path, processed: bool):
    """Returns (model, TL's raw cfg dict, corrections)."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import get_pretrained_state_dict

    c, raw, corrections = tl_config_and_corrections(spec, model_dir)
    cfg = HookedTransformerConfig(**c)
    source, bias_corrections = hf_model_with_zero_attention_biases(spec, hf_model)
    corrections += bias_corrections
    sd = get_pretrained_state_dict(str(model_dir), cfg, hf_model=source)
    sd = {k: v.detach().clone().to(torch.float32) for k, v in sd.items()}
    model = HookedTransformer(cfg)
    if spec["class"] in LLAMA_CLASSES + GEMMA_CLASSES:
        mlp_bias = any(
            getattr(layer.mlp, p).bias is not None
            for layer in hf_model.model.layers
            for p in ("gate_proj", "up_proj")
        )
        if mlp_bias:
            patch_mlp_hf_biases(model)
        corrections += tl_state_dict_corrections(hf_model, cfg, sd)
    # HookedTransformer.from_pretrained's own refusals (HookedTransformer.py 1420-1460), which
    # load_and_process_state_dict does not apply: no fold_ln or centring for post-norm
    # architectures, no center_unembed under a logit soft cap.
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    post_norm = cfg.original_architecture in POST_NORM_ARCHITECTURES
    soft_capped = (cfg.output_logits_soft_cap or -1.0) > 0
    if processed and post_norm:
        corrections.append("processing: fold_ln and center_writing_weights off (TL's "
                           "from_pretrained refuses them for post-norm architectures)")
    if processed and soft_capped:
        corrections.append("processing: center_unembed off (TL's from_pretrained refuses it "
                           "under a logit soft cap)")
    model.load_and_process_state_dict(
        sd,
        fold_ln=processed and not post_norm,
        center_writing_weights=processed and not post_norm,
        center_unembed=processed and not soft_capped,
        fold_value_biases=processed,
        refactor_factored_attn_matrices=False,
    )
    model.eval()
    return model, raw, corrections


def ht_dec_cfg_summary(cfg) -> dict:
    keys = [
        "d_model", "d_head", "n_heads", "n_key_value_heads", "d_mlp", "n_layers", "n_ctx", "d_vocab",
        "d_vocab_out", "act_fn", "eps", "normalization_type", "final_rms", "gated_mlp",
        "use_attn_scale", "attn_scale", "positional_embedding_type", "rotary_dim", "rotary_base",
        "rotary_scaling_factor", "rotary_adjacent_pairs", "use_NTK_by_parts_rope",
        "NTK_by_parts_factor", "NTK_by_parts_low_freq_factor", "NTK_by_parts_high_freq_factor",
        "NTK_original_ctx_len", "use_local_attn", "window_size", "attn_types", "use_qk_norm",
        "ungroup_grouped_query_attention", "original_architecture", "default_prepend_bos",
        "use_attn_result", "use_split_qkv_input", "use_hook_mlp_in", "use_attn_in", "use_hook_tokens",
        "parallel_attn_mlp",
    ]
    out = {}
    for k in keys:
        v = getattr(cfg, k, None)
        if isinstance(v, list):
            out[k] = list(v)
        else:
            out[k] = v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
    return out


def rotary_vs_hf(model, hf_model, n_pos: int) -> dict:
    """TL's rotary_cos/sin buffers (layer 0) vs HF's rotary_emb(position_ids = arange(n_pos))."""
    import torch

    if not hasattr(hf_model.base_model, "rotary_emb"):
        return {"note": "no rotary module (GPT-J's sines and cosines live in each attention)"}
    x = torch.zeros(1, n_pos, 1, dtype=torch.float32)
    pos = torch.arange(n_pos, dtype=torch.int64)[None]
    # Gemma 3's module computes one table per layer type: layer 0's.
    kw = {}
    if type(hf_model).__name__ == "Gemma3ForCausalLM":
        kw["layer_type"] = hf_model.config.layer_types[0]
    with torch.no_grad():
        cos, sin = hf_model.base_model.rotary_emb(x, pos, **kw)
    attn = model.blocks[0].attn
    tl_cos, tl_sin = attn.rotary_cos[:n_pos], attn.rotary_sin[:n_pos]
    assert tl_cos.shape == cos[0].shape, (tl_cos.shape, cos.shape)
    return {
        "n_positions": n_pos,
        "tl_buffer_rows": int(attn.rotary_cos.shape[0]),
        "max_abs_diff_cos": float((tl_cos - cos[0]).abs().max()),
        "max_abs_diff_sin": float((tl_sin - sin[0]).abs().max()),
    }


def weight_processing_record(unproc, proc) -> dict:
    """What load_and_process_state_dict actually changed, found by comparing parameters."""
    import torch

    pu = dict(unproc.named_parameters())
    pp = dict(proc.named_parameters())
    changed = sorted(k for k in pp if k in pu and not torch.equal(pu[k], pp[k]))
    removed = sorted(k for k in pu if k not in pp)
    added = sorted(k for k in pp if k not in pu)
    u_E, p_E = pu["embed.W_E"], pp["embed.W_E"]
    W_U = pp["unembed.W_U"]
    if proc.cfg.normalization_type == "LNPre":
        return {
            "call": "load_and_process_state_dict(sd, fold_ln=True, center_writing_weights=True, "
            "center_unembed=True, fold_value_biases=True, refactor_factored_attn_matrices=False)",
            "steps": {
                "fold_ln": "LayerNorm weights and biases folded into W_Q/W_K/W_V (b_Q/b_K/b_V) and "
                "W_in (b_in) and W_U (b_U), those weights centred over d_model; ln1/ln2/ln_final "
                "become LayerNormPre",
                "center_writing_weights": "W_E, W_O, b_O, W_out, b_out centred over d_model",
                "center_unembed": "W_U -= W_U.mean(vocab axis); b_U -= b_U.mean()",
                "fold_value_biases": "b_O += sum_h b_V[h] @ W_O[h]; b_V set to 0",
            },
            "normalization_type_after": proc.cfg.normalization_type,
            "changed_params": changed,
            "removed_params": removed,
            "added_params": added,
        }
    steps = {
        "fold_ln": {
            "performed": proc.cfg.normalization_type == "RMSPre" and bool(removed),
            "what": "RMS weights ln1.w / ln2.w / ln_final.w multiplied into W_Q, _W_K, _W_V / "
            "W_in, W_gate / W_U (rows = d_model); ln1/ln2/ln_final become RMSNormPre (no weight, "
            "same hook_scale/hook_normalized); normalization_type RMS -> RMSPre. No bias folding "
            "and no weight centering (fold_biases=center_weights=False for RMS). q_norm/k_norm "
            "weights (Qwen3) are NOT folded.",
        },
        "center_writing_weights": {
            "performed": not torch.equal(u_E, p_E),
            "what": "skipped by TL for RMS models (ProcessWeights.process_weights only centers when "
            "normalization_type is LN/LNPre and not final_rms): no mean subtraction on W_E, W_O, "
            "W_out, b_out or b_O (b_O still changes through fold_value_biases where b_V != 0).",
        },
        "center_unembed": {
            "performed": bool(W_U.mean(-1).abs().max() < 1e-6) and "unembed.W_U" in changed,
            "what": "W_U -= W_U.mean(vocab axis); b_U -= b_U.mean() (b_U is zero here).",
        },
        "fold_value_biases": {
            "performed": True,
            "what": "b_O += sum_h repeat_interleave(_b_V, n_heads / n_kv_heads)[h] @ W_O[h]; _b_V "
            "set to 0 (always run; a no-op where b_V is zero).",
            "b_V_was_nonzero": any(
                k.endswith(("attn._b_V", "attn.b_V")) and pu[k].any().item() for k in pu
            ),
        },
    }
    return {
        "call": "load_and_process_state_dict(sd, fold_ln=True, center_writing_weights=True, "
        "center_unembed=True, fold_value_biases=True, refactor_factored_attn_matrices=False)",
        "steps": steps,
        "normalization_type_after": proc.cfg.normalization_type,
        "changed_params": changed,
        "removed_params": removed,
        "added_params": added,
    }


def ht_decoder_goldens(spec: dict, hf_model, model_dir: Path, prompts, fx: Path, hf_logits):
    """Writes hooked_{unprocessed,processed}.{json,safetensors}; returns (the acceptance errors,
    {prompt id: hooked_processed logits of forward(tokens[, attention_mask])})."""
    import torch

    models = {}
    acceptance = OrderedDict()
    processed_logits = OrderedDict()  # {pid: hooked_processed logits}, for bridge_decoder_goldens
    for stem, processed in HT_DEC_VARIANTS:
        model, raw, corrections = build_ht_decoder(spec, hf_model, model_dir, processed)
        tensors = OrderedDict()
        meta = OrderedDict()
        hook_names = list(model.hook_dict.keys())
        fired_union = OrderedDict()
        firing_sequence = None
        worst = 0.0
        for pid, p in prompts.items():
            tokens = torch.tensor(p["tokens"], dtype=torch.int64)
            mask = torch.tensor(p["attention_mask"], dtype=torch.int64) if p["padded"] else None
            logits, cache, grads, fc, bc, seq = fixtures.ht_capture(model, tokens, mask, processed)
            if firing_sequence is None:
                firing_sequence = seq
            kw = {"attention_mask": mask} if mask is not None else {}
            with torch.no_grad():
                loss = model(tokens, return_type="loss", **kw)
                loss_tok = model(tokens, return_type="loss", loss_per_token=True, **kw)
                logits2 = model(tokens, return_type="logits", **kw)
            assert torch.equal(logits2, logits), "HT forward not reproducible"
            if processed:
                processed_logits[pid] = logits2
            # The logits are unembed.hook_out, soft-capped after the hook where the model caps.
            cap = model.cfg.output_logits_soft_cap or -1.0
            unembedded = cache["unembed.hook_out"]
            assert torch.equal(torch.tanh(unembedded / cap) * cap if cap > 0 else unembedded, logits)
            # acceptance vs HF on real positions (processed: log-probs, center_unembed shifts logits)
            real = torch.tensor(p["attention_mask"], dtype=torch.bool)
            ref = hf_logits[pid]
            if processed:
                a, b = logits.log_softmax(-1)[real], ref.log_softmax(-1)[real]
            else:
                a, b = logits[real], ref[real]
            err = float((a - b).abs().max() / max(1.0, float(b.abs().max())))
            worst = max(worst, err)
            assert err <= HT_DEC_TOL, f"{spec['name']} {stem} {pid}: TL vs HF err {err:.3e}"
            tensors[f"{pid}/tokens"] = tokens
            tensors[f"{pid}/attention_mask"] = torch.tensor(p["attention_mask"], dtype=torch.int64)
            tensors[f"{pid}/loss"] = loss
            tensors[f"{pid}/loss_per_token"] = loss_tok
            for name, act in cache.items():
                tensors[f"{pid}/{name}"] = act
            for name in hook_names:
                if name in grads:
                    tensors[f"{pid}/{name}_grad"] = grads[name]
            for n in hook_names:
                if fc[n] > 0:
                    fired_union[n] = True
            assert list(cache.keys()) == sorted(cache.keys(), key=lambda k: seq.index(k))
            meta[pid] = OrderedDict(
                tokens=p["tokens"],
                attention_mask=p["attention_mask"],
                attention_mask_passed=mask is not None,
                loss=float(loss),
                fwd_fire_counts={n: fc[n] for n in hook_names if fc[n] > 0},
                bwd_fire_counts={n: bc[n] for n in hook_names if bc[n] > 0},
                cache_keys_in_order=list(cache.keys()),
                shapes={n: fixtures.shape_of(t) for n, t in cache.items()},
                grad_keys=[f"{n}_grad" for n in hook_names if n in grads],
                n_cached=len(cache),
                n_grads=len(grads),
                activation_has_neg_inf=sorted(n for n, t in cache.items() if torch.isneginf(t).any().item()),
                activation_has_nan=sorted(n for n, t in cache.items() if torch.isnan(t).any().item()),
                grad_has_nan=sorted(n for n, t in grads.items() if torch.isnan(t).any().item()),
                err_vs_hf_real_positions=err,
            )
        if processed:
            for k, v in model.named_parameters():  # parameters only (no IGNORE/mask/rotary buffers)
                tensors[f"weights/{k}"] = v
        tensors, meta, kept = fixtures.keep_golden_prompts(stem, tensors, meta, list(prompts.keys()))
        fixtures.save_tensors(fx / f"{stem}.safetensors", tensors)
        n_pos = max(len(p["tokens"][0]) for p in prompts.values())
        doc = {
            "description": "TransformerLens 3.9.0 HookedTransformer built as TL builds one from a "
            "local directory: convert_hf_model_config('model', called from the fixture dir) -> "
            "HookedTransformerConfig(**that, device cpu, dtype float32, tokenizer_name None, seed) "
            "-> get_pretrained_state_dict(model dir, cfg, hf_model=<the HF model of hf.json>) -> "
            "HookedTransformer(cfg) + load_and_process_state_dict(fold_ln, center_writing_weights, "
            f"center_unembed, fold_value_biases = {processed}), with the `corrections` below "
            "(where TL 3.9.0 would not compute what HF computes). No tokenizer. Activations: "
            "run_with_cache(tokens, return_type='logits') (cache keeps the LAST firing of a hook); "
            "logits = <pid>/unembed.hook_out. Gradients <name>_grad: backward of "
            + ("logits[:, -1, :].log_softmax(-1).sum() " if processed else "logits[:, -1, :].sum() ")
            + "with a bwd hook on every HookPoint, SUMMED over firings (fixtures.ht_capture). loss: "
            "forward(return_type='loss'); loss_per_token: loss_per_token=True. Padded batch: "
            "forward(tokens, attention_mask=mask): rotary positions = cumsum(mask)-1 with pads at 0, "
            "masked scores = -inf, fully masked (pad-query) rows -> NaN softmax replaced by 0. "
            "err_vs_hf_real_positions: max|TL-HF|/max(1,max|HF|) over real positions of "
            + ("log_softmax(logits) " if processed else "the logits ")
            + f"vs hf.safetensors (asserted <= {HT_DEC_TOL}). No generation goldens. "
            + ("weights/<TL param name>: the state dict after processing (TL layout). " if processed else ""),
            "variant": stem,
            "processed": processed,
            "corrections": corrections,
            "mlp_bias_patch": any(hasattr(b.mlp, "b_gate") for b in model.blocks),
            "tl_convert_hf_model_config": raw,
            "cfg": ht_dec_cfg_summary(model.cfg),
            "rotary_vs_hf": rotary_vs_hf(model, hf_model, n_pos),
            "acceptance": {"tolerance": HT_DEC_TOL, "worst_err_vs_hf": worst,
                           "compared": "log_softmax(logits)" if processed else "logits"},
            "hook_dict_names": hook_names,
            "n_hook_dict": len(hook_names),
            "fired_names": [n for n in hook_names if n in fired_union],
            "n_fired": len(fired_union),
            "never_fired": [n for n in hook_names if n not in fired_union],
            "firing_sequence_prompt0": firing_sequence,
            "prompts": meta,
            "prompt_order": kept,
            "tensor_keys": list(tensors.keys()),
            "versions": fixtures.versions(),
        }
        if processed:
            doc["weight_processing"] = weight_processing_record(models["hooked_unprocessed"], model)
        fixtures.write_json(fx / f"{stem}.json", doc)
        models[stem] = model
        acceptance[stem] = worst
    fixtures.log(
        f"decoders: {spec['name']} HookedTransformer goldens, worst err vs HF "
        + ", ".join(f"{k} {v:.2e}" for k, v in acceptance.items())
    )
    return acceptance, processed_logits


# =================================================================================================
# TransformerLens 3.9.0 TransformerBridge hook listings
# =================================================================================================

# Sanity bounds, asserted over real (unpadded) positions: the unprocessed bridge's logits vs HF's
# (max |diff| / max(1, max |HF|)), and the compatibility-mode bridge's log-probs vs
# hooked_processed's.
BRIDGE_DEC_TOL = 1e-5
# Records at or above this level are what enable_compatibility_mode "warned" (lower levels could
# carry timings and break byte-identical reruns).
BRIDGE_DEC_LOG_LEVEL = logging.WARNING


def boot_bridge_decoder(fx: Path, tokenizer):
    """TransformerBridge.boot_transformers on <fx>/model, called as "model" from inside fx: the
    bridge keeps the path string as cfg.model_name and TL matches architecture names in path
    strings in places, so the repository's location cannot change the result."""
    import contextlib

    import torch
    from transformer_lens.model_bridge import TransformerBridge

    with contextlib.chdir(fx):
        bridge = TransformerBridge.boot_transformers(
            "model", device="cpu", dtype=torch.float32, tokenizer=tokenizer
        )
    bridge.eval()
    return bridge


def enable_compatibility_mode_recorded(bridge) -> dict:
    """bridge.enable_compatibility_mode(disable_warnings=True), recording instead of failing:
    whether it raised (and the message), every Python warning, every log record at WARNING or
    above, anything printed, and what it did to the bridge's parameters (bridge.state_dict(), TL
    component names)."""
    import contextlib
    import io
    import warnings

    import torch

    def params():
        return OrderedDict((k, v.detach().clone()) for k, v in bridge.state_dict().items())

    class ListHandler(logging.Handler):
        def __init__(self):
            super().__init__(level=BRIDGE_DEC_LOG_LEVEL)
            self.records = []

        def emit(self, record):
            self.records.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    before = params()
    norm_before = getattr(bridge.cfg, "normalization_type", None)
    handler = ListHandler()
    loggers = [logging.getLogger(n) for n in ("", "transformer_lens", "transformers")]
    saved_levels = [lg.level for lg in loggers]
    out, err = io.StringIO(), io.StringIO()
    raised = None
    for lg in loggers:
        lg.setLevel(BRIDGE_DEC_LOG_LEVEL)
    logging.getLogger().addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            warnings.simplefilter("always")
            try:
                bridge.enable_compatibility_mode(disable_warnings=True)
            except Exception as e:  # recorded, not fatal: the listing below still runs
                raised = f"{type(e).__name__}: {e}"
    finally:
        logging.getLogger().removeHandler(handler)
        for lg, lvl in zip(loggers, saved_levels):
            lg.setLevel(lvl)
    after = params()
    changed = [k for k in after if k in before and not torch.equal(before[k], after[k])]
    norm_names = [k for k in after if k.endswith(".weight") and ("ln" in k.split(".")[-2] or "norm" in k)]
    return OrderedDict(
        call="enable_compatibility_mode(disable_warnings=True)",
        succeeded=raised is None,
        raised=raised,
        warnings=[f"{w.category.__name__}: {w.message}" for w in caught],
        log_records_warning_and_above=handler.records,
        stdout=out.getvalue(),
        stderr=err.getvalue(),
        normalization_type_before=norm_before,
        normalization_type_after=getattr(bridge.cfg, "normalization_type", None),
        params_changed=changed,
        params_unchanged=[k for k in after if k in before and k not in changed],
        params_added=[k for k in after if k not in before],
        params_removed=[k for k in before if k not in after],
        norm_weights_all_ones_after=[k for k in norm_names if bool((after[k] == 1).all())],
        norm_weights_not_all_ones_after=[k for k in norm_names if not bool((after[k] == 1).all())],
    )


def bridge_decoder_goldens(spec: dict, fx: Path, prompts, tokenizer, hf_logits, ht_logits) -> dict:
    """Writes <fx>/bridge_hooks.json in the GPT-2 format (fixtures.bridge_goldens /
    fixtures.bridge_listing), plus `adapter` and `compatibility_mode_outcome`."""
    try:
        bridge = boot_bridge_decoder(fx, tokenizer)
    except Exception as e:  # TL 3.9.0's GPT-NeoX adapter asserts attention biases exist
        doc = OrderedDict(
            boot_failed=f"{type(e).__name__}: {e}",
            description="TransformerLens 3.9.0's TransformerBridge.boot_transformers raised on "
            "this checkpoint, so there is no hook listing for it; the listings of the other "
            "configs of the family stand for its names.",
            versions=fixtures.versions(),
        )
        fixtures.write_json(fx / "bridge_hooks.json", doc)
        fixtures.log(f"decoders: {spec['name']} bridge boot raised {doc['boot_failed']}")
        return doc
    adapter = type(bridge.adapter).__name__
    doc = OrderedDict()
    doc["boot"] = (
        "TransformerBridge.boot_transformers('model', device='cpu', dtype=torch.float32, "
        "tokenizer=<word-level tokenizer over the 384-token vocab, saved to and loaded from a temp "
        "dir (fixtures.load_dummy_tokenizer)>), called from inside the fixture dir (a relative path: "
        "TL matches architecture names in path strings) with HF_HUB_OFFLINE=1; config and weights "
        f"load from the local directory. Adapter: {adapter} (from config.json's architectures)."
    )
    doc["adapter"] = adapter
    doc["unprocessed"] = fixtures.bridge_listing(bridge, prompts, hf_logits, None)
    canonical_set = set(doc["unprocessed"]["canonical_names"])
    outcome = enable_compatibility_mode_recorded(bridge)
    doc["compatibility_mode_outcome"] = outcome
    doc["compatibility_mode"] = fixtures.bridge_listing(bridge, prompts, None, ht_logits, canonical_set)
    doc["compatibility_mode_call"] = (
        "enable_compatibility_mode(disable_warnings=True) (defaults: fold_ln, "
        "center_writing_weights, center_unembed, fold_value_biases = True)"
    )
    doc["description"] = (
        "TransformerLens 3.9.0 TransformerBridge hook names, as for the GPT-2 configs "
        "(fixtures.bridge_listing): hook_dict_names (canonical + alias names, in hook_dict order); "
        "canonical_names = keys whose HookPoint.name equals the key in the unprocessed bridge; "
        "aliases = every other key -> the canonical key of the same HookPoint object; "
        "hookpoint_name_if_different = HookPoint.name where it differs from the key; "
        "hook_registry_names = _hook_registry keys; per prompt the keys/shapes/dtypes "
        "run_with_cache stores and never_cached = hook_dict names it does not store (token "
        "tensors; padded batch: attention_mask + HF position_ids passed). Logit comparisons over "
        "real (unpadded) positions: unprocessed vs HF (hf.safetensors), compatibility mode vs "
        f"hooked_processed (asserted: relative error <= {BRIDGE_DEC_TOL} on logits, absolute <= "
        f"{BRIDGE_DEC_TOL} on log-probs). compatibility_mode_outcome: what "
        "enable_compatibility_mode did on this RMSNorm model (whether it raised, Python warnings, "
        "log records >= WARNING, output, and the bridge.state_dict() entries it changed/added/"
        "removed, e.g. RMS weights folded into the next linear layers and set to 1)."
    )
    doc["versions"] = fixtures.versions()

    name = spec["name"]
    for pid, r in doc["unprocessed"]["run_with_cache"].items():
        scale = max(1.0, float(hf_logits[pid].abs().max()))
        err = r["max_abs_diff_logits_vs_hf_real_positions"] / scale
        assert err <= BRIDGE_DEC_TOL, f"{name} bridge unprocessed {pid}: vs HF {err:.3e}"
    if outcome["succeeded"]:
        for pid, r in doc["compatibility_mode"]["run_with_cache"].items():
            err = r["max_abs_diff_logprobs_vs_ht_processed_real_positions"]
            assert err <= BRIDGE_DEC_TOL, f"{name} bridge compatibility mode {pid}: vs HT {err:.3e}"
    fixtures.write_json(fx / "bridge_hooks.json", doc)
    u, c = doc["unprocessed"], doc["compatibility_mode"]
    fixtures.log(
        f"decoders: {name} bridge_hooks.json ({adapter}): unprocessed {u['n_hook_dict']} names "
        f"({u['n_canonical']} + {u['n_aliases']} aliases), compatibility mode {c['n_hook_dict']} "
        f"({c['n_canonical']} + {c['n_aliases']}); compatibility mode "
        + ("succeeded" if outcome["succeeded"] else f"raised {outcome['raised']}")
    )
    return doc
