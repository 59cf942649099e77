//! Errors of the HookedTransformer.

use hookpoint::HookError;
use thiserror::Error;

/// Everything that can go wrong building or running a HookedTransformer.
#[derive(Debug, Error)]
pub enum Error {
    /// A hook failed, a hook name is unknown, or an optional hook's flag is off.
    #[error(transparent)]
    Hook(#[from] HookError),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// More positions than the context holds.
    #[error("input has {len} positions but the model's context is n_ctx = {n_ctx}")]
    TooLong {
        /// Positions asked for (cached ones included).
        len: i64,
        /// The context length.
        n_ctx: i64,
    },
    /// An input with no tokens.
    #[error("empty input: at least one token is needed")]
    EmptyInput,
    /// Any other malformed input (wrong rank, dtype, mask shape...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Loading the checkpoint or its configuration failed.
    #[error("loading the model: {0}")]
    Load(String),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
