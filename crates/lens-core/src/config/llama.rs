//! The Llama family's configs: `LlamaConfig`, `MistralConfig`, `Qwen2Config`, `Qwen3Config`,
//! `GemmaConfig`, `Gemma2Config`, `Gemma3TextConfig`, `Phi3Config` and `Olmo2Config` of
//! transformers 5.9.0, read into one [`LlamaConfig`] (the nine share one decoder: RMSNorm,
//! rotary attention with grouped KV heads, a gated MLP) with a [`LlamaFamily`] saying which, the
//! knobs in which they differ (where the norms sit and how they scale, q/k norms, soft-capping,
//! the query scale, fused projections, per-layer rotary bases), and each family's own defaults
//! for the keys a `config.json` leaves out.
//!
//! Rotary settings are read from `rope_parameters` (what transformers 5 writes) or, for
//! checkpoints written by earlier versions, from `rope_theta` and `rope_scaling`.

use serde::Deserialize;
use serde_json::Value;

use super::rope::{object, rope_scaling, theta, LongRope, Rope, RopeScaling};
use crate::config::Activation;
use crate::error::{LensError, Result};

/// Which of the Llama-family architectures a config is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LlamaFamily {
    /// `model_type: "llama"` (`LlamaForCausalLM`).
    Llama,
    /// `model_type: "mistral"` (`MistralForCausalLM`): a sliding window on every layer.
    Mistral,
    /// `model_type: "qwen2"` (`Qwen2ForCausalLM`): q, k and v biased; an optional window.
    Qwen2,
    /// `model_type: "qwen3"` (`Qwen3ForCausalLM`): per-head RMSNorm of q and k.
    Qwen3,
    /// `model_type: "gemma"` (`GemmaForCausalLM`): RMSNorm by `1 + w`, embeddings scaled by
    /// `sqrt(hidden_size)`, a tanh-GELU gate.
    Gemma,
    /// `model_type: "gemma2"` (`Gemma2ForCausalLM`): Gemma's, plus norms before and after each
    /// sublayer, soft-capped scores and logits, `query_pre_attn_scalar`, sliding and global
    /// layers alternating.
    Gemma2,
    /// `model_type: "gemma3_text"` (`Gemma3ForCausalLM`, text only): Gemma 2's, plus per-head
    /// q/k norms and a rotary base of its own for the sliding layers.
    Gemma3,
    /// `model_type: "phi3"` (`Phi3ForCausalLM`): fused `qkv_proj` and `gate_up_proj`, partial
    /// rotary.
    Phi3,
    /// `model_type: "olmo2"` (`Olmo2ForCausalLM`): norms after each sublayer (none before), q/k
    /// RMSNorms over the whole projection.
    Olmo2,
}

impl LlamaFamily {
    /// Whether TransformerLens prepends BOS by default: not for Qwen2 and Qwen3, which were
    /// trained without one (TransformerLens 3.9.0's configurations and bridge adapters).
    pub fn default_prepend_bos(self) -> bool {
        !matches!(self, LlamaFamily::Qwen2 | LlamaFamily::Qwen3)
    }

    /// Gemma 1, 2 or 3: RMSNorm by `1 + w`, scaled embeddings.
    pub fn is_gemma(self) -> bool {
        matches!(
            self,
            LlamaFamily::Gemma | LlamaFamily::Gemma2 | LlamaFamily::Gemma3
        )
    }

    /// The `model_type` of a `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            LlamaFamily::Llama => "llama",
            LlamaFamily::Mistral => "mistral",
            LlamaFamily::Qwen2 => "qwen2",
            LlamaFamily::Qwen3 => "qwen3",
            LlamaFamily::Gemma => "gemma",
            LlamaFamily::Gemma2 => "gemma2",
            LlamaFamily::Gemma3 => "gemma3_text",
            LlamaFamily::Phi3 => "phi3",
            LlamaFamily::Olmo2 => "olmo2",
        }
    }

    /// The HuggingFace class.
    pub fn architecture(self) -> &'static str {
        match self {
            LlamaFamily::Llama => "LlamaForCausalLM",
            LlamaFamily::Mistral => "MistralForCausalLM",
            LlamaFamily::Qwen2 => "Qwen2ForCausalLM",
            LlamaFamily::Qwen3 => "Qwen3ForCausalLM",
            LlamaFamily::Gemma => "GemmaForCausalLM",
            LlamaFamily::Gemma2 => "Gemma2ForCausalLM",
            LlamaFamily::Gemma3 => "Gemma3ForCausalLM",
            LlamaFamily::Phi3 => "Phi3ForCausalLM",
            LlamaFamily::Olmo2 => "Olmo2ForCausalLM",
        }
    }

    /// Every family, in a fixed order.
    pub const ALL: [LlamaFamily; 9] = [
        LlamaFamily::Llama,
        LlamaFamily::Mistral,
        LlamaFamily::Qwen2,
        LlamaFamily::Qwen3,
        LlamaFamily::Gemma,
        LlamaFamily::Gemma2,
        LlamaFamily::Gemma3,
        LlamaFamily::Phi3,
        LlamaFamily::Olmo2,
    ];

    /// The family of a `model_type`, or of an `architectures` entry.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.model_type() == name || f.architecture() == name)
    }
}

/// How an RMSNorm applies its weight to the input normalised in f32 (in f32 the first two agree).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RmsScale {
    /// Llama's: cast back to the input's dtype, then times `w`.
    Weight,
    /// OLMo-2's: times `w` in f32, then cast back.
    WeightInF32,
    /// Gemma's: times `1 + w` in f32, then cast back (the weight is stored as an offset from 1).
    OnePlusWeight,
}

/// Where a decoder layer normalises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormPlacement {
    /// Before each sublayer: `input_layernorm` before attention, `post_attention_layernorm`
    /// before the MLP (Llama, Mistral, Qwen, Gemma, Phi-3).
    Before,
    /// Before and after each sublayer: `input_layernorm`, then `post_attention_layernorm` on
    /// the attention output; `pre_feedforward_layernorm`, then `post_feedforward_layernorm` on
    /// the MLP output (Gemma 2 and 3).
    BeforeAndAfter,
    /// Only on each sublayer's output, before it joins the residual: `post_attention_layernorm`
    /// and `post_feedforward_layernorm` (OLMo-2).
    After,
}

/// The RMSNorms of queries and keys, before the rotary embedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkNorm {
    /// None.
    None,
    /// Over each head's vector, one `[head_dim]` weight shared by the heads (Qwen3, Gemma 3).
    PerHead,
    /// Over the whole projection before it is split into heads, weights `[heads * head_dim]`
    /// and `[kv_heads * head_dim]` (OLMo-2).
    Projection,
}

/// A Llama-family `config.json`, every key with its family's HuggingFace default.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// Which architecture.
    pub family: LlamaFamily,
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Residual stream width `d_model`.
    pub hidden_size: i64,
    /// MLP hidden width `d_mlp`.
    pub intermediate_size: i64,
    /// Number of blocks.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key and value heads (grouped-query attention when fewer than the query heads).
    pub num_key_value_heads: i64,
    /// Width of one head; need not be `hidden_size / num_attention_heads`.
    pub head_dim: i64,
    /// The gate's activation (`hidden_act`, default `silu`).
    pub hidden_act: Activation,
    /// The context length the model is used with.
    pub max_position_embeddings: i64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// `lm_head.weight` is `embed_tokens.weight`.
    pub tie_word_embeddings: bool,
    /// `q_proj`, `k_proj`, `v_proj` have biases (Qwen2: always; Llama, Qwen3: `attention_bias`).
    pub qkv_bias: bool,
    /// `o_proj` has a bias (Llama, Qwen3: `attention_bias`).
    pub o_bias: bool,
    /// The MLP's three projections have biases (Llama's `mlp_bias`).
    pub mlp_bias: bool,
    /// RMSNorms of queries and keys before the rotary embedding (Qwen3, Gemma 3, OLMo-2).
    pub qk_norm: QkNorm,
    /// How the RMSNorms apply their weights.
    pub rms_scale: RmsScale,
    /// Where the decoder layers normalise.
    pub norm_placement: NormPlacement,
    /// `q_proj`, `k_proj`, `v_proj` are one `qkv_proj`, and `gate_proj`, `up_proj` one
    /// `gate_up_proj` (Phi-3).
    pub fused_projections: bool,
    /// The factor of the attention scores `q . k` (`head_dim^-0.5`; Gemma 2 and 3:
    /// `query_pre_attn_scalar^-0.5`).
    pub query_scale: f64,
    /// Scores soft-capped as `cap * tanh(scores / cap)` before the mask (Gemma 2's
    /// `attn_logit_softcapping`).
    pub attn_logit_softcapping: Option<f64>,
    /// Logits soft-capped as `cap * tanh(logits / cap)` (`final_logit_softcapping`).
    pub final_logit_softcapping: Option<f64>,
    /// Embeddings multiplied by this (Gemma: `sqrt(hidden_size)`, rounded to the embedding's
    /// dtype).
    pub embed_scale: Option<f64>,
    /// How many dimensions of each head rotate, the first ones (`head_dim`; Phi-3:
    /// `int(head_dim * partial_rotary_factor)`).
    pub rotary_dim: i64,
    /// The rotary embedding (of every layer, or of the global layers when `local_rope` is set).
    pub rope: Rope,
    /// Gemma 3's rotary embedding of the sliding-window layers (its own base, never scaled).
    pub local_rope: Option<Rope>,
    /// Phi-3's `longrope` frequencies (`rope.scaling` is then `None`).
    pub longrope: Option<LongRope>,
    /// Gemma 3's `use_bidirectional_attention`: queries see later keys too (every key on a
    /// global layer, the keys less than the window away on a sliding one; transformers then
    /// reads a `sliding_window` of `w` as `w / 2 + 1`). Gemma 1 and 2 keep the flag only for
    /// other attention kernels: eager attention stays causal, and so does this.
    pub bidirectional: bool,
    /// Per layer, the sliding window (keys within the last `w` positions) or `None` (global).
    pub layer_windows: Vec<Option<i64>>,
    /// Beginning-of-sequence id.
    pub bos_token_id: Option<i64>,
    /// End-of-sequence ids (Llama 3 lists several; the first is the one generation pads with).
    pub eos_token_ids: Vec<i64>,
    /// Padding id.
    pub pad_token_id: Option<i64>,
    /// The checkpoint's dtype as written (`dtype` or `torch_dtype`).
    pub dtype: Option<String>,
    /// The `architectures` list of the file.
    pub architectures: Vec<String>,
}

/// The keys of a Llama-family `config.json`; `None` where the file leaves a key out and the
/// family's default applies.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawLlama {
    vocab_size: Option<i64>,
    hidden_size: Option<i64>,
    intermediate_size: Option<i64>,
    num_hidden_layers: Option<i64>,
    num_attention_heads: Option<i64>,
    num_key_value_heads: Option<i64>,
    head_dim: Option<i64>,
    hidden_act: Option<String>,
    /// Gemma 2 and 3 read their activation from this key (and never `hidden_act`).
    hidden_activation: Option<String>,
    max_position_embeddings: Option<i64>,
    rms_norm_eps: Option<f64>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    rope_parameters: Option<Value>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    /// `null` (no window) is not the same as absent (the family's default).
    #[serde(deserialize_with = "present")]
    sliding_window: Option<Value>,
    use_sliding_window: Option<bool>,
    max_window_layers: Option<i64>,
    /// Phi-3's pretraining context (the `longrope` switch point).
    original_max_position_embeddings: Option<i64>,
    layer_types: Option<Vec<String>>,
    /// Gemma 3's legacy period of the global layers (`sliding_window_pattern`, default 6).
    sliding_window_pattern: Option<i64>,
    /// Gemma 3's legacy rotary base of the sliding layers.
    rope_local_base_freq: Option<f64>,
    /// Phi-3's legacy rotary fraction.
    partial_rotary_factor: Option<f64>,
    use_bidirectional_attention: Option<bool>,
    query_pre_attn_scalar: Option<f64>,
    #[serde(deserialize_with = "present")]
    attn_logit_softcapping: Option<Value>,
    #[serde(deserialize_with = "present")]
    final_logit_softcapping: Option<Value>,
    #[serde(deserialize_with = "present")]
    bos_token_id: Option<Value>,
    #[serde(deserialize_with = "present")]
    eos_token_id: Option<Value>,
    #[serde(deserialize_with = "present")]
    pad_token_id: Option<Value>,
    dtype: Option<String>,
    torch_dtype: Option<String>,
    architectures: Option<Vec<String>>,
}

/// A key that is present, `null` included (`Some(Value::Null)`); serde's `default` gives `None`
/// for an absent one.
pub(crate) fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// The defaults that differ between the families (transformers 5.9.0's config classes).
struct FamilyDefaults {
    vocab_size: i64,
    hidden_size: i64,
    intermediate_size: i64,
    num_hidden_layers: i64,
    num_attention_heads: i64,
    num_key_value_heads: Option<i64>,
    head_dim: Option<i64>,
    hidden_act: &'static str,
    max_position_embeddings: i64,
    rms_norm_eps: f64,
    tie_word_embeddings: bool,
    sliding_window: Option<i64>,
    bos_token_id: Option<i64>,
    eos_token_id: Option<i64>,
    pad_token_id: Option<i64>,
}

/// The defaults every family shares with Llama's, changed where a family differs.
const LLAMA_DEFAULTS: FamilyDefaults = FamilyDefaults {
    vocab_size: 32000,
    hidden_size: 4096,
    intermediate_size: 11008,
    num_hidden_layers: 32,
    num_attention_heads: 32,
    num_key_value_heads: None,
    head_dim: None,
    hidden_act: "silu",
    max_position_embeddings: 2048,
    rms_norm_eps: 1e-6,
    tie_word_embeddings: false,
    sliding_window: None,
    bos_token_id: Some(1),
    eos_token_id: Some(2),
    pad_token_id: None,
};

/// Gemma 2's and 3's shared defaults.
const GEMMA2_DEFAULTS: FamilyDefaults = FamilyDefaults {
    vocab_size: 256000,
    hidden_size: 2304,
    intermediate_size: 9216,
    num_hidden_layers: 26,
    num_attention_heads: 8,
    num_key_value_heads: Some(4),
    head_dim: Some(256),
    hidden_act: "gelu_pytorch_tanh",
    max_position_embeddings: 8192,
    rms_norm_eps: 1e-6,
    tie_word_embeddings: true,
    sliding_window: Some(4096),
    bos_token_id: Some(2),
    eos_token_id: Some(1),
    pad_token_id: Some(0),
};

fn defaults(family: LlamaFamily) -> FamilyDefaults {
    match family {
        LlamaFamily::Llama => LLAMA_DEFAULTS,
        LlamaFamily::Mistral => FamilyDefaults {
            intermediate_size: 14336,
            num_key_value_heads: Some(8),
            max_position_embeddings: 4096 * 32,
            sliding_window: Some(4096),
            ..LLAMA_DEFAULTS
        },
        LlamaFamily::Qwen2 | LlamaFamily::Qwen3 => FamilyDefaults {
            vocab_size: 151936,
            intermediate_size: 22016,
            num_key_value_heads: Some(32),
            head_dim: (family == LlamaFamily::Qwen3).then_some(128),
            max_position_embeddings: 32768,
            sliding_window: Some(4096),
            bos_token_id: None,
            eos_token_id: None,
            ..LLAMA_DEFAULTS
        },
        LlamaFamily::Gemma => FamilyDefaults {
            hidden_size: 3072,
            intermediate_size: 24576,
            num_hidden_layers: 28,
            num_attention_heads: 16,
            num_key_value_heads: Some(16),
            sliding_window: None,
            ..GEMMA2_DEFAULTS
        },
        LlamaFamily::Gemma2 => GEMMA2_DEFAULTS,
        LlamaFamily::Gemma3 => FamilyDefaults {
            vocab_size: 262_208,
            max_position_embeddings: 131_072,
            ..GEMMA2_DEFAULTS
        },
        LlamaFamily::Phi3 => FamilyDefaults {
            vocab_size: 32064,
            hidden_size: 3072,
            intermediate_size: 8192,
            max_position_embeddings: 4096,
            rms_norm_eps: 1e-5,
            eos_token_id: Some(32000),
            pad_token_id: Some(32000),
            ..LLAMA_DEFAULTS
        },
        LlamaFamily::Olmo2 => FamilyDefaults {
            vocab_size: 50304,
            rms_norm_eps: 1e-5,
            bos_token_id: None,
            eos_token_id: Some(50279),
            pad_token_id: Some(1),
            ..LLAMA_DEFAULTS
        },
    }
}

pub(crate) fn invalid(message: String) -> LensError {
    LensError::InvalidConfig {
        path: None,
        message,
    }
}

/// The first of [`token_ids`]: the one id of `key` (a list's first), or `None`.
pub(crate) fn first_token_id(
    key: &str,
    value: Option<&Value>,
    default: Option<i64>,
) -> Result<Option<i64>> {
    Ok(token_ids(key, value, default)?.first().copied())
}

/// A token id key: an integer, `null`, or (for `eos_token_id`) a list of integers.
pub(crate) fn token_ids(
    key: &str,
    value: Option<&Value>,
    default: Option<i64>,
) -> Result<Vec<i64>> {
    match value {
        None => Ok(default.into_iter().collect()),
        Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(|id| vec![id])
            .ok_or_else(|| invalid(format!("{key} must be an integer, got {n}"))),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_i64()
                    .ok_or_else(|| invalid(format!("{key} must list integers, got {v}")))
            })
            .collect(),
        Some(other) => Err(invalid(format!(
            "{key} must be an integer or a list, got {other}"
        ))),
    }
}

/// The rotary settings: `rope_parameters` (transformers 5), else `rope_theta` and
/// `rope_scaling` (earlier files).
fn rope(raw: &RawLlama) -> Result<Rope> {
    let (theta, scaling) = match &raw.rope_parameters {
        Some(Value::Object(p)) => (p.get("rope_theta").and_then(Value::as_f64), Some(p)),
        Some(Value::Null) | None => (
            None,
            match &raw.rope_scaling {
                Some(Value::Object(s)) => Some(s),
                Some(Value::Null) | None => None,
                Some(other) => {
                    return Err(invalid(format!(
                        "rope_scaling must be an object, got {other}"
                    )))
                }
            },
        ),
        Some(other) => {
            return Err(invalid(format!(
                "rope_parameters must be an object, got {other}"
            )))
        }
    };
    let theta = theta.or(raw.rope_theta).unwrap_or(10000.0);
    if !(theta.is_finite() && theta > 0.0) {
        return Err(invalid(format!(
            "rope_theta must be positive and finite, got {theta}"
        )));
    }
    Ok(Rope {
        theta,
        scaling: rope_scaling(scaling)?,
    })
}

/// Gemma 3's two rotary embeddings, (global, sliding): `rope_parameters` keyed by layer type
/// (what transformers 5 writes), else the legacy `rope_theta` (default 1e6) with
/// `rope_scaling` for the global layers and `rope_local_base_freq` (default 1e4) for the
/// sliding ones. A flat `rope_parameters` is ignored, as transformers does.
fn gemma3_ropes(raw: &RawLlama) -> Result<(Rope, Rope)> {
    let nested = object(&raw.rope_parameters, "rope_parameters")?
        .filter(|p| p.contains_key("full_attention") || p.contains_key("sliding_attention"));
    let entry = |name: &str| -> Result<Option<&serde_json::Map<String, Value>>> {
        match nested.and_then(|p| p.get(name)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(o)) => Ok(Some(o)),
            Some(other) => Err(invalid(format!(
                "rope_parameters.{name} must be an object, got {other}"
            ))),
        }
    };
    let (full, sliding) = (entry("full_attention")?, entry("sliding_attention")?);
    let legacy_scaling = object(&raw.rope_scaling, "rope_scaling")?;
    let global = Rope {
        theta: theta(
            full.and_then(|f| f.get("rope_theta"))
                .and_then(Value::as_f64)
                .or(raw.rope_theta),
            1e6,
            "rope_theta",
        )?,
        scaling: rope_scaling(full.or(legacy_scaling))?,
    };
    let local = Rope {
        theta: theta(
            sliding
                .and_then(|f| f.get("rope_theta"))
                .and_then(Value::as_f64)
                .or(raw.rope_local_base_freq),
            1e4,
            "rope_local_base_freq",
        )?,
        scaling: rope_scaling(sliding)?,
    };
    Ok((global, local))
}

/// Phi-3's rotary embedding, the fraction of each head it turns and its `longrope` scaling:
/// `rope_scaling`, else `rope_parameters`, with the legacy top-level `rope_theta` and
/// `partial_rotary_factor` as defaults. transformers accepts `default` and `longrope` (`su` and
/// `yarn` are old names of it) and refuses others.
fn phi3_rope(
    raw: &RawLlama,
    head_dim: i64,
    max_positions: i64,
) -> Result<(Rope, f64, Option<LongRope>)> {
    let params = match object(&raw.rope_scaling, "rope_scaling")? {
        Some(s) => Some(s),
        None => object(&raw.rope_parameters, "rope_parameters")?,
    };
    let kind = params
        .and_then(|s| s.get("rope_type").or_else(|| s.get("type")))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let theta = theta(
        params
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .or(raw.rope_theta),
        10000.0,
        "rope_theta",
    )?;
    let fraction = params
        .and_then(|p| p.get("partial_rotary_factor"))
        .and_then(Value::as_f64)
        .or(raw.partial_rotary_factor)
        .unwrap_or(1.0);
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(invalid(format!(
            "partial_rotary_factor must be in (0, 1], got {fraction}"
        )));
    }
    let rope = Rope {
        theta,
        scaling: RopeScaling::None,
    };
    let longrope = match (kind, params) {
        ("default", _) | (_, None) => None,
        ("longrope" | "su" | "yarn", Some(p)) => {
            let pairs = ((head_dim as f64 * fraction) as i64 / 2) as usize;
            Some(longrope(p, raw, pairs, max_positions)?)
        }
        (other, _) => {
            return Err(invalid(format!(
                "Phi-3 rope type '{other}' is not supported (transformers accepts default and \
                 longrope)"
            )))
        }
    };
    Ok((rope, fraction, longrope))
}

/// The `longrope` parameters of `p`, with `pairs` rotated pairs (the factor lists' length).
fn longrope(
    p: &serde_json::Map<String, Value>,
    raw: &RawLlama,
    pairs: usize,
    max_positions: i64,
) -> Result<LongRope> {
    let factors = |key: &str| -> Result<Vec<f64>> {
        let list = p
            .get(key)
            .and_then(Value::as_array)
            .ok_or_else(|| invalid(format!("longrope rope scaling needs a list '{key}'")))?;
        let values = list
            .iter()
            .map(|v| {
                v.as_f64()
                    .filter(|f| f.is_finite() && *f > 0.0)
                    .ok_or_else(|| invalid(format!("{key} must list positive numbers, got {v}")))
            })
            .collect::<Result<Vec<f64>>>()?;
        if values.len() != pairs {
            return Err(invalid(format!(
                "{key} must have one factor per rotated pair ({pairs}), got {}",
                values.len()
            )));
        }
        Ok(values)
    };
    // transformers takes the config's own `original_max_position_embeddings` first.
    let original = raw
        .original_max_position_embeddings
        .or_else(|| {
            p.get("original_max_position_embeddings")
                .and_then(Value::as_i64)
        })
        .unwrap_or(4096);
    if original <= 1 {
        return Err(invalid(format!(
            "original_max_position_embeddings must be greater than 1, got {original}"
        )));
    }
    let factor = p
        .get("factor")
        .and_then(Value::as_f64)
        .unwrap_or(max_positions as f64 / original as f64);
    let attention_factor = match p.get("attention_factor").and_then(Value::as_f64) {
        Some(f) => f,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
    };
    Ok(LongRope {
        short_factor: factors("short_factor")?,
        long_factor: factors("long_factor")?,
        original_max_position_embeddings: original,
        attention_factor,
    })
}

/// A soft-cap key: absent means the family's default, `null` none; a cap must be positive.
fn softcap(value: &Option<Value>, default: Option<f64>, key: &str) -> Result<Option<f64>> {
    let cap = match value {
        None => default,
        Some(Value::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .ok_or_else(|| invalid(format!("{key} must be a number or null, got {v}")))?,
        ),
    };
    match cap {
        Some(c) if !(c.is_finite() && c > 0.0) => {
            Err(invalid(format!("{key} must be positive, got {c}")))
        }
        _ => Ok(cap),
    }
}

/// Per layer, its sliding window: Mistral and Phi-3 slide on every layer (when
/// `sliding_window` is set); Qwen2 and Qwen3 only with `use_sliding_window`, on the layers
/// `layer_types` marks `sliding_attention` (default: from `max_window_layers` on); Gemma 2 and
/// 3 on the layers `layer_types` marks (default: all but every `period`-th, the period 2 for
/// Gemma 2 and `sliding_window_pattern` (6) for Gemma 3); Llama, Gemma and OLMo-2 never.
fn layer_windows(family: LlamaFamily, raw: &RawLlama, n_layers: i64) -> Result<Vec<Option<i64>>> {
    use LlamaFamily as F;
    let configured = match &raw.sliding_window {
        None => defaults(family).sliding_window,
        Some(Value::Null) => None,
        Some(value) => Some(value.as_i64().ok_or_else(|| {
            invalid(format!(
                "sliding_window must be an integer or null, got {value}"
            ))
        })?),
    };
    // Gemma 3's config reads a bidirectional model's window as `w / 2 + 1` ("exclusive bounds").
    let bidirectional = family == F::Gemma3 && raw.use_bidirectional_attention == Some(true);
    let configured = configured.map(|w| if bidirectional { w / 2 + 1 } else { w });
    let window = match family {
        F::Llama | F::Gemma | F::Olmo2 => None,
        F::Mistral | F::Phi3 | F::Gemma2 | F::Gemma3 => configured,
        F::Qwen2 | F::Qwen3 => configured.filter(|_| raw.use_sliding_window.unwrap_or(false)),
    };
    if let Some(w) = window {
        if w <= 0 {
            return Err(invalid(format!("sliding_window must be positive, got {w}")));
        }
    }
    let n = n_layers as usize;
    let sliding: Vec<bool> = match (family, &raw.layer_types) {
        (F::Qwen2 | F::Qwen3 | F::Gemma2 | F::Gemma3, Some(types)) => {
            if types.len() != n {
                return Err(invalid(format!(
                    "layer_types lists {} layers, num_hidden_layers is {n_layers}",
                    types.len()
                )));
            }
            types
                .iter()
                .map(|t| match t.as_str() {
                    "sliding_attention" => Ok(true),
                    "full_attention" => Ok(false),
                    other => Err(invalid(format!("unknown layer type '{other}'"))),
                })
                .collect::<Result<_>>()?
        }
        (F::Qwen2 | F::Qwen3, None) => {
            let first_sliding = raw.max_window_layers.unwrap_or(28);
            (0..n_layers).map(|l| l >= first_sliding).collect()
        }
        (F::Gemma2 | F::Gemma3, None) => {
            let period = match family {
                F::Gemma2 => 2,
                _ => raw.sliding_window_pattern.unwrap_or(6),
            };
            if period <= 0 {
                return Err(invalid(format!(
                    "sliding_window_pattern must be positive, got {period}"
                )));
            }
            (0..n_layers).map(|l| (l + 1) % period != 0).collect()
        }
        _ => vec![true; n],
    };
    if window.is_none() && matches!(family, F::Gemma2 | F::Gemma3) && sliding.iter().any(|&s| s) {
        return Err(invalid(
            "layer_types has sliding_attention layers but sliding_window is null".into(),
        ));
    }
    Ok(sliding.into_iter().map(|s| window.filter(|_| s)).collect())
}

impl LlamaConfig {
    /// Parses the text of a Llama-family `config.json` of `family`.
    pub(crate) fn parse(family: LlamaFamily, text: &str) -> std::result::Result<Self, ParseError> {
        let raw: RawLlama = serde_json::from_str(text).map_err(ParseError::Json)?;
        Self::from_raw(family, raw).map_err(ParseError::Invalid)
    }

    fn from_raw(family: LlamaFamily, raw: RawLlama) -> Result<Self> {
        use LlamaFamily as F;
        let d = defaults(family);
        let hidden_size = raw.hidden_size.unwrap_or(d.hidden_size);
        let heads = raw.num_attention_heads.unwrap_or(d.num_attention_heads);
        let n_layers = raw.num_hidden_layers.unwrap_or(d.num_hidden_layers);
        if heads <= 0 {
            return Err(invalid(format!(
                "num_attention_heads must be positive, got {heads}"
            )));
        }
        let attention_bias = raw.attention_bias.unwrap_or(false);
        let head_dim = raw.head_dim.or(d.head_dim).unwrap_or(hidden_size / heads);
        let bidirectional = family == F::Gemma3 && raw.use_bidirectional_attention == Some(true);
        let max_positions = raw
            .max_position_embeddings
            .unwrap_or(d.max_position_embeddings);
        let (rope, local_rope, rotary_fraction, longrope) = match family {
            F::Gemma3 => {
                let (global, local) = gemma3_ropes(&raw)?;
                (global, Some(local), 1.0, None)
            }
            F::Phi3 => {
                let (rope, fraction, longrope) = phi3_rope(&raw, head_dim, max_positions)?;
                (rope, None, fraction, longrope)
            }
            _ => (rope(&raw)?, None, 1.0, None),
        };
        // Gemma 2 and 3 take their activation from `hidden_activation`, the others from
        // `hidden_act` (Gemma 1 included, whatever a `hidden_activation` key says).
        let activation = match family {
            F::Gemma2 | F::Gemma3 => raw.hidden_activation.as_deref(),
            _ => raw.hidden_act.as_deref(),
        };
        let query_pre_attn_scalar = match family {
            F::Gemma2 | F::Gemma3 => Some(raw.query_pre_attn_scalar.unwrap_or(256.0)),
            _ => None,
        };
        let config = LlamaConfig {
            family,
            vocab_size: raw.vocab_size.unwrap_or(d.vocab_size),
            hidden_size,
            intermediate_size: raw.intermediate_size.unwrap_or(d.intermediate_size),
            num_hidden_layers: n_layers,
            num_attention_heads: heads,
            num_key_value_heads: raw
                .num_key_value_heads
                .or(d.num_key_value_heads)
                .unwrap_or(heads),
            head_dim,
            hidden_act: activation.unwrap_or(d.hidden_act).parse()?,
            max_position_embeddings: max_positions,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(d.rms_norm_eps),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(d.tie_word_embeddings),
            qkv_bias: match family {
                F::Qwen2 => true,
                F::Mistral | F::Phi3 => false,
                _ => attention_bias,
            },
            o_bias: !matches!(family, F::Mistral | F::Qwen2 | F::Phi3) && attention_bias,
            mlp_bias: family == F::Llama && raw.mlp_bias.unwrap_or(false),
            qk_norm: match family {
                F::Qwen3 | F::Gemma3 => QkNorm::PerHead,
                F::Olmo2 => QkNorm::Projection,
                _ => QkNorm::None,
            },
            rms_scale: match family {
                F::Gemma | F::Gemma2 | F::Gemma3 => RmsScale::OnePlusWeight,
                F::Olmo2 => RmsScale::WeightInF32,
                _ => RmsScale::Weight,
            },
            norm_placement: match family {
                F::Gemma2 | F::Gemma3 => NormPlacement::BeforeAndAfter,
                F::Olmo2 => NormPlacement::After,
                _ => NormPlacement::Before,
            },
            fused_projections: family == F::Phi3,
            query_scale: query_pre_attn_scalar.unwrap_or(head_dim as f64).powf(-0.5),
            // Gemma 3 keeps the key but never applies it (transformers 5.9.0).
            attn_logit_softcapping: match family {
                F::Gemma2 => softcap(
                    &raw.attn_logit_softcapping,
                    Some(50.0),
                    "attn_logit_softcapping",
                )?,
                _ => None,
            },
            final_logit_softcapping: match family {
                F::Gemma2 => softcap(
                    &raw.final_logit_softcapping,
                    Some(30.0),
                    "final_logit_softcapping",
                )?,
                F::Gemma3 => softcap(
                    &raw.final_logit_softcapping,
                    None,
                    "final_logit_softcapping",
                )?,
                _ => None,
            },
            embed_scale: family.is_gemma().then(|| (hidden_size as f64).sqrt()),
            rotary_dim: (head_dim as f64 * rotary_fraction) as i64,
            rope,
            local_rope,
            longrope,
            bidirectional,
            layer_windows: layer_windows(family, &raw, n_layers.max(0))?,
            bos_token_id: first_token_id(
                "bos_token_id",
                raw.bos_token_id.as_ref(),
                d.bos_token_id,
            )?,
            eos_token_ids: token_ids("eos_token_id", raw.eos_token_id.as_ref(), d.eos_token_id)?,
            pad_token_id: first_token_id(
                "pad_token_id",
                raw.pad_token_id.as_ref(),
                d.pad_token_id,
            )?,
            dtype: raw.dtype.or(raw.torch_dtype),
            architectures: raw.architectures.unwrap_or_default(),
        };
        config.validate()?;
        Ok(config)
    }

    /// The rotary embedding of layer `layer`: Gemma 3's local one on its sliding layers, else
    /// the global one.
    pub fn layer_rope(&self, layer: usize) -> Rope {
        match (self.local_rope, self.layer_windows.get(layer)) {
            (Some(local), Some(Some(_))) => local,
            _ => self.rope,
        }
    }

    /// Checks sizes and ids: positive sizes, query heads a multiple of the key/value heads, an
    /// even head width (rotary pairs), a positive epsilon, special ids inside the vocabulary.
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value <= 0 {
                return Err(invalid(format!("{name} must be positive, got {value}")));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(invalid(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if self.head_dim % 2 != 0 {
            return Err(invalid(format!(
                "head_dim ({}) must be even for the rotary embedding",
                self.head_dim
            )));
        }
        if self.rotary_dim <= 0 || self.rotary_dim % 2 != 0 || self.rotary_dim > self.head_dim {
            return Err(invalid(format!(
                "the rotary width int(head_dim * partial_rotary_factor) = {} must be even and \
                 in (0, head_dim = {}]",
                self.rotary_dim, self.head_dim
            )));
        }
        if self.family.is_gemma()
            && self.family != LlamaFamily::Gemma
            && self.hidden_size % self.num_attention_heads != 0
        {
            // transformers' Gemma 2 and 3 configs refuse this too, head_dim notwithstanding.
            return Err(invalid(format!(
                "hidden_size ({}) must be a multiple of num_attention_heads ({})",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(invalid(format!(
                "rms_norm_eps must be positive and finite, got {}",
                self.rms_norm_eps
            )));
        }
        let ids = self
            .bos_token_id
            .iter()
            .map(|&id| ("bos_token_id", id))
            .chain(self.eos_token_ids.iter().map(|&id| ("eos_token_id", id)))
            .chain(self.pad_token_id.iter().map(|&id| ("pad_token_id", id)));
        for (name, id) in ids {
            if id < 0 || id >= self.vocab_size {
                return Err(invalid(format!(
                    "{name} ({id}) is outside the vocabulary (vocab_size {})",
                    self.vocab_size
                )));
            }
        }
        Ok(())
    }

    /// Query heads per key/value head.
    pub fn gqa_ratio(&self) -> i64 {
        self.num_attention_heads / self.num_key_value_heads
    }
}

/// Why a Llama-family config did not parse: its JSON, or its values.
pub(crate) enum ParseError {
    Json(serde_json::Error),
    Invalid(LensError),
}
