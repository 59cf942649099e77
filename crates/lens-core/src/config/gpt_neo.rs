//! transformers 5.9.0's `GPTNeoConfig`: GPT-2-like blocks with learned positions whose layers
//! alternate global attention and local attention over the last `window_size` keys, with
//! unscaled attention scores.
//!
//! The per-layer attention types come from `attention_layers` when the file lists them (every
//! saved `config.json` does), else from expanding `attention_types` (`[[["global", "local"],
//! 12]]`: the list repeated 12 times), as `GPTNeoConfig` does.

use serde::Deserialize;
use serde_json::Value;

use super::checks;
use super::llama::{first_token_id, invalid, present};
use crate::config::Activation;
use crate::error::Result;

/// A `GPTNeoForCausalLM` `config.json`, every key with transformers' default.
#[derive(Clone, Debug, PartialEq)]
pub struct GptNeoConfig {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Rows of the position table (the context length).
    pub max_position_embeddings: i64,
    /// Residual stream width.
    pub hidden_size: i64,
    /// Blocks.
    pub num_layers: i64,
    /// Attention heads.
    pub num_heads: i64,
    /// MLP width (`intermediate_size`, default `4 * hidden_size`).
    pub intermediate_size: i64,
    /// Per layer, the local window (a key is seen when fewer than `w` positions back) or
    /// `None` for global attention.
    pub layer_windows: Vec<Option<i64>>,
    /// The MLP's activation (default `gelu_new`).
    pub activation_function: Activation,
    /// LayerNorm epsilon.
    pub layer_norm_epsilon: f64,
    /// `lm_head.weight` is `wte` (default true).
    pub tie_word_embeddings: bool,
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
struct RawGptNeo {
    vocab_size: Option<i64>,
    max_position_embeddings: Option<i64>,
    hidden_size: Option<i64>,
    #[serde(alias = "num_hidden_layers")]
    num_layers: Option<i64>,
    #[serde(alias = "num_attention_heads")]
    num_heads: Option<i64>,
    #[serde(deserialize_with = "present")]
    intermediate_size: Option<Value>,
    attention_types: Option<Value>,
    attention_layers: Option<Vec<String>>,
    window_size: Option<i64>,
    activation_function: Option<String>,
    layer_norm_epsilon: Option<f64>,
    tie_word_embeddings: Option<bool>,
    #[serde(deserialize_with = "present")]
    bos_token_id: Option<Value>,
    #[serde(deserialize_with = "present")]
    eos_token_id: Option<Value>,
    #[serde(deserialize_with = "present")]
    pad_token_id: Option<Value>,
    dtype: Option<String>,
    torch_dtype: Option<String>,
}

/// `attention_types` expanded: each `[types, n]` appends `types` `n` times.
fn expand_attention_types(types: &Value) -> Result<Vec<String>> {
    let malformed = || {
        invalid(format!(
            "attention_types must be a list of [[types...], count] pairs, got {types}"
        ))
    };
    let mut out = Vec::new();
    for item in types.as_array().ok_or_else(malformed)? {
        let pair = item.as_array().ok_or_else(malformed)?;
        let [kinds, count] = pair.as_slice() else {
            return Err(malformed());
        };
        let kinds: Vec<String> = kinds
            .as_array()
            .ok_or_else(malformed)?
            .iter()
            .map(|k| k.as_str().map(str::to_owned).ok_or_else(malformed))
            .collect::<Result<_>>()?;
        for _ in 0..count.as_u64().ok_or_else(malformed)? {
            out.extend(kinds.iter().cloned());
        }
    }
    Ok(out)
}

impl GptNeoConfig {
    /// Parses the text of a `GPTNeoForCausalLM` `config.json`.
    pub(crate) fn parse(text: &str) -> std::result::Result<Self, super::llama::ParseError> {
        let raw: RawGptNeo = serde_json::from_str(text).map_err(super::llama::ParseError::Json)?;
        Self::from_raw(raw).map_err(super::llama::ParseError::Invalid)
    }

    fn from_raw(raw: RawGptNeo) -> Result<Self> {
        let hidden_size = raw.hidden_size.unwrap_or(2048);
        let num_layers = raw.num_layers.unwrap_or(24);
        let window = raw.window_size.unwrap_or(256);
        let layers = match (&raw.attention_layers, &raw.attention_types) {
            (Some(layers), _) => layers.clone(),
            (None, Some(types)) => expand_attention_types(types)?,
            (None, None) => {
                expand_attention_types(&serde_json::json!([[["global", "local"], 12]]))?
            }
        };
        if layers.len() as i64 != num_layers {
            return Err(invalid(format!(
                "the attention types name {} layers, num_layers is {num_layers}",
                layers.len()
            )));
        }
        let layer_windows = layers
            .iter()
            .map(|t| match t.as_str() {
                "global" => Ok(None),
                "local" => Ok(Some(window)),
                other => Err(invalid(format!(
                    "unknown attention type '{other}' (GPT-Neo has 'global' and 'local')"
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        let intermediate_size = match &raw.intermediate_size {
            None | Some(Value::Null) => 4 * hidden_size,
            Some(v) => v
                .as_i64()
                .ok_or_else(|| invalid(format!("intermediate_size must be an integer, got {v}")))?,
        };
        let config = GptNeoConfig {
            vocab_size: raw.vocab_size.unwrap_or(50257),
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            hidden_size,
            num_layers,
            num_heads: raw.num_heads.unwrap_or(16),
            intermediate_size,
            layer_windows,
            activation_function: raw
                .activation_function
                .as_deref()
                .unwrap_or("gelu_new")
                .parse()?,
            layer_norm_epsilon: raw.layer_norm_epsilon.unwrap_or(1e-5),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(true),
            bos_token_id: first_token_id("bos_token_id", raw.bos_token_id.as_ref(), Some(50256))?,
            eos_token_id: first_token_id("eos_token_id", raw.eos_token_id.as_ref(), Some(50256))?,
            pad_token_id: first_token_id("pad_token_id", raw.pad_token_id.as_ref(), None)?,
            dtype: raw.dtype.or(raw.torch_dtype),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks sizes and ids: positive sizes and window, the hidden size a multiple of the
    /// heads, a positive epsilon, special ids inside the vocabulary.
    pub fn validate(&self) -> Result<()> {
        checks::positive(&[
            ("vocab_size", self.vocab_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("hidden_size", self.hidden_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("intermediate_size", self.intermediate_size),
        ])?;
        if let Some(w) = self.layer_windows.iter().flatten().find(|w| **w <= 0) {
            return Err(invalid(format!("window_size must be positive, got {w}")));
        }
        checks::multiple_of("hidden_size", self.hidden_size, "num_heads", self.num_heads)?;
        checks::positive_finite("layer_norm_epsilon", self.layer_norm_epsilon)?;
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
        self.hidden_size / self.num_heads
    }
}
