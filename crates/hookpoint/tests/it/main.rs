//! The hook system's integration tests, in one binary (one link against libtorch): hooks and the
//! activation cache. `tests/leaks.rs` stays a binary of its own, as it counts process-wide live
//! hooks.

mod common;

mod accumulated;
mod cache;
mod hooks;
