//! The error type of the hook system.

use thiserror::Error;

/// Everything that can go wrong when registering, running or caching hooks.
#[derive(Debug, Error)]
pub enum HookError {
    /// A hook name that is not a hook point of the model.
    #[error("unknown hook name '{name}'{}", suggestion_text(.suggestions))]
    UnknownHook {
        /// The name asked for.
        name: String,
        /// The closest valid names, best first.
        suggestions: Vec<String>,
    },
    /// A forward hook returned a tensor of a different shape than the activation it replaces.
    #[error("hook '{hook}' returned a tensor of shape {actual:?}, but the activation has shape {expected:?}")]
    ShapeMismatch {
        /// The hook point.
        hook: String,
        /// Shape of the activation.
        expected: Vec<i64>,
        /// Shape of the returned replacement.
        actual: Vec<i64>,
    },
    /// A hook function panicked. The hook system caught it; the scope that ran it removed its hooks.
    #[error("{direction} hook on '{hook}' panicked: {message}")]
    HookPanicked {
        /// The hook point.
        hook: String,
        /// "forward" or "backward".
        direction: Direction,
        /// The panic payload, when it was a string.
        message: String,
    },
    /// A hook point that only fires when a model option is on (TransformerLens's `use_attn_result` etc.).
    #[error("hook '{hook}' only fires with the model option '{flag}' enabled")]
    FlagNotEnabled {
        /// The hook point.
        hook: String,
        /// The option that must be enabled.
        flag: String,
    },
    /// A cache lookup for a name the cache does not hold.
    #[error("activation cache has no entry '{name}'{}", suggestion_text(.suggestions))]
    NotCached {
        /// The resolved name asked for.
        name: String,
        /// The closest cached names.
        suggestions: Vec<String>,
    },
    /// A TransformerLens-style activation name that cannot be resolved.
    #[error("cannot resolve activation name {0}")]
    BadActName(String),
    /// A request the cache cannot satisfy (e.g. removing a batch dimension that is not there).
    #[error("activation cache: {0}")]
    Cache(String),
    /// libtorch reported an error (shape errors in user code, backward on a non-scalar, ...).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Which pass a hook belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Runs on the activation during the forward pass.
    Forward,
    /// Runs on the gradient at the hook point during the backward pass.
    Backward,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Forward => "forward",
            Direction::Backward => "backward",
        })
    }
}

fn suggestion_text(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", suggestions.join(", "))
    }
}

/// Result alias of this crate.
pub type Result<T, E = HookError> = std::result::Result<T, E>;
