//! transformers 5.9.0's `OPTConfig`: learned positions offset by 2, LayerNorms before (or, for
//! OPT-350m, after) each sublayer, an optional projection of narrower word embeddings
//! (`word_embed_proj_dim`), optional biases and LayerNorm affines, a ReLU MLP.

use serde::Deserialize;
use serde_json::Value;

use super::checks;
use super::llama::{first_token_id, invalid, present};
use crate::config::Activation;
use crate::error::Result;

/// The rows OPT's learned position table has before position 0 (its `OPTLearnedPositionalEmbedding`
/// looks position `p` up at row `p + 2`).
pub const OPT_POSITION_OFFSET: i64 = 2;

/// An `OPTForCausalLM` `config.json`, every key with transformers' default.
#[derive(Clone, Debug, PartialEq)]
pub struct OptConfig {
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Residual stream width.
    pub hidden_size: i64,
    /// Blocks.
    pub num_hidden_layers: i64,
    /// MLP width.
    pub ffn_dim: i64,
    /// Attention heads.
    pub num_attention_heads: i64,
    /// Positions the model takes (the table has two rows more).
    pub max_position_embeddings: i64,
    /// LayerNorms before each sublayer (pre-LN); `false`: after (OPT-350m).
    pub do_layer_norm_before: bool,
    /// No final LayerNorm after the blocks (`_remove_final_layer_norm`).
    pub remove_final_layer_norm: bool,
    /// The width of the word embeddings; `project_in` / `project_out` map them to and from the
    /// residual stream when it differs from `hidden_size`.
    pub word_embed_proj_dim: i64,
    /// Biases on the attention projections and the MLP.
    pub enable_bias: bool,
    /// LayerNorms have a weight and a bias.
    pub layer_norm_elementwise_affine: bool,
    /// The MLP's activation (default `relu`).
    pub activation_function: Activation,
    /// `lm_head.weight` is the token embedding (default true).
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
struct RawOpt {
    vocab_size: Option<i64>,
    hidden_size: Option<i64>,
    num_hidden_layers: Option<i64>,
    ffn_dim: Option<i64>,
    num_attention_heads: Option<i64>,
    max_position_embeddings: Option<i64>,
    do_layer_norm_before: Option<bool>,
    _remove_final_layer_norm: Option<bool>,
    #[serde(deserialize_with = "present")]
    word_embed_proj_dim: Option<Value>,
    enable_bias: Option<bool>,
    layer_norm_elementwise_affine: Option<bool>,
    activation_function: Option<String>,
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

impl OptConfig {
    /// Parses the text of an `OPTForCausalLM` `config.json`.
    pub(crate) fn parse(text: &str) -> std::result::Result<Self, super::llama::ParseError> {
        let raw: RawOpt = serde_json::from_str(text).map_err(super::llama::ParseError::Json)?;
        Self::from_raw(raw).map_err(super::llama::ParseError::Invalid)
    }

    fn from_raw(raw: RawOpt) -> Result<Self> {
        let hidden_size = raw.hidden_size.unwrap_or(768);
        let word_embed_proj_dim = match &raw.word_embed_proj_dim {
            None | Some(Value::Null) => hidden_size,
            Some(v) => v.as_i64().ok_or_else(|| {
                invalid(format!("word_embed_proj_dim must be an integer, got {v}"))
            })?,
        };
        let config = OptConfig {
            vocab_size: raw.vocab_size.unwrap_or(50272),
            hidden_size,
            num_hidden_layers: raw.num_hidden_layers.unwrap_or(12),
            ffn_dim: raw.ffn_dim.unwrap_or(3072),
            num_attention_heads: raw.num_attention_heads.unwrap_or(12),
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            do_layer_norm_before: raw.do_layer_norm_before.unwrap_or(true),
            remove_final_layer_norm: raw._remove_final_layer_norm.unwrap_or(false),
            word_embed_proj_dim,
            enable_bias: raw.enable_bias.unwrap_or(true),
            layer_norm_elementwise_affine: raw.layer_norm_elementwise_affine.unwrap_or(true),
            activation_function: raw
                .activation_function
                .as_deref()
                .unwrap_or("relu")
                .parse()?,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(true),
            bos_token_id: first_token_id("bos_token_id", raw.bos_token_id.as_ref(), Some(2))?,
            eos_token_id: first_token_id("eos_token_id", raw.eos_token_id.as_ref(), Some(2))?,
            pad_token_id: first_token_id("pad_token_id", raw.pad_token_id.as_ref(), Some(1))?,
            dtype: raw.dtype.or(raw.torch_dtype),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks sizes and ids: positive sizes, the hidden size a multiple of the heads, special
    /// ids inside the vocabulary.
    pub fn validate(&self) -> Result<()> {
        checks::positive(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("ffn_dim", self.ffn_dim),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
            ("word_embed_proj_dim", self.word_embed_proj_dim),
        ])?;
        checks::multiple_of(
            "hidden_size",
            self.hidden_size,
            "num_attention_heads",
            self.num_attention_heads,
        )?;
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

    /// Whether the word embeddings are projected in and out (`word_embed_proj_dim` differs from
    /// `hidden_size`).
    pub fn projects(&self) -> bool {
        self.word_embed_proj_dim != self.hidden_size
    }

    /// Whether the decoder has a final LayerNorm: pre-LN models unless it was removed.
    pub fn has_final_layer_norm(&self) -> bool {
        self.do_layer_norm_before && !self.remove_final_layer_norm
    }
}
