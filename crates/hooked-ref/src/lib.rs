//! The reference HookedTransformer: TransformerLens's weight layout (`W_Q [h, d, dh]`, ...),
//! hook names and semantics for GPT-2-style models, written independently of the bridge so that
//! the two can check each other.
//!
//! Differences from TransformerLens 3.9.0, all deliberate:
//! * `ln1` runs once per block (TransformerLens runs it once per q, k and v input), so its hooks
//!   fire once and a backward hook there sees the full gradient. With `use_split_qkv_input` or
//!   `use_attn_in` the three inputs are distinct tensors and `ln1` runs (and its hooks fire) three
//!   times, as there.
//! * A query whose keys are all masked (a padding position) gets an all-zero attention row
//!   without passing through NaN, so gradients stay finite there too.

mod config;
mod error;
mod hooks;
mod layers;
mod lens_impl;
mod model;
mod params;
mod processing;
mod rotary;

pub use config::{HookedTransformerConfig, NormType, Rotary};
pub use error::{Error, Result};
pub use hooks::hook_names;
pub use layers::LayerKv;
pub use lens_core::model::{ForwardOptions, ForwardOutput, LensModel, ReturnType};
pub use model::HookedTransformer;
pub use params::{
    convert_gpt2, convert_gpt_neo, convert_gpt_neox, convert_llama, convert_opt, convert_parallel,
    AttentionParams, BlockParams, LayerNormParams, MlpParams, Params,
};
pub use processing::ProcessingOptions;
