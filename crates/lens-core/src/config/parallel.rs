//! The configs of transformers 5.9.0's parallel-block decoders, `GPTJConfig` and `PhiConfig`,
//! read into one [`ParallelConfig`] (the two share one decoder: one LayerNorm per block feeding
//! attention and the MLP, which run in parallel off the residual; rotary embeddings on the first
//! `rotary_dim` dimensions of each head; an unembedding with a bias), with each family's own
//! defaults and keys.
//!
//! GPT-J rotates adjacent pairs of features with the base fixed at 10000 and names its width
//! `rotary_dim`. Phi rotates half-split pairs over `int(head_dim * partial_rotary_factor)`
//! dimensions; its rotary settings come from `rope_parameters` (or a legacy `rope_scaling`),
//! else from the top-level `rope_theta` (10000) and `partial_rotary_factor` (0.5), as
//! `PhiConfig.__post_init__` resolves them.

use serde::Deserialize;
use serde_json::Value;

use super::checks;
use super::llama::{first_token_id, invalid, present};
use super::rope::rope_scaling;
use crate::config::{Activation, Rope, RopeScaling};
use crate::error::Result;

/// Which parallel-block architecture a config is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParallelFamily {
    /// `model_type: "gptj"` (`GPTJForCausalLM`): adjacent rotary pairs, no attention biases.
    GptJ,
    /// `model_type: "phi"` (`PhiForCausalLM`, Phi-1, 1.5 and 2): half-split rotary pairs,
    /// attention biases, optional q/k LayerNorms and grouped key/value heads.
    Phi,
}

impl ParallelFamily {
    /// The `model_type` of a `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            ParallelFamily::GptJ => "gptj",
            ParallelFamily::Phi => "phi",
        }
    }

    /// The HuggingFace class.
    pub fn architecture(self) -> &'static str {
        match self {
            ParallelFamily::GptJ => "GPTJForCausalLM",
            ParallelFamily::Phi => "PhiForCausalLM",
        }
    }

    /// The family of a `model_type` or of an `architectures` entry.
    pub fn from_name(name: &str) -> Option<Self> {
        [ParallelFamily::GptJ, ParallelFamily::Phi]
            .into_iter()
            .find(|f| f.model_type() == name || f.architecture() == name)
    }

    /// Whether TransformerLens prepends BOS by default (not for Phi).
    pub fn default_prepend_bos(self) -> bool {
        self == ParallelFamily::GptJ
    }
}

/// A `GPTJForCausalLM` or `PhiForCausalLM` `config.json`, every key with its family's default.
#[derive(Clone, Debug, PartialEq)]
pub struct ParallelConfig {
    /// Which architecture.
    pub family: ParallelFamily,
    /// Vocabulary size.
    pub vocab_size: i64,
    /// Residual stream width (GPT-J's `n_embd`).
    pub hidden_size: i64,
    /// MLP hidden width (GPT-J's `n_inner`, default `4 * n_embd`).
    pub intermediate_size: i64,
    /// Blocks.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key and value heads (Phi may group them; GPT-J never does).
    pub num_key_value_heads: i64,
    /// Width of one head.
    pub head_dim: i64,
    /// The MLP's activation (default `gelu_new` for both).
    pub hidden_act: Activation,
    /// The context length (GPT-J's `n_positions`: its sinusoid table has that many rows).
    pub max_position_embeddings: i64,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// `lm_head.weight` is the token embedding (its bias is the head's own either way).
    pub tie_word_embeddings: bool,
    /// The rotary base and scaling (GPT-J: 10000, unscaled).
    pub rope: Rope,
    /// How many leading dimensions of each head rotate.
    pub rotary_dim: i64,
    /// Phi's per-head LayerNorms of queries and keys (`qk_layernorm`).
    pub qk_layernorm: bool,
    /// Beginning-of-sequence id.
    pub bos_token_id: Option<i64>,
    /// End-of-sequence id.
    pub eos_token_id: Option<i64>,
    /// Padding id.
    pub pad_token_id: Option<i64>,
    /// The checkpoint's dtype as written (`dtype` or `torch_dtype`).
    pub dtype: Option<String>,
}

/// The keys both families' files may carry (GPT-J's under GPT-2-style names, with the
/// attribute-map names accepted too).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawParallel {
    vocab_size: Option<i64>,
    #[serde(alias = "n_embd")]
    hidden_size: Option<i64>,
    #[serde(alias = "n_inner", deserialize_with = "present")]
    intermediate_size: Option<Value>,
    #[serde(alias = "n_layer")]
    num_hidden_layers: Option<i64>,
    #[serde(alias = "n_head")]
    num_attention_heads: Option<i64>,
    num_key_value_heads: Option<i64>,
    head_dim: Option<i64>,
    #[serde(alias = "activation_function")]
    hidden_act: Option<String>,
    #[serde(alias = "n_positions")]
    max_position_embeddings: Option<i64>,
    #[serde(alias = "layer_norm_epsilon")]
    layer_norm_eps: Option<f64>,
    tie_word_embeddings: Option<bool>,
    #[serde(deserialize_with = "present")]
    rotary_dim: Option<Value>,
    partial_rotary_factor: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<Value>,
    rope_scaling: Option<Value>,
    qk_layernorm: Option<bool>,
    #[serde(deserialize_with = "present")]
    bos_token_id: Option<Value>,
    #[serde(deserialize_with = "present")]
    eos_token_id: Option<Value>,
    #[serde(deserialize_with = "present")]
    pad_token_id: Option<Value>,
    dtype: Option<String>,
    torch_dtype: Option<String>,
}

/// An integer key that may be absent (`None`) or `null` (`Some(None)`).
fn optional_int(key: &str, value: &Option<Value>) -> Result<Option<Option<i64>>> {
    match value {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) => v
            .as_i64()
            .map(|n| Some(Some(n)))
            .ok_or_else(|| invalid(format!("{key} must be an integer, got {v}"))),
    }
}

fn object<'a>(
    key: &str,
    value: &'a Option<Value>,
) -> Result<Option<&'a serde_json::Map<String, Value>>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(invalid(format!("{key} must be an object, got {other}"))),
    }
}

impl ParallelConfig {
    /// Parses the text of a `config.json` of `family`.
    pub(crate) fn parse(
        family: ParallelFamily,
        text: &str,
    ) -> std::result::Result<Self, super::llama::ParseError> {
        let raw: RawParallel =
            serde_json::from_str(text).map_err(super::llama::ParseError::Json)?;
        Self::from_raw(family, raw).map_err(super::llama::ParseError::Invalid)
    }

    fn from_raw(family: ParallelFamily, raw: RawParallel) -> Result<Self> {
        let gptj = family == ParallelFamily::GptJ;
        let hidden_size = raw.hidden_size.unwrap_or(if gptj { 4096 } else { 2048 });
        let heads = raw
            .num_attention_heads
            .unwrap_or(if gptj { 16 } else { 32 });
        if heads <= 0 {
            return Err(invalid(format!(
                "num_attention_heads must be positive, got {heads}"
            )));
        }
        let head_dim = match family {
            ParallelFamily::GptJ => hidden_size / heads,
            ParallelFamily::Phi => raw.head_dim.unwrap_or(hidden_size / heads),
        };
        let intermediate_size = match (family, optional_int("n_inner", &raw.intermediate_size)?) {
            (ParallelFamily::GptJ, None | Some(None)) => 4 * hidden_size,
            (ParallelFamily::Phi, None) => 8192,
            (ParallelFamily::Phi, Some(None)) => {
                return Err(invalid(
                    "intermediate_size must be an integer, got null".into(),
                ))
            }
            (_, Some(Some(n))) => n,
        };
        let (rope, rotary_dim) = match family {
            ParallelFamily::GptJ => {
                let rotary_dim = match optional_int("rotary_dim", &raw.rotary_dim)? {
                    None => 64,
                    Some(Some(n)) => n,
                    Some(None) => {
                        return Err(invalid(
                            "rotary_dim must be an integer (GPTJConfig refuses null)".into(),
                        ))
                    }
                };
                let rope = Rope {
                    theta: 10000.0,
                    scaling: RopeScaling::None,
                };
                (rope, rotary_dim)
            }
            ParallelFamily::Phi => {
                let scaling = object("rope_scaling", &raw.rope_scaling)?.filter(|m| !m.is_empty());
                let parameters = scaling.or(object("rope_parameters", &raw.rope_parameters)?);
                let get = |key: &str| parameters.and_then(|p| p.get(key)).and_then(Value::as_f64);
                let theta = get("rope_theta").or(raw.rope_theta).unwrap_or(10000.0);
                let factor = get("partial_rotary_factor")
                    .or(raw.partial_rotary_factor)
                    .unwrap_or(0.5);
                let rope = Rope {
                    theta,
                    scaling: rope_scaling(parameters)?,
                };
                (rope, (head_dim as f64 * factor) as i64)
            }
        };
        let (bos, eos) = if gptj { (50256, 50256) } else { (1, 2) };
        let config = ParallelConfig {
            family,
            vocab_size: raw.vocab_size.unwrap_or(if gptj { 50400 } else { 51200 }),
            hidden_size,
            intermediate_size,
            num_hidden_layers: raw.num_hidden_layers.unwrap_or(if gptj { 28 } else { 24 }),
            num_attention_heads: heads,
            num_key_value_heads: match family {
                ParallelFamily::GptJ => heads,
                ParallelFamily::Phi => raw.num_key_value_heads.unwrap_or(heads),
            },
            head_dim,
            hidden_act: raw.hidden_act.as_deref().unwrap_or("gelu_new").parse()?,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            layer_norm_eps: raw.layer_norm_eps.unwrap_or(1e-5),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            rope,
            rotary_dim,
            qk_layernorm: !gptj && raw.qk_layernorm.unwrap_or(false),
            bos_token_id: first_token_id("bos_token_id", raw.bos_token_id.as_ref(), Some(bos))?,
            eos_token_id: first_token_id("eos_token_id", raw.eos_token_id.as_ref(), Some(eos))?,
            pad_token_id: first_token_id("pad_token_id", raw.pad_token_id.as_ref(), None)?,
            dtype: raw.dtype.or(raw.torch_dtype),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks sizes and ids: positive sizes, the hidden size a multiple of the heads (GPT-J),
    /// the query heads a multiple of the key/value heads, an even rotary width within the
    /// head (an odd one fails in transformers too), a positive epsilon, special ids inside the
    /// vocabulary.
    pub fn validate(&self) -> Result<()> {
        checks::positive(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ])?;
        if self.family == ParallelFamily::GptJ {
            checks::multiple_of(
                "n_embd",
                self.hidden_size,
                "n_head",
                self.num_attention_heads,
            )?;
        }
        checks::multiple_of(
            "num_attention_heads",
            self.num_attention_heads,
            "num_key_value_heads",
            self.num_key_value_heads,
        )?;
        if self.rotary_dim < 0 || self.rotary_dim % 2 != 0 || self.rotary_dim > self.head_dim {
            return Err(invalid(format!(
                "the rotary width ({}) must be even and at most head_dim ({})",
                self.rotary_dim, self.head_dim
            )));
        }
        checks::positive_finite("layer_norm_eps", self.layer_norm_eps)?;
        checks::positive_finite("rope_theta", self.rope.theta)?;
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

    /// Query heads per key/value head.
    pub fn gqa_ratio(&self) -> i64 {
        self.num_attention_heads / self.num_key_value_heads
    }
}
