//! Where the Rust suite's time went, read from its own report (`tl-bench --json`, kept under
//! `suite` and `suite_gqa` by `tl-perf measure`) into typed figures for the renderer and the causes.

use serde::Deserialize;
use serde_json::Value;

/// One phase's totals (`bench_suite::suite::PhaseTotals`).
#[derive(Debug, Deserialize)]
pub(crate) struct Phase {
    pub(crate) phase: u8,
    pub(crate) seconds: f64,
    pub(crate) peak_rss_mib: Option<f64>,
    #[serde(default)]
    pub(crate) recording_seconds: Option<f64>,
}

/// One benchmark's time.
#[derive(Debug, Deserialize)]
pub(crate) struct Benchmark {
    pub(crate) phase: Option<u8>,
    pub(crate) name: String,
    pub(crate) seconds: Option<f64>,
}

/// The suite's breakdown.
#[derive(Debug, Deserialize)]
pub(crate) struct SuiteTimes {
    /// Booting the bridge and tokenizing the inputs.
    pub(crate) load_s: Option<f64>,
    pub(crate) phases: Vec<Phase>,
    pub(crate) benchmarks: Vec<Benchmark>,
}

impl SuiteTimes {
    /// The breakdown in the Rust run's section `key` (`suite`, or `suite_gqa` for the
    /// Llama-family checkpoint), if it has one.
    pub(crate) fn of(rust: &Value, key: &str) -> Option<SuiteTimes> {
        SuiteTimes::deserialize(rust.get(key)?).ok()
    }

    pub(crate) fn phase(&self, n: u8) -> Option<&Phase> {
        self.phases.iter().find(|p| p.phase == n)
    }

    /// Seconds of the benchmarks whose name `chosen` accepts, in phase `phase` (any with `None`).
    pub(crate) fn seconds_of(&self, phase: Option<u8>, chosen: impl Fn(&str) -> bool) -> f64 {
        self.benchmarks
            .iter()
            .filter(|b| phase.is_none() || b.phase == phase)
            .filter(|b| chosen(&b.name))
            .filter_map(|b| b.seconds)
            .sum()
    }

    /// The generation checks' seconds.
    pub(crate) fn generation_s(&self) -> f64 {
        self.seconds_of(None, |n| n.contains("generation"))
    }

    /// The hook-option checks' seconds (`gated_hooks_fire`, the model's and the reference's).
    pub(crate) fn gated_s(&self) -> f64 {
        self.seconds_of(None, |n| n.starts_with("gated_hooks_fire"))
    }

    /// Both phases' recording of both models.
    pub(crate) fn recording_s(&self) -> f64 {
        self.phases.iter().filter_map(|p| p.recording_seconds).sum()
    }

    /// Phase 3's weight checks: its results before its first comparison (`logits_equivalence`),
    /// in the suite's order.
    pub(crate) fn weight_checks_s(&self) -> f64 {
        self.benchmarks
            .iter()
            .filter(|b| b.phase == Some(3))
            .take_while(|b| b.name != "logits_equivalence")
            .filter_map(|b| b.seconds)
            .sum()
    }

    /// Seconds of a phase not spent in its benchmarks or its recording: loading the
    /// HookedTransformer (Phase 2), processing both models' weights (Phase 3).
    pub(crate) fn setup_s(&self, n: u8) -> Option<f64> {
        let phase = self.phase(n)?;
        let benchmarks = self.seconds_of(Some(n), |_| true);
        Some(phase.seconds - benchmarks - phase.recording_seconds.unwrap_or(0.0))
    }
}
