//! The error type of this crate.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Everything that can go wrong while locating, parsing or loading a model.
///
/// Every message names the thing concerned: the file, the tensor, the model name, and for
/// shape errors both shapes.
#[derive(Debug, Error)]
pub enum LensError {
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },

    /// A JSON file (config, shard index, tokenizer) is not valid JSON or lacks required fields.
    #[error("malformed {what} {}: {message}", describe_path(.path.as_deref()))]
    MalformedJson {
        /// The file, when the JSON came from one.
        path: Option<PathBuf>,
        /// What kind of file it is ("config", "shard index", ...).
        what: &'static str,
        /// The parser's message.
        message: String,
    },

    /// A config whose values are inconsistent (e.g. `n_embd` not divisible by `n_head`).
    #[error("invalid config {}: {message}", describe_path(.path.as_deref()))]
    InvalidConfig {
        /// The config file, when the config came from one.
        path: Option<PathBuf>,
        /// What is wrong.
        message: String,
    },

    /// A config for an architecture this crate does not implement.
    #[error("unsupported architecture {found}; supported: {}", .supported.join(", "))]
    UnsupportedArchitecture {
        /// The `model_type` and `architectures` found in the config.
        found: String,
        /// The architectures that are supported.
        supported: Vec<String>,
    },

    /// An `activation_function` this crate does not know.
    #[error("unknown activation function '{name}'; known: {}", .known.join(", "))]
    UnknownActivation {
        /// The name found in the config.
        name: String,
        /// The names that are understood.
        known: Vec<String>,
    },

    /// A safetensors file that is truncated, corrupt or otherwise unreadable.
    #[error("invalid safetensors file {}: {message}", .path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the safetensors parser (or our own check) found.
        message: String,
    },

    /// A tensor with an element type libtorch cannot hold (or that this crate does not map).
    #[error("tensor '{tensor}' in {} has unsupported dtype {dtype}", .path.display())]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        tensor: String,
        /// The safetensors dtype.
        dtype: String,
    },

    /// The same tensor name appears in two checkpoint files.
    #[error("tensor '{name}' appears in both {} and {}", .first.display(), .second.display())]
    DuplicateTensor {
        /// The tensor.
        name: String,
        /// The file it was first found in.
        first: PathBuf,
        /// The file it was found in again.
        second: PathBuf,
    },

    /// A shard index that is inconsistent with its shards.
    #[error("shard index {}: {message}", .path.display())]
    ShardIndex {
        /// The `*.safetensors.index.json` file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// A tensor that the checkpoint does not contain.
    #[error("{}", missing_tensor_text(.name, .files, .similar, *.taken))]
    MissingTensor {
        /// The tensor asked for.
        name: String,
        /// The checkpoint files that were loaded.
        files: Vec<PathBuf>,
        /// Up to three tensor names of the checkpoint that look like `name`.
        similar: Vec<String>,
        /// True when the tensor existed but was already moved out with `take`.
        taken: bool,
    },

    /// A tensor whose shape is not the one the model needs.
    #[error("tensor '{name}' has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The tensor.
        name: String,
        /// The shape the caller asked for.
        expected: Vec<i64>,
        /// The shape in the checkpoint.
        actual: Vec<i64>,
    },

    /// A `kind` argument that is not a floating-point type.
    #[error("weights can only be converted to a floating-point kind, not {0:?}")]
    NonFloatKind(tch::Kind),

    /// A model directory without the files a model needs.
    #[error("{} is not a model directory: {message}", .dir.display())]
    NotAModelDir {
        /// The directory.
        dir: PathBuf,
        /// What is missing.
        message: String,
    },

    /// A model name that is neither a local directory, an embedded model nor (available as) a
    /// HuggingFace hub model.
    #[error("{}", not_found_text(.model, .looked))]
    ModelNotFound {
        /// The name asked for.
        model: String,
        /// Every place that was tried, with the reason it did not match.
        looked: Vec<String>,
    },

    /// The tokenizer file could not be parsed, or an operation of the tokenizers library failed.
    #[error("tokenizer {}: {message}", describe_path(.path.as_deref()))]
    Tokenizer {
        /// The tokenizer file, when known.
        path: Option<PathBuf>,
        /// What went wrong.
        message: String,
    },

    /// A tokenizer call with nothing to tokenize.
    #[error("empty input: {0}")]
    EmptyInput(String),

    /// `to_single_token` on a string that is not exactly one token.
    #[error("'{text}' is not a single token: it tokenizes to {} tokens {tokens:?}", .tokens.len())]
    NotSingleToken {
        /// The string.
        text: String,
        /// Its tokens.
        tokens: Vec<String>,
    },

    /// A token id the tokenizer does not know (negative, or not in its vocabulary).
    #[error("token id {id} is not in the tokenizer's vocabulary")]
    UnknownTokenId {
        /// The id.
        id: i64,
    },

    /// A token tensor of the wrong rank or element type.
    #[error("expected {expected} token tensor, got shape {shape:?} of kind {kind:?}")]
    BadTokenTensor {
        /// What was expected ("a 1-D integer", ...).
        expected: &'static str,
        /// The shape given.
        shape: Vec<i64>,
        /// The kind given.
        kind: tch::Kind,
    },

    /// A special token (BOS, pad) that an operation needs but that is not configured.
    #[error("the tokenizer has no {0} token id; set it in TokenizerOptions")]
    MissingSpecialToken(&'static str),

    /// libtorch reported an error.
    #[error("libtorch error while {context}: {source}")]
    Torch {
        /// What was being done.
        context: String,
        /// libtorch's message.
        source: tch::TchError,
    },
}

/// Result alias of this crate.
pub type Result<T, E = LensError> = std::result::Result<T, E>;

impl LensError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LensError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn torch(context: impl Into<String>, source: tch::TchError) -> Self {
        LensError::Torch {
            context: context.into(),
            source,
        }
    }
}

fn describe_path(path: Option<&Path>) -> String {
    match path {
        Some(p) => p.display().to_string(),
        None => "(in memory)".to_string(),
    }
}

fn missing_tensor_text(name: &str, files: &[PathBuf], similar: &[String], taken: bool) -> String {
    if taken {
        return format!("tensor '{name}' was already taken out of the weights");
    }
    let mut text = format!("tensor '{name}' is not in the checkpoint");
    match files {
        [] => {}
        [one] => {
            let _ = write!(text, " {}", one.display());
        }
        many => {
            let names: Vec<String> = many.iter().map(|p| p.display().to_string()).collect();
            let _ = write!(text, " ({} files: {})", many.len(), names.join(", "));
        }
    }
    if !similar.is_empty() {
        let _ = write!(text, "; similar names: {}", similar.join(", "));
    }
    text
}

fn not_found_text(model: &str, looked: &[String]) -> String {
    let mut text = format!("model '{model}' not found; looked in:");
    for place in looked {
        let _ = write!(text, "\n  - {place}");
    }
    text
}
