//! `tl-perf`: the performance harness behind `cargo xtask perf` (docs/performance.md).
//!
//! * `measure` times, in one process, medians over repeats after a warm-up: raw HF forward vs
//!   bridge forward vs bridge `run_with_cache` (every hook) vs HookedTransformer forward and
//!   `run_with_cache` (batch 1 x 128 and 8 x 128, random token ids, no_grad); bridge forward +
//!   backward with a backward hook on every hook point vs without; greedy generation of 64
//!   tokens from a 128-token prompt with and without KV cache; load times against a plain read of
//!   the safetensors file (and, in child processes, the memory a load takes); and the full suite
//!   as a separate `tl-bench --quiet` process: wall time and peak RSS. Variants are interleaved
//!   repeat by repeat, so a burst of load from elsewhere hits them alike.
//! * `report` turns the JSON of `measure` (and of `xtask/python/perf_python.py`) into the
//!   markdown table and the tracking JSON, with every ratio and target.
//! * `load-probe` and `suite-profile` are the child processes and a diagnostic.
//!
//! Nothing here asserts on time; it measures and reports.
mod causes;
mod cli;
mod measure;
mod profile;
mod render;
mod suite_times;
mod system;
mod targets;
mod timing;
mod workloads;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Cmd};
use crate::measure::{load_probe, measure};
use crate::profile::suite_profile;
use crate::targets::report;

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    // Freed tensor memory stays for the next pass (lens_core::allocator).
    lens_core::allocator::keep_freed_memory();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Cmd::Measure(args) => measure(&args),
        Cmd::Report(args) => report(&args),
        Cmd::LoadProbe(args) => load_probe(&args),
        Cmd::SuiteProfile(args) => suite_profile(&args).map(|profile| {
            println!(
                "{}",
                serde_json::to_string_pretty(&profile).unwrap_or_default()
            )
        }),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tl-perf: {error}");
            ExitCode::from(2)
        }
    }
}
