//! Hooks on leaves (parameters) that run once libtorch has accumulated a backward pass's
//! gradient into their `.grad`: libtorch's post-accumulate-grad hook (PyTorch's
//! `Tensor.register_post_accumulate_grad_hook`), through the C++ shim in `csrc/hook_shim.cpp`.
//!
//! They let a caller consume each parameter's gradient as the backward pass produces it and free
//! it at once (`clear_grad`), so a backward pass never holds the whole gradient set: a benchmark
//! comparing two models' gradients needs only one model's full set that way.

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use tch::Tensor;
use torch_sys::C_tensor;

use crate::error::{Direction, HookError, Result};
use crate::native::shim_result;
use crate::point::panic_message;

type LeafCallback = extern "C" fn(*mut c_void, usize, *mut C_tensor);

extern "C" {
    fn hp_set_leaf_hook(
        tensor: *const C_tensor,
        callback: Option<LeafCallback>,
        data: *mut c_void,
        index: usize,
    ) -> *mut c_char;
}

/// The name failures of these hooks are reported under.
const HOOK_NAME: &str = "accumulated-gradient hook";

/// The caller's function: called with a leaf's index and the leaf.
type OnGradient<'f> = &'f mut (dyn FnMut(usize, &Tensor) + Send);

/// What the shim's hooks point at: the caller's function and the first panic it raised.
struct LeafState<'f> {
    on_gradient: Mutex<OnGradient<'f>>,
    panicked: Mutex<Option<String>>,
}

/// Runs `run` with `on_gradient(i, leaf)` called each time a backward pass inside it has
/// accumulated a gradient into `leaves[i]`'s `.grad` (once per leaf and pass, with the whole
/// gradient: libtorch sums every use of a leaf before accumulating). `on_gradient` may read the
/// gradient and free it (`clear_grad`); it runs on whatever thread libtorch runs the leaf's
/// backward on (the calling thread on the CPU), while the calling thread waits for the pass.
///
/// Every hook is removed before this returns, however `run` ends. A leaf holds one such hook at
/// a time in libtorch, so a hook set on one of `leaves` by other code is replaced and then
/// removed. `on_gradient` must not panic; if it does, the rest of the pass runs without it and
/// the panic is returned as [`HookError::HookPanicked`].
pub fn with_accumulated_gradient_hooks<R>(
    leaves: &[Tensor],
    on_gradient: &mut (dyn FnMut(usize, &Tensor) + Send),
    run: impl FnOnce() -> R,
) -> Result<R> {
    let state = LeafState {
        on_gradient: Mutex::new(on_gradient),
        panicked: Mutex::new(None),
    };
    let mut registered = Registered { leaves, count: 0 };
    let data = &state as *const LeafState as *mut c_void;
    for (index, leaf) in leaves.iter().enumerate() {
        // SAFETY: `leaf` is a live tch tensor; `data` points at `state`, which outlives every
        // hook: `registered` removes them all when it is dropped, before `state` is.
        set_hook(leaf, Some(call_on_gradient), data, index)?;
        registered.count = index + 1;
    }
    let output = run();
    drop(registered);
    let panicked = state
        .panicked
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match panicked {
        None => Ok(output),
        Some(message) => Err(HookError::HookPanicked {
            hook: HOOK_NAME.to_owned(),
            direction: Direction::Backward,
            message,
        }),
    }
}

/// Removes the hooks of the first `count` leaves when dropped (panics included).
struct Registered<'a> {
    leaves: &'a [Tensor],
    count: usize,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        for leaf in &self.leaves[..self.count] {
            // A failure here cannot be reported; removal only resets a field.
            let _ = set_hook(leaf, None, std::ptr::null_mut(), 0);
        }
    }
}

fn set_hook(
    leaf: &Tensor,
    callback: Option<LeafCallback>,
    data: *mut c_void,
    index: usize,
) -> Result<()> {
    // SAFETY: `leaf` is a live tch tensor; the shim catches every C++ exception.
    let error = unsafe { hp_set_leaf_hook(leaf.as_ptr(), callback, data, index) };
    shim_result(error, || format!("setting an {HOOK_NAME} on leaf {index}"))
}

extern "C" fn call_on_gradient(data: *mut c_void, index: usize, leaf: *mut C_tensor) {
    // SAFETY: the shim passes the pointer it was given, alive until the hooks are removed, and a
    // freshly allocated tensor whose ownership passes to us.
    let state = unsafe { &*(data as *const LeafState) };
    let leaf = unsafe { Tensor::from_ptr(leaf) };
    let mut panicked = state
        .panicked
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if panicked.is_some() {
        return;
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut on_gradient = state
            .on_gradient
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        on_gradient(index, &leaf)
    }));
    if let Err(payload) = outcome {
        *panicked = Some(panic_message(payload.as_ref()));
    }
}
