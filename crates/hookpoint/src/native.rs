//! Backward hooks through libtorch's own `Tensor::register_hook`, via the C++ shim in
//! `csrc/hook_shim.cpp`.
//!
//! The shim owns a boxed [`BackwardCall`] per registration and frees it (through
//! [`drop_backward_call`]) when libtorch drops the hook, normally when the autograd graph is
//! freed. Nothing unwinds across the FFI boundary: the callback catches panics, records them,
//! and returns a failure status, which the shim turns into a C++ exception so that libtorch
//! aborts the backward pass; [`backward`] then reports the recorded cause.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Weak};

use tch::Tensor;
use torch_sys::C_tensor;

use crate::error::{Direction, HookError, Result};
use crate::point::{check_shape, panic_message, HookEntry};

type Callback = extern "C" fn(*mut c_void, *mut C_tensor, *mut *mut C_tensor, *mut u64) -> c_int;
type DropFn = extern "C" fn(*mut c_void);

extern "C" {
    fn hp_register_hook(
        tensor: *const C_tensor,
        callback: Callback,
        drop: DropFn,
        data: *mut c_void,
        name: *const c_char,
        position: *mut u32,
    ) -> *mut c_char;
    fn hp_free_string(message: *mut c_char);
    fn hp_clear_grad(tensor: *const C_tensor) -> *mut c_char;
    fn hp_version(tensor: *const C_tensor) -> i64;
    fn hp_grad_enabled() -> std::os::raw::c_int;
}

/// Native hook registrations whose Rust state libtorch has not released yet.
static LIVE_BACKWARD_CALLS: AtomicUsize = AtomicUsize::new(0);

/// Failures of backward hooks by id, recorded on whatever thread libtorch ran them. The id
/// travels in the exception message libtorch aborts the pass with, so [`backward`] takes exactly
/// its own failure even while other threads run backward passes.
static FAILURES: Mutex<Vec<(u64, HookError)>> = Mutex::new(Vec::new());
static NEXT_FAILURE_ID: AtomicU64 = AtomicU64::new(1);
/// Failures nobody collected (the pass was run through tch directly) are dropped beyond this.
const MAX_UNCOLLECTED_FAILURES: usize = 64;
const FAILURE_MARKER: &str = "[hookpoint failure ";

struct BackwardCall {
    entry: Weak<HookEntry>,
}

/// How many native backward-hook registrations are alive (registered on a tensor whose graph
/// still exists). Returns to its earlier value once the graphs are freed; tests use it to prove
/// nothing leaks.
pub fn live_backward_hooks() -> usize {
    LIVE_BACKWARD_CALLS.load(Ordering::Acquire)
}

pub(crate) fn register_backward_hook(tensor: &Tensor, entry: Weak<HookEntry>) -> Result<()> {
    let name = entry
        .upgrade()
        .map(|e| e.context.name().to_owned())
        .unwrap_or_default();
    let c_name = CString::new(name.replace('\0', "?")).unwrap_or_default();
    let data = Box::into_raw(Box::new(BackwardCall { entry })) as *mut c_void;
    LIVE_BACKWARD_CALLS.fetch_add(1, Ordering::AcqRel);
    let mut position = 0u32;
    // SAFETY: `tensor` is a live tch tensor (an `at::Tensor*`); the shim takes ownership of
    // `data` and releases it through `drop_backward_call` exactly once, error paths included.
    let error = unsafe {
        hp_register_hook(
            tensor.as_ptr(),
            call_backward,
            drop_backward_call,
            data,
            c_name.as_ptr(),
            &mut position,
        )
    };
    shim_result(error, || format!("registering backward hook on '{name}'"))
}

/// The shim's answer: a null `error` is success; otherwise the C++ exception's message (a
/// malloc'ed string, freed here) under `what` went wrong.
pub(crate) fn shim_result(error: *mut c_char, what: impl FnOnce() -> String) -> Result<()> {
    if error.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a malloc'ed NUL-terminated string owned by us.
    let message = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    unsafe { hp_free_string(error) };
    Err(HookError::Torch(tch::TchError::Torch(format!(
        "{}: {message}",
        what()
    ))))
}

extern "C" fn drop_backward_call(data: *mut c_void) {
    // SAFETY: `data` came from Box::into_raw in register_backward_hook; the shim calls this once.
    drop(unsafe { Box::from_raw(data as *mut BackwardCall) });
    LIVE_BACKWARD_CALLS.fetch_sub(1, Ordering::AcqRel);
}

extern "C" fn call_backward(
    data: *mut c_void,
    gradient: *mut C_tensor,
    replacement: *mut *mut C_tensor,
    failure_id: *mut u64,
) -> c_int {
    // SAFETY: the shim passes the pointer it was given at registration, alive until the drop call,
    // and a freshly allocated gradient tensor whose ownership passes to us.
    let call = unsafe { &*(data as *const BackwardCall) };
    let gradient = unsafe { Tensor::from_ptr(gradient) };
    let Some(entry) = call.entry.upgrade() else {
        return 0;
    };
    if !entry.active.load(Ordering::Acquire) {
        return 0;
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        entry.hook.call(&gradient, &entry.context)
    }));
    let failure = match outcome {
        Ok(None) => return 0,
        Ok(Some(new_gradient)) => match check_shape(&entry.context, &gradient, &new_gradient) {
            Ok(()) => {
                let mut new_gradient = std::mem::ManuallyDrop::new(new_gradient);
                // SAFETY: ownership of the tensor passes to the shim, which deletes it.
                unsafe { *replacement = new_gradient.as_mut_ptr() };
                return 0;
            }
            Err(error) => error,
        },
        Err(payload) => HookError::HookPanicked {
            hook: entry.context.name().to_owned(),
            direction: Direction::Backward,
            message: panic_message(payload.as_ref()),
        },
    };
    // SAFETY: the shim passes a valid pointer to its local failure id.
    unsafe { *failure_id = record_failure(failure) };
    1
}

fn failures() -> std::sync::MutexGuard<'static, Vec<(u64, HookError)>> {
    FAILURES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn record_failure(error: HookError) -> u64 {
    let id = NEXT_FAILURE_ID.fetch_add(1, Ordering::Relaxed);
    let mut failures = failures();
    if failures.len() >= MAX_UNCOLLECTED_FAILURES {
        failures.remove(0);
    }
    failures.push((id, error));
    id
}

/// The recorded failure whose id an error message from libtorch carries, if any.
fn take_failure_named_in(message: &str) -> Option<HookError> {
    let start = message.find(FAILURE_MARKER)? + FAILURE_MARKER.len();
    let id: u64 = message[start..].split(']').next()?.parse().ok()?;
    let mut failures = failures();
    let position = failures.iter().position(|(recorded, _)| *recorded == id)?;
    Some(failures.remove(position).1)
}

/// Runs `loss.backward()` and reports a backward hook that panicked or returned a gradient of the
/// wrong shape as that hook's error (libtorch aborts the pass at the first such hook).
///
/// Prefer this over `Tensor::backward`, which panics with a less specific message.
pub fn backward(loss: &Tensor) -> Result<()> {
    loss.f_backward().map_err(|error| {
        let failure = match &error {
            tch::TchError::Torch(message) => take_failure_named_in(message),
            _ => None,
        };
        failure.unwrap_or(HookError::Torch(error))
    })
}

/// Whether autograd records operations on this thread, i.e. not inside `tch::no_grad` (which tch
/// does not expose).
pub fn grad_enabled() -> bool {
    // SAFETY: reads a thread-local flag of libtorch.
    unsafe { hp_grad_enabled() != 0 }
}

/// The version counter of `tensor`'s storage, which every in-place change bumps (PyTorch's
/// `tensor._version`); `None` when the tensor keeps none (an inference-mode tensor). Equal
/// versions mean the values were not changed in place in between.
pub fn version(tensor: &Tensor) -> Option<i64> {
    // SAFETY: `tensor` is a live tch tensor; the shim only reads its version counter and
    // catches any C++ exception.
    let version = unsafe { hp_version(tensor.as_ptr()) };
    (version >= 0).then_some(version)
}

/// Drops the gradient accumulated on `tensor` and frees its memory (PyTorch's
/// `zero_grad(set_to_none=True)`; tch's `zero_grad` only fills it with zeros).
pub fn clear_grad(tensor: &Tensor) -> Result<()> {
    // SAFETY: `tensor` is a live tch tensor; the shim only resets its gradient slot.
    let error = unsafe { hp_clear_grad(tensor.as_ptr()) };
    shim_result(error, || "clearing a gradient".to_owned())
}
