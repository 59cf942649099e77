//! Hook points for models built on [`tch`]: the hook system of TransformerLens, in Rust.
//!
//! A model creates a [`HookPoint`] for every activation it exposes (through a [`HookRegistry`],
//! its `hook_dict`) and passes each activation through [`HookPoint::run`]. Researchers then
//!
//! * read or replace activations with forward hooks,
//! * read or replace gradients with backward hooks, registered natively on the activation
//!   tensor through libtorch's `Tensor::register_hook` (tch does not expose it; a small C++ shim
//!   compiled against the same libtorch does),
//! * scope hooks so they are removed however the scope ends ([`HookRegistry::with_hooks`],
//!   [`HookRegistry::scope`]), or own them through a [`HookHandle`],
//! * record activations and gradients in an [`ActivationCache`] ([`run_with_cache`]),
//! * consume each parameter's gradient as a backward pass accumulates it
//!   ([`with_accumulated_gradient_hooks`]).
//!
//! A point with no hooks costs one atomic load and a branch; the activation is neither copied
//! nor given an autograd node.
//!
//! ```no_run
//! use hookpoint::{Hook, HookRegistry, HookSpec};
//! use tch::Tensor;
//!
//! let mut registry = HookRegistry::new();
//! let point = registry.register("blocks.0.hook_resid_pre");
//! // A model would do this in its forward pass:
//! let forward = |x: Tensor| point.run(x * 2);
//!
//! let zero_ablate = Hook::new(|activation, _ctx| Some(activation.zeros_like()));
//! let out = registry
//!     .with_hooks(&[HookSpec::forward("blocks.0.hook_resid_pre", zero_ablate)], || {
//!         forward(Tensor::ones([2, 3], (tch::Kind::Float, tch::Device::Cpu)))
//!     })
//!     .and_then(|result| result)?;
//! assert_eq!(out.sum(tch::Kind::Float).double_value(&[]), 0.0);
//! assert_eq!(registry.hook_count(), 0); // the scope removed its hook
//! # Ok::<(), hookpoint::HookError>(())
//! ```

mod accumulated;
mod analysis;
mod cache;
mod error;
mod handle;
mod names;
mod native;
mod point;
mod registry;

pub use accumulated::with_accumulated_gradient_hooks;
pub use analysis::{CacheAnalysis, DecomposeMode, LabelledStack};
pub use cache::{
    run_with_cache, ActivationCache, CacheOptions, Normalization, ResidualModel, Slice,
};
pub use error::{Direction, HookError, Result};
pub use handle::HookHandle;
pub use names::{act_name, ActKey};
pub use native::{
    backward, clear_grad, grad_enabled, live_backward_hooks, version as tensor_version,
};
pub use point::{layer_of, AddOptions, Hook, HookContext, HookFn, HookPoint, Passed};
pub use registry::{HookRegistry, HookScope, HookSpec, NamesFilter, Selected};
