//! transformers 5.9.0's `GPTNeoXConfig` (Pythia, GPT-NeoX-20B): LayerNorm blocks whose attention
//! and MLP run in parallel off the same residual (or in sequence), a fused per-head q/k/v
//! projection, rotary embeddings on a fraction of each head, a plain GELU MLP.
//!
//! The rotary settings follow `GPTNeoXConfig.convert_rope_params_to_dict`: a legacy
//! `rope_scaling` object replaces `rope_parameters`; `rope_theta` comes from that object, else
//! from the legacy top-level `rotary_emb_base`, else 10000; the rotated fraction of each head from
//! its `partial_rotary_factor`, else `rotary_pct`, else 0.25. A top-level `rope_theta` or
//! `partial_rotary_factor` is not read (transformers ignores them for this family).

use serde::Deserialize;
use serde_json::Value;

use super::checks;
use super::llama::{first_token_id, invalid, present};
use super::rope::rope_scaling;
use crate::config::{Activation, Rope};
use crate::error::Result;

/// A `GPTNeoXForCausalLM` `config.json`, every key with transformers' default.
#[derive(Clone, Debug, PartialEq)]
pub struct GptNeoxConfig {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Residual stream width `d_model`.
    pub hidden_size: i64,
    /// Number of blocks.
    pub num_hidden_layers: i64,
    /// Attention heads (each `hidden_size / num_attention_heads` wide).
    pub num_attention_heads: i64,
    /// MLP hidden width.
    pub intermediate_size: i64,
    /// The MLP's activation (`hidden_act`, default exact `gelu`).
    pub hidden_act: Activation,
    /// The context length the model is used with (rotary: no position table, no hard limit).
    pub max_position_embeddings: i64,
    /// The epsilon of all three LayerNorms.
    pub layer_norm_eps: f64,
    /// `embed_out.weight` is `embed_in.weight`.
    pub tie_word_embeddings: bool,
    /// Attention and MLP both read the block's input and are added together (`x + attn(ln1(x)) +
    /// mlp(ln2(x))`); otherwise the MLP reads the residual after attention.
    pub use_parallel_residual: bool,
    /// `query_key_value` and `dense` have biases.
    pub attention_bias: bool,
    /// The rotary base and scaling.
    pub rope: Rope,
    /// The fraction of each head the rotary embedding turns (`partial_rotary_factor`).
    pub partial_rotary_factor: f64,
    /// Beginning-of-sequence id.
    pub bos_token_id: Option<i64>,
    /// End-of-sequence id.
    pub eos_token_id: Option<i64>,
    /// Padding id.
    pub pad_token_id: Option<i64>,
    /// The checkpoint's dtype as written (`dtype` or `torch_dtype`).
    pub dtype: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawGptNeox {
    vocab_size: Option<i64>,
    hidden_size: Option<i64>,
    num_hidden_layers: Option<i64>,
    num_attention_heads: Option<i64>,
    intermediate_size: Option<i64>,
    hidden_act: Option<String>,
    max_position_embeddings: Option<i64>,
    layer_norm_eps: Option<f64>,
    tie_word_embeddings: Option<bool>,
    use_parallel_residual: Option<bool>,
    attention_bias: Option<bool>,
    rope_parameters: Option<Value>,
    rope_scaling: Option<Value>,
    rotary_emb_base: Option<f64>,
    rotary_pct: Option<f64>,
    #[serde(deserialize_with = "present")]
    bos_token_id: Option<Value>,
    #[serde(deserialize_with = "present")]
    eos_token_id: Option<Value>,
    #[serde(deserialize_with = "present")]
    pad_token_id: Option<Value>,
    dtype: Option<String>,
    torch_dtype: Option<String>,
}

/// The object the rotary settings come from: a non-empty legacy `rope_scaling` wins over
/// `rope_parameters` (transformers replaces one by the other).
fn rope_object(raw: &RawGptNeox) -> Result<Option<&serde_json::Map<String, Value>>> {
    let scaling = as_object("rope_scaling", &raw.rope_scaling)?.filter(|m| !m.is_empty());
    Ok(scaling.or(as_object("rope_parameters", &raw.rope_parameters)?))
}

fn as_object<'a>(
    key: &str,
    value: &'a Option<Value>,
) -> Result<Option<&'a serde_json::Map<String, Value>>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(invalid(format!("{key} must be an object, got {other}"))),
    }
}

impl GptNeoxConfig {
    /// Parses the text of a `GPTNeoXForCausalLM` `config.json`.
    pub(crate) fn parse(text: &str) -> std::result::Result<Self, super::llama::ParseError> {
        let raw: RawGptNeox = serde_json::from_str(text).map_err(super::llama::ParseError::Json)?;
        Self::from_raw(raw).map_err(super::llama::ParseError::Invalid)
    }

    fn from_raw(raw: RawGptNeox) -> Result<Self> {
        let rope = rope_object(&raw)?;
        let theta = rope
            .and_then(|r| r.get("rope_theta"))
            .and_then(Value::as_f64)
            .or(raw.rotary_emb_base)
            .unwrap_or(10000.0);
        let partial_rotary_factor = rope
            .and_then(|r| r.get("partial_rotary_factor"))
            .and_then(Value::as_f64)
            .or(raw.rotary_pct)
            .unwrap_or(0.25);
        let config = GptNeoxConfig {
            vocab_size: raw.vocab_size.unwrap_or(50432),
            hidden_size: raw.hidden_size.unwrap_or(6144),
            num_hidden_layers: raw.num_hidden_layers.unwrap_or(44),
            num_attention_heads: raw.num_attention_heads.unwrap_or(64),
            intermediate_size: raw.intermediate_size.unwrap_or(24576),
            hidden_act: raw.hidden_act.as_deref().unwrap_or("gelu").parse()?,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            layer_norm_eps: raw.layer_norm_eps.unwrap_or(1e-5),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            use_parallel_residual: raw.use_parallel_residual.unwrap_or(true),
            attention_bias: raw.attention_bias.unwrap_or(true),
            rope: Rope {
                theta,
                scaling: rope_scaling(rope)?,
            },
            partial_rotary_factor,
            bos_token_id: first_token_id("bos_token_id", raw.bos_token_id.as_ref(), Some(0))?,
            eos_token_id: first_token_id("eos_token_id", raw.eos_token_id.as_ref(), Some(2))?,
            pad_token_id: first_token_id("pad_token_id", raw.pad_token_id.as_ref(), None)?,
            dtype: raw.dtype.or(raw.torch_dtype),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks sizes and ids: positive sizes, `hidden_size` a multiple of the heads, a rotary
    /// width that fits the head, a positive epsilon and base, special ids inside the vocabulary.
    pub fn validate(&self) -> Result<()> {
        checks::positive(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ])?;
        checks::multiple_of(
            "hidden_size",
            self.hidden_size,
            "num_attention_heads",
            self.num_attention_heads,
        )?;
        if !(0.0..=1.0).contains(&self.partial_rotary_factor) {
            return Err(invalid(format!(
                "partial_rotary_factor (rotary_pct) must be in [0, 1], got {}",
                self.partial_rotary_factor
            )));
        }
        if self.rotary_dim() > self.head_dim() {
            return Err(invalid(format!(
                "the rotary embedding turns {} dimensions (partial_rotary_factor {} of head_dim \
                 {}, rounded up to pairs), more than a head has",
                self.rotary_dim(),
                self.partial_rotary_factor,
                self.head_dim()
            )));
        }
        checks::positive_finite("rope_theta (rotary_emb_base)", self.rope.theta)?;
        checks::positive_finite("layer_norm_eps", self.layer_norm_eps)?;
        checks::ids_in_vocabulary(
            self.vocab_size,
            &[
                ("bos_token_id", self.bos_token_id),
                ("eos_token_id", self.eos_token_id),
                ("pad_token_id", self.pad_token_id),
            ],
        )?;
        Ok(())
    }

    /// The width of one head.
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// How many leading dimensions of each head the rotary embedding turns: transformers'
    /// `int(head_dim * partial_rotary_factor)`, rounded up to whole pairs (its inverse
    /// frequencies are `ceil(r / 2)`, and the cosines it applies twice that many).
    pub fn rotary_dim(&self) -> i64 {
        let truncated = (self.head_dim() as f64 * self.partial_rotary_factor) as i64;
        2 * ((truncated + 1) / 2)
    }
}
