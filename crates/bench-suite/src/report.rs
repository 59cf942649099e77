//! The summary block and the JSON report.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::result::{BenchmarkResult, Severity};
use crate::suite::{PhaseTotals, SuiteReport};

const RULE: &str =
    "================================================================================";
const THIN_RULE: &str =
    "--------------------------------------------------------------------------------";

/// Whether every benchmark that ran passed.
pub fn all_passed(results: &[BenchmarkResult]) -> bool {
    results.iter().all(|r| r.passed)
}

/// The summary block of the Python suite's README: totals, counts per severity, every result
/// (with its wall time when the suite timed it), each phase headed by its total time.
pub fn summary(report: &SuiteReport) -> String {
    let results = &report.results;
    let ran: Vec<&BenchmarkResult> = results.iter().filter(|r| r.ran()).collect();
    let passed = ran.iter().filter(|r| r.passed).count();
    let failed = ran.len() - passed;
    let percent = |n: usize| {
        if ran.is_empty() {
            0.0
        } else {
            100.0 * n as f64 / ran.len() as f64
        }
    };
    let mut out = String::new();
    let _ = writeln!(out, "{RULE}\nBENCHMARK RESULTS\n{RULE}\n");
    let _ = writeln!(out, "Total: {} tests", ran.len());
    let _ = writeln!(out, "Passed: {passed} ({:.1}%)", percent(passed));
    let _ = writeln!(out, "Failed: {failed} ({:.1}%)", percent(failed));
    let skipped = results.len() - ran.len();
    if skipped > 0 {
        let _ = writeln!(out, "Skipped: {skipped}");
    }
    let _ = writeln!(out);
    for (severity, label) in [
        (Severity::Info, "🟢 INFO"),
        (Severity::Warning, "🟡 WARNING"),
        (Severity::Danger, "🔴 DANGER"),
        (Severity::Error, "❌ ERROR"),
    ] {
        let _ = writeln!(
            out,
            "{label}: {}",
            results.iter().filter(|r| r.severity == severity).count()
        );
    }
    let _ = writeln!(out, "\n{THIN_RULE}");
    let mut phase = None;
    for result in results {
        if result.phase != phase {
            phase = result.phase;
            if let Some(p) = phase {
                match report.phases.iter().find(|t| t.phase == p) {
                    Some(totals) => {
                        let recording = match totals.recording_seconds {
                            Some(r) => format!(", of which {r:.2} s recording both models"),
                            None => String::new(),
                        };
                        let _ = writeln!(out, "Phase {p} ({:.2} s{recording})", totals.seconds);
                    }
                    None => {
                        let _ = writeln!(out, "Phase {p}");
                    }
                }
            }
        }
        match result.seconds {
            Some(seconds) => {
                let _ = writeln!(out, "{result}\n  time: {seconds:.3} s");
            }
            None => {
                let _ = writeln!(out, "{result}");
            }
        }
    }
    let _ = writeln!(out, "{RULE}");
    let _ = writeln!(out, "Loading: {:.2} s", report.load_seconds);
    out
}

/// What the JSON report and the HTML report say about the run besides its results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunInfo {
    /// The `--model` argument.
    pub model: String,
    /// `cpu`, `cuda:N`.
    pub device: String,
    /// `f32`, `f16`, `bf16`.
    pub dtype: String,
}

/// The JSON report of one suite run, as `tl-bench run --json` writes it (and `verify` reads it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReportFile {
    /// Model, device, dtype.
    #[serde(flatten)]
    pub info: RunInfo,
    /// Whether every check passed.
    pub passed: bool,
    /// Seconds spent booting the bridge and tokenizing.
    pub load_seconds: f64,
    /// Totals of each phase that ran.
    pub phases: Vec<PhaseTotals>,
    /// Every result.
    pub results: Vec<BenchmarkResult>,
}

impl ReportFile {
    /// The report of `report`, run as `info` says.
    pub fn new(info: &RunInfo, report: &SuiteReport) -> Self {
        ReportFile {
            info: info.clone(),
            passed: all_passed(&report.results),
            load_seconds: report.load_seconds,
            phases: report.phases.clone(),
            results: report.results.clone(),
        }
    }

    /// Reads a report written by [`write_json`].
    pub fn read(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }
}

/// Writes every result as JSON: name, phase, severity, passed, message, details, seconds, peak
/// memory, the err of every compared hook; and the run's model, device, dtype and phase totals.
pub fn write_json(path: &Path, info: &RunInfo, report: &SuiteReport) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(&ReportFile::new(info, report))
        .map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}
