//! The benchmark suite: proves that a TransformerBridge computes exactly what the original
//! model computes, tier by tier — against the raw HF model (Phase 1), against the independent
//! HookedTransformer (Phase 2), and after weight processing (Phase 3).
//!
//! Stricter than TransformerLens's suite: no hook is excluded, no mismatch is "acceptable",
//! every registered hook must fire, and every comparison uses one bound,
//! err = max|a - b| / max(1, max|b|) <= 1e-5 in f32 (see [`compare`]).

pub mod benchmarks;
pub mod compare;
pub mod export;
pub mod granular;
pub mod html;
pub mod model_args;
pub mod process;
pub mod report;
pub mod result;
pub mod suite;
pub mod tools;
pub mod verify;

pub use result::{BenchmarkResult, Severity};
pub use suite::{run_benchmark_suite, run_suite, SuiteOptions, SuiteReport, DEFAULT_TEST_TEXT};
