//! Typed HuggingFace configs (`config.json`).
//!
//! [`HfConfig::from_file`] reads a `config.json`, decides the architecture from its
//! `model_type` (or, when that is absent, its `architectures`) and parses it into the typed
//! config of that architecture, with HuggingFace's default for every key the file leaves out.

use std::path::Path;
use std::str::FromStr;

use serde::Deserialize;
use tch::Tensor;

use crate::error::{LensError, Result};

mod checks;
mod gpt_neo;
mod gpt_neox;
mod llama;
mod opt;
mod parallel;
mod rope;

pub use gpt_neo::GptNeoConfig;
pub use gpt_neox::GptNeoxConfig;
pub use llama::{LlamaConfig, LlamaFamily, NormPlacement, QkNorm, RmsScale};
pub use opt::{OptConfig, OPT_POSITION_OFFSET};
pub use parallel::{ParallelConfig, ParallelFamily};
pub use rope::{LongRope, Rope, RopeScaling};

/// The architectures [`HfConfig`] understands, as `model_type (HF class)`.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "gpt2 (GPT2LMHeadModel)",
    "gpt_neox (GPTNeoXForCausalLM)",
    "gptj (GPTJForCausalLM)",
    "gpt_neo (GPTNeoForCausalLM)",
    "opt (OPTForCausalLM)",
    "phi (PhiForCausalLM)",
    "llama (LlamaForCausalLM)",
    "mistral (MistralForCausalLM)",
    "qwen2 (Qwen2ForCausalLM)",
    "qwen3 (Qwen3ForCausalLM)",
    "gemma (GemmaForCausalLM)",
    "gemma2 (Gemma2ForCausalLM)",
    "gemma3_text (Gemma3ForCausalLM)",
    "phi3 (Phi3ForCausalLM)",
    "olmo2 (Olmo2ForCausalLM)",
];

/// A parsed `config.json`, one variant per supported architecture.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
// A config is parsed once per load and held by the model: boxing the larger variants would buy
// nothing but indirection.
#[allow(clippy::large_enum_variant)]
pub enum HfConfig {
    /// `model_type: "gpt2"` (`GPT2LMHeadModel`).
    Gpt2(Gpt2Config),
    /// `model_type` `llama`, `mistral`, `qwen2`, `qwen3`, `gemma`, `gemma2`, `gemma3_text`,
    /// `phi3` or `olmo2` (see [`LlamaFamily`]).
    Llama(LlamaConfig),
    /// `model_type: "gpt_neox"` (`GPTNeoXForCausalLM`: Pythia, GPT-NeoX-20B).
    GptNeox(GptNeoxConfig),
    /// `model_type` `gptj` or `phi` (see [`ParallelFamily`]).
    Parallel(ParallelConfig),
    /// `model_type: "gpt_neo"` (`GPTNeoForCausalLM`).
    GptNeo(GptNeoConfig),
    /// `model_type: "opt"` (`OPTForCausalLM`).
    Opt(OptConfig),
}

impl HfConfig {
    /// Reads and parses a `config.json`.
    ///
    /// Errors: the file cannot be read ([`LensError::Io`]), is not valid JSON or has a value
    /// of the wrong type ([`LensError::MalformedJson`]), is for another architecture
    /// ([`LensError::UnsupportedArchitecture`]), or has inconsistent values
    /// ([`LensError::InvalidConfig`], [`LensError::UnknownActivation`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| LensError::io(path, e))?;
        Self::parse(&text, Some(path))
    }

    /// Parses the text of a `config.json`; see [`HfConfig::from_file`].
    pub fn from_json(text: &str) -> Result<Self> {
        Self::parse(text, None)
    }

    fn parse(text: &str, path: Option<&Path>) -> Result<Self> {
        let malformed = |message: String| LensError::MalformedJson {
            path: path.map(Path::to_path_buf),
            what: "config",
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
        let Some(object) = value.as_object() else {
            return Err(malformed("expected a JSON object".to_string()));
        };
        let model_type = object.get("model_type").and_then(|v| v.as_str());
        let architectures: Vec<&str> = object
            .get("architectures")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let with_path = |error: LensError| match error {
            LensError::InvalidConfig { message, .. } => LensError::InvalidConfig {
                path: path.map(Path::to_path_buf),
                message,
            },
            other => other,
        };
        let llama = match model_type {
            Some(t) => LlamaFamily::from_name(t),
            None => architectures.iter().find_map(|a| LlamaFamily::from_name(a)),
        };
        if let Some(family) = llama {
            return match LlamaConfig::parse(family, text) {
                Ok(config) => Ok(HfConfig::Llama(config)),
                Err(llama::ParseError::Json(e)) => Err(malformed(e.to_string())),
                Err(llama::ParseError::Invalid(e)) => Err(with_path(e)),
            };
        }
        let parallel = match model_type {
            Some(t) => ParallelFamily::from_name(t),
            None => architectures
                .iter()
                .find_map(|a| ParallelFamily::from_name(a)),
        };
        if let Some(family) = parallel {
            return match ParallelConfig::parse(family, text) {
                Ok(config) => Ok(HfConfig::Parallel(config)),
                Err(llama::ParseError::Json(e)) => Err(malformed(e.to_string())),
                Err(llama::ParseError::Invalid(e)) => Err(with_path(e)),
            };
        }
        let is_opt = match model_type {
            Some(t) => t == "opt",
            None => architectures.contains(&"OPTForCausalLM"),
        };
        if is_opt {
            return match OptConfig::parse(text) {
                Ok(config) => Ok(HfConfig::Opt(config)),
                Err(llama::ParseError::Json(e)) => Err(malformed(e.to_string())),
                Err(llama::ParseError::Invalid(e)) => Err(with_path(e)),
            };
        }
        let is_neo = match model_type {
            Some(t) => t == "gpt_neo",
            None => architectures.contains(&"GPTNeoForCausalLM"),
        };
        if is_neo {
            return match GptNeoConfig::parse(text) {
                Ok(config) => Ok(HfConfig::GptNeo(config)),
                Err(llama::ParseError::Json(e)) => Err(malformed(e.to_string())),
                Err(llama::ParseError::Invalid(e)) => Err(with_path(e)),
            };
        }
        let is_neox = match model_type {
            Some(t) => t == "gpt_neox",
            None => architectures.contains(&"GPTNeoXForCausalLM"),
        };
        if is_neox {
            return match GptNeoxConfig::parse(text) {
                Ok(config) => Ok(HfConfig::GptNeox(config)),
                Err(llama::ParseError::Json(e)) => Err(malformed(e.to_string())),
                Err(llama::ParseError::Invalid(e)) => Err(with_path(e)),
            };
        }
        let is_gpt2 = match model_type {
            Some(t) => t == "gpt2",
            None => architectures
                .iter()
                .any(|a| matches!(*a, "GPT2LMHeadModel" | "GPT2Model")),
        };
        if !is_gpt2 {
            let found = match (model_type, architectures.is_empty()) {
                (Some(t), true) => format!("model_type '{t}'"),
                (Some(t), false) => format!("model_type '{t}' ({})", architectures.join(", ")),
                (None, false) => format!("architectures [{}]", architectures.join(", ")),
                (None, true) => "a config with neither model_type nor architectures".to_string(),
            };
            return Err(LensError::UnsupportedArchitecture {
                found,
                supported: SUPPORTED_ARCHITECTURES
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            });
        }
        let raw: RawGpt2 = serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
        let config = Gpt2Config::from_raw(raw)?;
        config.validate().map_err(with_path)?;
        Ok(HfConfig::Gpt2(config))
    }

    /// The HuggingFace class name of the architecture, e.g. `GPT2LMHeadModel`.
    pub fn architecture(&self) -> &'static str {
        match self {
            HfConfig::Gpt2(_) => "GPT2LMHeadModel",
            HfConfig::Llama(c) => c.family.architecture(),
            HfConfig::GptNeox(_) => "GPTNeoXForCausalLM",
            HfConfig::Parallel(c) => c.family.architecture(),
            HfConfig::GptNeo(_) => "GPTNeoForCausalLM",
            HfConfig::Opt(_) => "OPTForCausalLM",
        }
    }

    /// Whether the model normalises with RMSNorm (no mean removed, so weight processing does not
    /// centre the weights writing to the residual stream) rather than LayerNorm.
    pub fn uses_rms_norm(&self) -> bool {
        matches!(self, HfConfig::Llama(_))
    }

    /// What decides the weight processing TransformerLens applies to this model (see
    /// [`crate::processing::applicable`]).
    pub fn processing_traits(&self) -> crate::processing::ProcessingTraits<'static> {
        let llama = self.as_llama();
        crate::processing::ProcessingTraits {
            architecture: self.architecture(),
            rms_norm: self.uses_rms_norm(),
            norms_after_sublayers: llama.is_some_and(|c| c.norm_placement == NormPlacement::After)
                || self.as_opt().is_some_and(|c| !c.do_layer_norm_before),
            logits_soft_capped: llama.is_some_and(|c| c.final_logit_softcapping.is_some()),
            no_final_norm: self.as_opt().is_some_and(|c| !c.has_final_layer_norm()),
        }
    }

    /// The GPT-2 config, when this is one.
    pub fn as_gpt2(&self) -> Option<&Gpt2Config> {
        match self {
            HfConfig::Gpt2(c) => Some(c),
            _ => None,
        }
    }

    /// The GPT-NeoX config, when this is one.
    pub fn as_gpt_neox(&self) -> Option<&GptNeoxConfig> {
        match self {
            HfConfig::GptNeox(c) => Some(c),
            _ => None,
        }
    }

    /// The OPT config, when this is one.
    pub fn as_opt(&self) -> Option<&OptConfig> {
        match self {
            HfConfig::Opt(c) => Some(c),
            _ => None,
        }
    }

    /// The GPT-Neo config, when this is one.
    pub fn as_gpt_neo(&self) -> Option<&GptNeoConfig> {
        match self {
            HfConfig::GptNeo(c) => Some(c),
            _ => None,
        }
    }

    /// The GPT-J or Phi config, when this is one.
    pub fn as_parallel(&self) -> Option<&ParallelConfig> {
        match self {
            HfConfig::Parallel(c) => Some(c),
            _ => None,
        }
    }

    /// The Llama-family config, when this is one.
    pub fn as_llama(&self) -> Option<&LlamaConfig> {
        match self {
            HfConfig::Llama(c) => Some(c),
            _ => None,
        }
    }

    /// The context length the model is used with (TransformerLens's `n_ctx`).
    pub fn n_ctx(&self) -> i64 {
        match self {
            HfConfig::Gpt2(c) => c.n_ctx,
            HfConfig::Llama(c) => c.max_position_embeddings,
            HfConfig::GptNeox(c) => c.max_position_embeddings,
            HfConfig::Parallel(c) => c.max_position_embeddings,
            HfConfig::GptNeo(c) => c.max_position_embeddings,
            HfConfig::Opt(c) => c.max_position_embeddings,
        }
    }

    /// The vocabulary size.
    pub fn vocab_size(&self) -> i64 {
        match self {
            HfConfig::Gpt2(c) => c.vocab_size,
            HfConfig::Llama(c) => c.vocab_size,
            HfConfig::GptNeox(c) => c.vocab_size,
            HfConfig::Parallel(c) => c.vocab_size,
            HfConfig::GptNeo(c) => c.vocab_size,
            HfConfig::Opt(c) => c.vocab_size,
        }
    }

    /// Whether text is tokenized with BOS prepended when a call does not say (TransformerLens's
    /// `default_prepend_bos`: true, except for Qwen2, Qwen3, GPT-NeoX and Phi).
    pub fn default_prepend_bos(&self) -> bool {
        match self {
            HfConfig::Gpt2(_) => true,
            HfConfig::Llama(c) => c.family.default_prepend_bos(),
            HfConfig::GptNeox(_) => false,
            HfConfig::Parallel(c) => c.family.default_prepend_bos(),
            HfConfig::GptNeo(_) | HfConfig::Opt(_) => true,
        }
    }

    /// The beginning-of-sequence token id, if any.
    pub fn bos_token_id(&self) -> Option<i64> {
        match self {
            HfConfig::Gpt2(c) => c.bos_token_id,
            HfConfig::Llama(c) => c.bos_token_id,
            HfConfig::GptNeox(c) => c.bos_token_id,
            HfConfig::Parallel(c) => c.bos_token_id,
            HfConfig::GptNeo(c) => c.bos_token_id,
            HfConfig::Opt(c) => c.bos_token_id,
        }
    }

    /// The end-of-sequence token id, if any.
    pub fn eos_token_id(&self) -> Option<i64> {
        match self {
            HfConfig::Gpt2(c) => c.eos_token_id,
            HfConfig::Llama(c) => c.eos_token_ids.first().copied(),
            HfConfig::GptNeox(c) => c.eos_token_id,
            HfConfig::Parallel(c) => c.eos_token_id,
            HfConfig::GptNeo(c) => c.eos_token_id,
            HfConfig::Opt(c) => c.eos_token_id,
        }
    }

    /// The padding token id the config names, if any (GPT-2's is `null`).
    pub fn pad_token_id(&self) -> Option<i64> {
        match self {
            HfConfig::Gpt2(c) => c.pad_token_id,
            HfConfig::Llama(c) => c.pad_token_id,
            HfConfig::GptNeox(c) => c.pad_token_id,
            HfConfig::Parallel(c) => c.pad_token_id,
            HfConfig::GptNeo(c) => c.pad_token_id,
            HfConfig::Opt(c) => c.pad_token_id,
        }
    }
}

/// HuggingFace's `GPT2Config`: every key with HuggingFace's default.
///
/// Dimensions are `i64` because that is what tch shapes use.
#[derive(Clone, Debug, PartialEq)]
pub struct Gpt2Config {
    /// Vocabulary size (default 50257).
    pub vocab_size: i64,
    /// Rows of the positional embedding `wpe` (default 1024).
    pub n_positions: i64,
    /// Context length; HF keeps it only as an extra key. Defaults to `n_positions`.
    pub n_ctx: i64,
    /// Residual stream width `d_model` (default 768).
    pub n_embd: i64,
    /// Number of blocks (default 12).
    pub n_layer: i64,
    /// Number of attention heads (default 12).
    pub n_head: i64,
    /// MLP hidden width; `None` means `4 * n_embd` (see [`Gpt2Config::d_mlp`]).
    pub n_inner: Option<i64>,
    /// MLP activation (default `gelu_new`).
    pub activation_function: Activation,
    /// Residual dropout (default 0.1; unused at inference).
    pub resid_pdrop: f64,
    /// Embedding dropout (default 0.1; unused at inference).
    pub embd_pdrop: f64,
    /// Attention dropout (default 0.1; unused at inference).
    pub attn_pdrop: f64,
    /// LayerNorm epsilon (default 1e-5).
    pub layer_norm_epsilon: f64,
    /// Std of HF's weight initialisation (default 0.02).
    pub initializer_range: f64,
    /// Divide attention scores by `sqrt(d_head)` (default true).
    pub scale_attn_weights: bool,
    /// Also divide attention scores of layer `l` by `l + 1` (default false).
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Compute attention scores in fp32 with the scale folded in first (default false).
    pub reorder_and_upcast_attn: bool,
    /// `lm_head.weight` is `wte.weight` (default true).
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence id (default 50256; `null` in the file gives `None`).
    pub bos_token_id: Option<i64>,
    /// End-of-sequence id (default 50256; `null` in the file gives `None`).
    pub eos_token_id: Option<i64>,
    /// Padding id (default `None`).
    pub pad_token_id: Option<i64>,
    /// The checkpoint's dtype as written by HF (`dtype` or older `torch_dtype`), e.g. `float32`.
    pub dtype: Option<String>,
    /// The `architectures` list of the file (empty when absent).
    pub architectures: Vec<String>,
}

impl Default for Gpt2Config {
    /// HuggingFace's `GPT2Config()` (the 124M `gpt2` model).
    fn default() -> Self {
        Gpt2Config::from_raw(RawGpt2::default()).expect("the default activation is known")
    }
}

impl Gpt2Config {
    /// Width of one attention head, `n_embd / n_head`.
    pub fn d_head(&self) -> i64 {
        self.n_embd / self.n_head
    }

    /// MLP hidden width: `n_inner`, or `4 * n_embd` when it is `None`.
    pub fn d_mlp(&self) -> i64 {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Checks that the values are consistent: positive sizes, `n_embd` divisible by `n_head`,
    /// `n_ctx <= n_positions`, a positive finite epsilon, special token ids inside the vocabulary,
    /// and no cross-attention (an encoder-decoder setting that GPT2LMHeadModel checkpoints for
    /// language modelling do not use).
    pub fn validate(&self) -> Result<()> {
        let invalid = |message: String| {
            Err(LensError::InvalidConfig {
                path: None,
                message,
            })
        };
        for (name, value) in [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_ctx", self.n_ctx),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
        ] {
            if value <= 0 {
                return invalid(format!("{name} must be positive, got {value}"));
            }
        }
        if let Some(n_inner) = self.n_inner {
            if n_inner <= 0 {
                return invalid(format!("n_inner must be positive or null, got {n_inner}"));
            }
        }
        if self.n_embd % self.n_head != 0 {
            return invalid(format!(
                "n_embd ({}) must be divisible by n_head ({})",
                self.n_embd, self.n_head
            ));
        }
        if self.n_ctx > self.n_positions {
            return invalid(format!(
                "n_ctx ({}) exceeds n_positions ({}), the rows of the positional embedding",
                self.n_ctx, self.n_positions
            ));
        }
        if !(self.layer_norm_epsilon.is_finite() && self.layer_norm_epsilon > 0.0) {
            return invalid(format!(
                "layer_norm_epsilon must be positive and finite, got {}",
                self.layer_norm_epsilon
            ));
        }
        for (name, id) in [
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
            ("pad_token_id", self.pad_token_id),
        ] {
            if let Some(id) = id {
                if id < 0 || id >= self.vocab_size {
                    return invalid(format!(
                        "{name} ({id}) is outside the vocabulary (vocab_size {})",
                        self.vocab_size
                    ));
                }
            }
        }
        Ok(())
    }

    fn from_raw(raw: RawGpt2) -> Result<Self> {
        if raw.add_cross_attention {
            return Err(LensError::InvalidConfig {
                path: None,
                message: "add_cross_attention is true; cross-attention GPT-2 is not supported"
                    .to_string(),
            });
        }
        Ok(Gpt2Config {
            vocab_size: raw.vocab_size,
            n_positions: raw.n_positions,
            n_ctx: raw.n_ctx.unwrap_or(raw.n_positions),
            n_embd: raw.n_embd,
            n_layer: raw.n_layer,
            n_head: raw.n_head,
            n_inner: raw.n_inner,
            activation_function: raw.activation_function.parse()?,
            resid_pdrop: raw.resid_pdrop,
            embd_pdrop: raw.embd_pdrop,
            attn_pdrop: raw.attn_pdrop,
            layer_norm_epsilon: raw.layer_norm_epsilon,
            initializer_range: raw.initializer_range,
            scale_attn_weights: raw.scale_attn_weights,
            scale_attn_by_inverse_layer_idx: raw.scale_attn_by_inverse_layer_idx,
            reorder_and_upcast_attn: raw.reorder_and_upcast_attn,
            tie_word_embeddings: raw.tie_word_embeddings,
            bos_token_id: raw.bos_token_id,
            eos_token_id: raw.eos_token_id,
            pad_token_id: raw.pad_token_id,
            dtype: raw.dtype.or(raw.torch_dtype),
            architectures: raw.architectures.unwrap_or_default(),
        })
    }
}

/// `config.json` as written, with HF's defaults (transformers `GPT2Config.__init__`).
#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawGpt2 {
    vocab_size: i64,
    n_positions: i64,
    n_ctx: Option<i64>,
    n_embd: i64,
    n_layer: i64,
    n_head: i64,
    n_inner: Option<i64>,
    activation_function: String,
    resid_pdrop: f64,
    embd_pdrop: f64,
    attn_pdrop: f64,
    layer_norm_epsilon: f64,
    initializer_range: f64,
    scale_attn_weights: bool,
    scale_attn_by_inverse_layer_idx: bool,
    reorder_and_upcast_attn: bool,
    tie_word_embeddings: bool,
    add_cross_attention: bool,
    bos_token_id: Option<i64>,
    eos_token_id: Option<i64>,
    pad_token_id: Option<i64>,
    dtype: Option<String>,
    torch_dtype: Option<String>,
    architectures: Option<Vec<String>>,
}

impl Default for RawGpt2 {
    fn default() -> Self {
        RawGpt2 {
            vocab_size: 50257,
            n_positions: 1024,
            n_ctx: None,
            n_embd: 768,
            n_layer: 12,
            n_head: 12,
            n_inner: None,
            activation_function: "gelu_new".to_string(),
            resid_pdrop: 0.1,
            embd_pdrop: 0.1,
            attn_pdrop: 0.1,
            layer_norm_epsilon: 1e-5,
            initializer_range: 0.02,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            reorder_and_upcast_attn: false,
            tie_word_embeddings: true,
            add_cross_attention: false,
            bos_token_id: Some(50256),
            eos_token_id: Some(50256),
            pad_token_id: None,
            dtype: None,
            torch_dtype: None,
            architectures: None,
        }
    }
}

/// An activation function named by HF's `activation_function` (transformers `ACT2FN`).
///
/// [`Activation::apply`] evaluates it with the same operations, in the same order, as the
/// HuggingFace module, so both models of this workspace compute it identically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Activation {
    /// `gelu`: exact GELU, `torch.nn.functional.gelu(x)`.
    Gelu,
    /// `gelu_python`: exact GELU written out, `x * 0.5 * (1 + erf(x / sqrt(2)))`.
    GeluPython,
    /// `gelu_new` (GPT-2): `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`.
    GeluNew,
    /// `gelu_fast`: `0.5 * x * (1 + tanh(x * 0.7978845608 * (1 + 0.044715 * x * x)))`.
    GeluFast,
    /// `gelu_pytorch_tanh`: `torch.nn.functional.gelu(x, approximate="tanh")`.
    GeluPytorchTanh,
    /// `gelu_accurate`: `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`.
    GeluAccurate,
    /// `gelu_10`: exact GELU clipped to `[-10, 10]`.
    Gelu10,
    /// `quick_gelu`: `x * sigmoid(1.702 * x)`.
    QuickGelu,
    /// `relu`.
    Relu,
    /// `relu2`: `relu(x)^2`.
    Relu2,
    /// `relu6`: `min(max(x, 0), 6)`.
    Relu6,
    /// `leaky_relu` with slope 0.01.
    LeakyRelu,
    /// `silu` (also written `swish`): `x * sigmoid(x)`.
    Silu,
    /// `mish`: `x * tanh(softplus(x))`.
    Mish,
    /// `tanh`.
    Tanh,
    /// `sigmoid`.
    Sigmoid,
    /// `linear`: the identity.
    Linear,
}

impl Activation {
    /// Every accepted name, in the order of [`Activation`]'s variants (`swish` last, an alias).
    pub const NAMES: &'static [&'static str] = &[
        "gelu",
        "gelu_python",
        "gelu_new",
        "gelu_fast",
        "gelu_pytorch_tanh",
        "gelu_accurate",
        "gelu_10",
        "quick_gelu",
        "relu",
        "relu2",
        "relu6",
        "leaky_relu",
        "silu",
        "mish",
        "tanh",
        "sigmoid",
        "linear",
        "swish",
    ];

    /// The canonical HF name (`silu` for both `silu` and `swish`).
    pub fn name(self) -> &'static str {
        match self {
            Activation::Gelu => "gelu",
            Activation::GeluPython => "gelu_python",
            Activation::GeluNew => "gelu_new",
            Activation::GeluFast => "gelu_fast",
            Activation::GeluPytorchTanh => "gelu_pytorch_tanh",
            Activation::GeluAccurate => "gelu_accurate",
            Activation::Gelu10 => "gelu_10",
            Activation::QuickGelu => "quick_gelu",
            Activation::Relu => "relu",
            Activation::Relu2 => "relu2",
            Activation::Relu6 => "relu6",
            Activation::LeakyRelu => "leaky_relu",
            Activation::Silu => "silu",
            Activation::Mish => "mish",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::Linear => "linear",
        }
    }

    /// Applies the activation to a floating-point tensor, as HuggingFace computes it.
    pub fn apply(self, x: &Tensor) -> Tensor {
        let sqrt_2_over_pi = (2.0f64 / std::f64::consts::PI).sqrt();
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluPython => x * 0.5 * ((x / 2.0f64.sqrt()).erf() + 1.0),
            Activation::GeluNew | Activation::GeluAccurate => {
                let inner = (x + x.pow_tensor_scalar(3.0) * 0.044715) * sqrt_2_over_pi;
                (x * 0.5) * (inner.tanh() + 1.0)
            }
            Activation::GeluFast => {
                let inner = (x * 0.7978845608) * ((x * 0.044715) * x + 1.0);
                (x * 0.5) * (inner.tanh() + 1.0)
            }
            Activation::GeluPytorchTanh => x.gelu("tanh"),
            Activation::Gelu10 => x.gelu("none").clamp(-10.0, 10.0),
            Activation::QuickGelu => x * (x * 1.702).sigmoid(),
            Activation::Relu => x.relu(),
            Activation::Relu2 => x.relu().square(),
            Activation::Relu6 => x.relu6(),
            Activation::LeakyRelu => x.leaky_relu(),
            Activation::Silu => x.silu(),
            Activation::Mish => x.mish(),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => x.sigmoid(),
            Activation::Linear => x.shallow_clone(),
        }
    }
}

impl FromStr for Activation {
    type Err = LensError;

    fn from_str(name: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_python" => Activation::GeluPython,
            "gelu_new" => Activation::GeluNew,
            "gelu_fast" => Activation::GeluFast,
            "gelu_pytorch_tanh" => Activation::GeluPytorchTanh,
            "gelu_accurate" => Activation::GeluAccurate,
            "gelu_10" => Activation::Gelu10,
            "quick_gelu" => Activation::QuickGelu,
            "relu" => Activation::Relu,
            "relu2" => Activation::Relu2,
            "relu6" => Activation::Relu6,
            "leaky_relu" => Activation::LeakyRelu,
            "silu" | "swish" => Activation::Silu,
            "mish" => Activation::Mish,
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            "linear" => Activation::Linear,
            other => {
                return Err(LensError::UnknownActivation {
                    name: other.to_string(),
                    known: Activation::NAMES.iter().map(|s| s.to_string()).collect(),
                })
            }
        })
    }
}

impl std::fmt::Display for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
