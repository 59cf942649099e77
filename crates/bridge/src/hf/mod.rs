//! The HF tier: HuggingFace's `GPT2LMHeadModel` with its parameter names, layouts and
//! semantics, and no hooks.

pub(crate) mod forward;
pub(crate) mod kv_cache;
pub(crate) mod mask;
pub(crate) mod model;
pub(crate) mod params;

pub use kv_cache::KvCache;
pub use mask::hf_position_ids;
pub use model::{Gpt2LMHeadModel, HfForward, HfOutput};
pub use params::{BlockParams, Conv1dParams, Gpt2Params, LayerNormParams};
