//! Errors: the model error shared by every model of the workspace.

pub use lens_core::model::{ModelError as Error, ModelResult as Result};
