//! A faithful HuggingFace GPT-2 on tch, and the TransformerBridge over it: every
//! TransformerLens hook name on an unmodified HuggingFace model.
//!
//! Two tiers:
//!
//! * [`Gpt2LMHeadModel`] is HuggingFace's `GPT2LMHeadModel`: its parameter names and layouts
//!   (`Conv1D` weights `[in, out]`, the fused `attn.c_attn`, a tied or untied `lm_head`), every
//!   config knob HF honours, its masks (eager attention, `finfo.min`), position ids for left
//!   padding as `generate` computes them, its loss, its KV cache and `output_hidden_states`. It
//!   has no hooks.
//! * [`TransformerBridge`] runs *the same forward pass* (one implementation, see `tap` in the
//!   source) with a hook point at every component input and output and at TransformerLens's
//!   internal sites, under the Python bridge's names and TransformerLens's aliases, with
//!   TransformerLens's masking and optional paths (`use_attn_result`, `use_split_qkv_input`,
//!   `use_attn_in`, `use_hook_mlp_in`). [`TransformerBridge::enable_compatibility_mode`]
//!   processes the weights as TransformerLens's HookedTransformer does.
//!
//! The bridge implements [`lens_core::model::LensModel`], the interface the benchmarks use, and
//! [`hookpoint::ResidualModel`], so the activation-cache helpers work on it.
//!
//! ```
//! use bridge::TransformerBridge;
//! use hookpoint::{CacheOptions, Hook, HookSpec, NamesFilter};
//! use lens_core::model::{ForwardOptions, LensModel, ReturnType};
//! use tch::{Device, Kind};
//!
//! // The embedded default model, on the CPU in f32.
//! let model = TransformerBridge::boot(lens_core::DEFAULT_MODEL, Device::Cpu, Kind::Float)?;
//! let tokens = model.to_tokens(&["The cat sat on the mat"], None, None)?;
//!
//! // Read activations (TransformerLens names and the bridge's component names both work).
//! let (out, cache) = model.run_with_cache(
//!     &tokens.ids,
//!     &ForwardOptions::default(),
//!     &CacheOptions {
//!         names_filter: NamesFilter::predicate(|n| n.ends_with("hook_resid_pre")),
//!         ..CacheOptions::default()
//!     },
//! )?;
//! let resid = cache.get(("resid_pre", 1i64))?; // blocks.1.hook_resid_pre, [1, p, d_model]
//! println!("logits {:?}, resid {:?}", out.logits()?.size(), resid.size());
//!
//! // Zero-ablate head 0 of layer 0 and measure the loss.
//! let ablate = Hook::new(|z, _ctx| {
//!     let z = z.copy();
//!     let _ = z.narrow(2, 0, 1).fill_(0.0); // z is [b, p, head, d_head]
//!     Some(z)
//! });
//! let loss = model.run_with_hooks(
//!     &tokens.ids,
//!     &ForwardOptions { return_type: ReturnType::Loss, ..Default::default() },
//!     &[HookSpec::forward("blocks.0.attn.hook_z", ablate)],
//! )?;
//! println!("ablated loss {}", loss.loss()?.double_value(&[]));
//! # Ok::<(), lens_core::model::ModelError>(())
//! ```

#![warn(missing_docs)]

mod bridge;
mod hf;
mod input;
mod loss;
mod tap;

pub use bridge::{
    ArchitectureAdapter, CompatibilityOptions, Component, ComponentKind, Gpt2Adapter,
    TransformerBridge,
};
pub use hf::{
    hf_position_ids, BlockParams, Conv1dParams, GateUpProjections, Gpt2LMHeadModel, Gpt2Params,
    GptNeoForCausalLM, GptNeoLayerParams, GptNeoParams, GptNeoxForCausalLM, GptNeoxLayerParams,
    GptNeoxParams, HfForward, HfModel, HfOutput, KvCache, LayerNormParams, LinearParams,
    LlamaForCausalLM, LlamaLayerParams, LlamaParams, OptForCausalLM, OptLayerParams, OptParams,
    ParallelForCausalLM, ParallelLayerParams, ParallelParams, QkvProjections,
};
pub use loss::IGNORE_INDEX;
/// The tch version the bridge is built on (`bridge::tch::Device`, ...), so a dependent crate
/// need not pin it separately.
pub use tch;

/// Everything the basic flow needs, in one `use bridge::prelude::*;`: boot a bridge, tokenize,
/// run with hooks or with a cache, read the output.
pub mod prelude {
    pub use crate::{CompatibilityOptions, TransformerBridge};
    pub use hookpoint::{ActivationCache, CacheOptions, Hook, HookSpec, NamesFilter};
    pub use lens_core::circuits::{Circuits, Composition};
    pub use lens_core::factored::FactoredMatrix;
    pub use lens_core::model::{ForwardOptions, ForwardOutput, LensModel, ReturnType};
    pub use tch::{Device, Kind, Tensor};
}
pub use tap::TlPaths;
