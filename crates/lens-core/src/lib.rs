//! What the workspace's two models share besides hooks: finding a checkpoint, its typed
//! HuggingFace config, its safetensors weights, and its tokenizer with TransformerLens
//! semantics.
//!
//! * [`source`]: [`ModelSource::resolve`] turns a name into files: a local directory in
//!   HuggingFace layout, an embedded model of `models-cache/` (default [`DEFAULT_MODEL`]), or a
//!   HuggingFace hub id through the hub's standard cache (shared with Python's
//!   `huggingface_hub`), downloading with `hf-hub` unless offline.
//! * [`config`]: [`HfConfig`] parses `config.json` (GPT-2 so far) with HuggingFace's defaults.
//! * [`weights`]: [`Weights`] memory-maps safetensors files (sharded or not) into tch tensors.
//! * [`model`]: the [`model::LensModel`] trait both models implement, with the options and
//!   errors they share; [`generation`]: the generation loop and sampler they share.
//! * [`tokenizer`]: [`Tokenizer`] gives `to_tokens`, `to_string`, `to_str_tokens`,
//!   `to_single_token` with TransformerLens's defaults (BOS prepended, right padding,
//!   truncation to `n_ctx`) and an attention mask that never masks GPT-2's BOS.
//!
//! [`load`] does all four:
//!
//! ```no_run
//! use lens_core::{load, LoadOptions, DEFAULT_MODEL};
//!
//! let model = load(DEFAULT_MODEL, &LoadOptions::default())?;
//! let gpt2 = model.config.as_gpt2().expect("tiny-gpt2 is a GPT-2");
//! let wte = model
//!     .weights
//!     .get_shaped("transformer.wte.weight", &[gpt2.vocab_size, gpt2.n_embd])?;
//! let tokenizer = model.tokenizer.as_ref().expect("tiny-gpt2 ships tokenizer.json");
//! let tokens = tokenizer.to_tokens(&["Hello world"], None, None, true)?;
//! assert_eq!(tokens.ids.size(), vec![1, 3]); // BOS, "Hello", " world"
//! # let _ = wte;
//! # Ok::<(), lens_core::LensError>(())
//! ```

pub mod allocator;
pub mod circuits;
pub mod config;
mod error;
pub mod factored;
pub mod generation;
pub mod inspect;
pub mod layer_stacks;
pub mod layout;
pub mod model;
pub mod patching;
pub mod processing;
pub mod source;
pub mod tl_params;
pub mod tokenizer;
pub mod weight_map;
pub mod weights;

pub use config::{
    Activation, Gpt2Config, GptNeoConfig, GptNeoxConfig, HfConfig, LlamaConfig, LlamaFamily,
    OptConfig, ParallelConfig, ParallelFamily, Rope, RopeScaling, OPT_POSITION_OFFSET,
    SUPPORTED_ARCHITECTURES,
};
pub use error::{LensError, Result};
pub use source::{
    ModelFiles, ModelSource, Origin, ResolveOptions, DEFAULT_ENDPOINT, DEFAULT_MODEL,
};
pub use tokenizer::{
    attention_mask_from_ids, Ids, PaddingSide, SpecialToken, SpecialTokenNames, TokenInput,
    Tokenizer, TokenizerOptions, Tokens,
};
pub use weights::Weights;

/// How [`load`] finds and loads a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Where to look for the model.
    pub resolve: ResolveOptions,
    /// Convert floating-point weights to this kind (`None`: keep the checkpoint's).
    pub kind: Option<tch::Kind>,
    /// Device for the weights.
    pub device: tch::Device,
    /// Tokenizer defaults; special ids and `n_ctx` left `None` are taken from the config.
    pub tokenizer: TokenizerOptions,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            resolve: ResolveOptions::default(),
            kind: None,
            device: tch::Device::Cpu,
            tokenizer: TokenizerOptions::default(),
        }
    }
}

/// A resolved and loaded model: config, weights, tokenizer.
#[derive(Debug)]
pub struct LoadedModel {
    /// The parsed `config.json`.
    pub config: HfConfig,
    /// Every tensor of the checkpoint.
    pub weights: Weights,
    /// The tokenizer, when the model has a `tokenizer.json`.
    pub tokenizer: Option<Tokenizer>,
    /// Where everything came from.
    pub files: ModelFiles,
}

/// The tokenizer of a model's files (`None` without a `tokenizer.json`), its special tokens
/// resolved as [`Tokenizer::from_model_files`] does: `given`'s, else the `tokenizer_config.json`'s,
/// else `config`'s.
pub fn load_tokenizer(
    files: &ModelFiles,
    config: &HfConfig,
    given: &TokenizerOptions,
) -> Result<Option<Tokenizer>> {
    let Some(path) = &files.tokenizer else {
        return Ok(None);
    };
    let names = match &files.tokenizer_config {
        Some(file) => SpecialTokenNames::read(file)?,
        None => SpecialTokenNames::default(),
    };
    let from_config = TokenizerOptions::from_config(config);
    Tokenizer::from_model_files(path, &names, given, &from_config).map(Some)
}

/// Resolves `model` ([`ModelSource::resolve`]) and loads its config, weights and tokenizer.
///
/// The tokenizer is parsed on a thread of its own while the weights are read: the two are
/// independent, and for GPT-2 the tokenizer alone takes a third as long as the weights.
pub fn load(model: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    let files = ModelSource::resolve(model, &opts.resolve)?;
    let config = HfConfig::from_file(&files.config)?;
    let (weights, tokenizer) = std::thread::scope(|scope| {
        let tokenizer = scope.spawn(|| load_tokenizer(&files, &config, &opts.tokenizer));
        let weights = Weights::load(&files.weight_sources(), opts.kind, opts.device);
        let tokenizer = tokenizer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (weights, tokenizer)
    });
    let (weights, tokenizer) = (weights?, tokenizer?);
    Ok(LoadedModel {
        config,
        weights,
        tokenizer,
        files,
    })
}
