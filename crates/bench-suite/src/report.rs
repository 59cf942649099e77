//! The summary block and the JSON report.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::result::{BenchmarkResult, Severity};

const RULE: &str =
    "================================================================================";
const THIN_RULE: &str =
    "--------------------------------------------------------------------------------";

/// Whether every benchmark that ran passed.
pub fn all_passed(results: &[BenchmarkResult]) -> bool {
    results.iter().all(|r| r.passed)
}

/// The summary block of the Python suite's README: totals, counts per severity, every result.
pub fn summary(results: &[BenchmarkResult]) -> String {
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
                let _ = writeln!(out, "Phase {p}");
            }
        }
        let _ = writeln!(out, "{result}");
    }
    let _ = writeln!(out, "{RULE}");
    out
}

#[derive(Serialize)]
struct Report<'a> {
    model: &'a str,
    device: String,
    dtype: String,
    passed: bool,
    results: &'a [BenchmarkResult],
}

/// Writes every result as JSON: name, phase, severity, passed, message, details.
pub fn write_json(
    path: &Path,
    model: &str,
    device: &str,
    dtype: &str,
    results: &[BenchmarkResult],
) -> std::io::Result<()> {
    let report = Report {
        model,
        device: device.to_owned(),
        dtype: dtype.to_owned(),
        passed: all_passed(results),
        results,
    };
    let text = serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}
