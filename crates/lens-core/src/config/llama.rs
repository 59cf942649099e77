//! The Llama family's configs: `LlamaConfig`, `MistralConfig`, `Qwen2Config`, `Qwen3Config` of
//! transformers 5.9.0, read into one [`LlamaConfig`] (the four share one decoder: RMSNorm,
//! rotary attention with grouped KV heads, a gated MLP) with a [`LlamaFamily`] saying which, and
//! each family's own defaults for the keys a `config.json` leaves out.
//!
//! Rotary settings are read from `rope_parameters` (what transformers 5 writes) or, for
//! checkpoints written by earlier versions, from `rope_theta` and `rope_scaling`.

use serde::Deserialize;
use serde_json::Value;

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
}

impl LlamaFamily {
    /// Whether TransformerLens prepends BOS by default: not for Qwen2 and Qwen3, which were
    /// trained without one (TransformerLens 3.9.0's configurations and bridge adapters).
    pub fn default_prepend_bos(self) -> bool {
        !matches!(self, LlamaFamily::Qwen2 | LlamaFamily::Qwen3)
    }

    /// The `model_type` of a `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            LlamaFamily::Llama => "llama",
            LlamaFamily::Mistral => "mistral",
            LlamaFamily::Qwen2 => "qwen2",
            LlamaFamily::Qwen3 => "qwen3",
        }
    }

    /// The HuggingFace class.
    pub fn architecture(self) -> &'static str {
        match self {
            LlamaFamily::Llama => "LlamaForCausalLM",
            LlamaFamily::Mistral => "MistralForCausalLM",
            LlamaFamily::Qwen2 => "Qwen2ForCausalLM",
            LlamaFamily::Qwen3 => "Qwen3ForCausalLM",
        }
    }

    /// Every family, in a fixed order.
    pub const ALL: [LlamaFamily; 4] = [
        LlamaFamily::Llama,
        LlamaFamily::Mistral,
        LlamaFamily::Qwen2,
        LlamaFamily::Qwen3,
    ];

    /// The family of a `model_type`, or of an `architectures` entry.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.model_type() == name || f.architecture() == name)
    }
}

/// How rotary frequencies are scaled (`rope_type` of transformers' `ROPE_INIT_FUNCTIONS`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// `default`: `theta^(-2i/d)`.
    None,
    /// `linear`: every frequency divided by `factor` (positions interpolated).
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// `llama3`: low frequencies divided by `factor`, high ones kept, a smooth blend between.
    Llama3 {
        /// The divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length the model was pretrained with.
        original_max_position_embeddings: f64,
    },
}

impl RopeScaling {
    /// The inverse frequencies `[dim / 2]` of transformers' `ROPE_INIT_FUNCTIONS`, in f32:
    /// `1 / theta^(2i/dim)`, then divided by the factor (`linear`) or blended by wavelength
    /// (`llama3`, NTK-by-parts).
    pub fn inverse_frequencies(&self, theta: f64, dim: i64, device: tch::Device) -> tch::Tensor {
        use tch::{Kind, Tensor};
        let exponents = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, device))
            .to_kind(Kind::Float)
            / dim as f64;
        let inv_freq = Tensor::pow_scalar(theta, &exponents).reciprocal();
        match *self {
            RopeScaling::None => inv_freq,
            RopeScaling::Linear { factor } => inv_freq / factor,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_context,
            } => {
                let low_freq_wavelen = old_context / low_freq_factor;
                let high_freq_wavelen = old_context / high_freq_factor;
                let wavelen = inv_freq.reciprocal() * (2.0 * std::f64::consts::PI);
                let long = wavelen.gt(low_freq_wavelen);
                let scaled = (&inv_freq / factor).where_self(&long, &inv_freq);
                let smooth = (wavelen.reciprocal() * old_context - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                let smoothed =
                    (smooth.ones_like() - &smooth) * &scaled / factor + &smooth * &scaled;
                let medium = wavelen
                    .lt(high_freq_wavelen)
                    .logical_not()
                    .logical_and(&long.logical_not());
                smoothed.where_self(&medium, &scaled)
            }
        }
    }
}

/// The rotary embedding of the attention.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    /// The base `theta` (`rope_theta`, default 10000).
    pub theta: f64,
    /// Its scaling.
    pub scaling: RopeScaling,
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
    /// Per-head RMSNorm of queries and keys before the rotary embedding (Qwen3).
    pub qk_norm: bool,
    /// The rotary embedding.
    pub rope: Rope,
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
    layer_types: Option<Vec<String>>,
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
    num_key_value_heads: Option<i64>,
    head_dim: Option<i64>,
    max_position_embeddings: i64,
    sliding_window: Option<i64>,
    bos_token_id: Option<i64>,
    eos_token_id: Option<i64>,
}

fn defaults(family: LlamaFamily) -> FamilyDefaults {
    match family {
        LlamaFamily::Llama => FamilyDefaults {
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_key_value_heads: None,
            head_dim: None,
            max_position_embeddings: 2048,
            sliding_window: None,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        },
        LlamaFamily::Mistral => FamilyDefaults {
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 14336,
            num_key_value_heads: Some(8),
            head_dim: None,
            max_position_embeddings: 4096 * 32,
            sliding_window: Some(4096),
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        },
        LlamaFamily::Qwen2 | LlamaFamily::Qwen3 => FamilyDefaults {
            vocab_size: 151936,
            hidden_size: 4096,
            intermediate_size: 22016,
            num_key_value_heads: Some(32),
            head_dim: (family == LlamaFamily::Qwen3).then_some(128),
            max_position_embeddings: 32768,
            sliding_window: Some(4096),
            bos_token_id: None,
            eos_token_id: None,
        },
    }
}

pub(crate) fn invalid(message: String) -> LensError {
    LensError::InvalidConfig {
        path: None,
        message,
    }
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

fn number(object: &serde_json::Map<String, Value>, key: &str, what: &str) -> Result<f64> {
    object
        .get(key)
        .and_then(Value::as_f64)
        .ok_or_else(|| invalid(format!("{what} needs a number '{key}'")))
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

/// The frequency scaling a `rope_parameters` / `rope_scaling` object names (`rope_type`, or
/// `type` in earlier files; `default` when absent).
pub(crate) fn rope_scaling(
    scaling: Option<&serde_json::Map<String, Value>>,
) -> Result<RopeScaling> {
    let kind = scaling
        .and_then(|s| s.get("rope_type").or_else(|| s.get("type")))
        .and_then(Value::as_str)
        .unwrap_or("default");
    Ok(match (kind, scaling) {
        ("default", _) | (_, None) => RopeScaling::None,
        ("linear", Some(s)) => RopeScaling::Linear {
            factor: number(s, "factor", "linear rope scaling")?,
        },
        ("llama3", Some(s)) => RopeScaling::Llama3 {
            factor: number(s, "factor", "llama3 rope scaling")?,
            low_freq_factor: number(s, "low_freq_factor", "llama3 rope scaling")?,
            high_freq_factor: number(s, "high_freq_factor", "llama3 rope scaling")?,
            original_max_position_embeddings: number(
                s,
                "original_max_position_embeddings",
                "llama3 rope scaling",
            )?,
        },
        (other, Some(_)) => {
            return Err(invalid(format!(
                "rope type '{other}' is not supported (supported: default, linear, llama3)"
            )))
        }
    })
}

/// Per layer, its sliding window: Mistral slides on every layer (when `sliding_window` is set);
/// Qwen2 and Qwen3 only with `use_sliding_window`, on the layers `layer_types` marks
/// `sliding_attention` (default: from `max_window_layers` on); Llama never.
fn layer_windows(family: LlamaFamily, raw: &RawLlama, n_layers: i64) -> Result<Vec<Option<i64>>> {
    let configured = match &raw.sliding_window {
        None => defaults(family).sliding_window,
        Some(Value::Null) => None,
        Some(value) => Some(value.as_i64().ok_or_else(|| {
            invalid(format!(
                "sliding_window must be an integer or null, got {value}"
            ))
        })?),
    };
    let window = match family {
        LlamaFamily::Llama => None,
        LlamaFamily::Mistral => configured,
        LlamaFamily::Qwen2 | LlamaFamily::Qwen3 => {
            configured.filter(|_| raw.use_sliding_window.unwrap_or(false))
        }
    };
    if let Some(w) = window {
        if w <= 0 {
            return Err(invalid(format!("sliding_window must be positive, got {w}")));
        }
    }
    let per_layer = match (family, &raw.layer_types) {
        (LlamaFamily::Qwen2 | LlamaFamily::Qwen3, Some(types)) => {
            if types.len() as i64 != n_layers {
                return Err(invalid(format!(
                    "layer_types lists {} layers, num_hidden_layers is {n_layers}",
                    types.len()
                )));
            }
            types
                .iter()
                .map(|t| match t.as_str() {
                    "sliding_attention" => Ok(window),
                    "full_attention" => Ok(None),
                    other => Err(invalid(format!("unknown layer type '{other}'"))),
                })
                .collect::<Result<Vec<_>>>()?
        }
        (LlamaFamily::Qwen2 | LlamaFamily::Qwen3, None) => {
            let first_sliding = raw.max_window_layers.unwrap_or(28);
            (0..n_layers)
                .map(|l| window.filter(|_| l >= first_sliding))
                .collect()
        }
        _ => vec![window; n_layers as usize],
    };
    Ok(per_layer)
}

impl LlamaConfig {
    /// Parses the text of a Llama-family `config.json` of `family`.
    pub(crate) fn parse(family: LlamaFamily, text: &str) -> std::result::Result<Self, ParseError> {
        let raw: RawLlama = serde_json::from_str(text).map_err(ParseError::Json)?;
        Self::from_raw(family, raw).map_err(ParseError::Invalid)
    }

    fn from_raw(family: LlamaFamily, raw: RawLlama) -> Result<Self> {
        let d = defaults(family);
        let hidden_size = raw.hidden_size.unwrap_or(d.hidden_size);
        let heads = raw.num_attention_heads.unwrap_or(32);
        let n_layers = raw.num_hidden_layers.unwrap_or(32);
        if heads <= 0 {
            return Err(invalid(format!(
                "num_attention_heads must be positive, got {heads}"
            )));
        }
        let attention_bias = raw.attention_bias.unwrap_or(false);
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
            head_dim: raw.head_dim.or(d.head_dim).unwrap_or(hidden_size / heads),
            hidden_act: raw.hidden_act.as_deref().unwrap_or("silu").parse()?,
            max_position_embeddings: raw
                .max_position_embeddings
                .unwrap_or(d.max_position_embeddings),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias: match family {
                LlamaFamily::Qwen2 => true,
                LlamaFamily::Mistral => false,
                LlamaFamily::Llama | LlamaFamily::Qwen3 => attention_bias,
            },
            o_bias: matches!(family, LlamaFamily::Llama | LlamaFamily::Qwen3) && attention_bias,
            mlp_bias: family == LlamaFamily::Llama && raw.mlp_bias.unwrap_or(false),
            qk_norm: family == LlamaFamily::Qwen3,
            rope: rope(&raw)?,
            layer_windows: layer_windows(family, &raw, n_layers.max(0))?,
            bos_token_id: token_ids("bos_token_id", raw.bos_token_id.as_ref(), d.bos_token_id)?
                .first()
                .copied(),
            eos_token_ids: token_ids("eos_token_id", raw.eos_token_id.as_ref(), d.eos_token_id)?,
            pad_token_id: token_ids("pad_token_id", raw.pad_token_id.as_ref(), None)?
                .first()
                .copied(),
            dtype: raw.dtype.or(raw.torch_dtype),
            architectures: raw.architectures.unwrap_or_default(),
        };
        config.validate()?;
        Ok(config)
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
