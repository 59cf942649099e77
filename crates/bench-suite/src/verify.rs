//! `tl-bench verify`: the suite over several models (TransformerLens's `verify_models`), each in
//! a child process of its own, so that each model's time and peak memory are its own and a
//! model that fails to load, or crashes, is a row saying why while the run goes on.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;

use crate::html::VerifyRow;
use crate::process::run_timed;
use crate::report::ReportFile;

/// One model's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct ModelOutcome {
    /// The model.
    pub model: String,
    /// `passed`, `failed`, or `error`.
    pub status: &'static str,
    /// Why it did not run (load error, crash), when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The child's wall time.
    pub seconds: f64,
    /// The child's peak resident set in MiB (at the end of its last phase).
    pub peak_rss_mib: Option<f64>,
    /// Counts per phase.
    pub phases: Vec<PhaseCounts>,
    /// The child's full report, when it wrote one.
    #[serde(skip)]
    pub report: Option<ReportFile>,
}

/// A phase of one model: counts, time, memory.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseCounts {
    /// 1, 2 or 3.
    pub phase: u8,
    /// Checks that ran and passed.
    pub passed: usize,
    /// Checks that failed or could not run.
    pub failed: usize,
    /// Checks that do not apply (reported, never counted as passed).
    pub not_applicable: usize,
    /// Wall time of the phase.
    pub seconds: f64,
    /// The child's peak resident set at the end of the phase.
    pub peak_rss_mib: Option<f64>,
}

/// What each child is asked to run.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// The models, in order.
    pub models: Vec<String>,
    /// Arguments every child `tl-bench run` gets (device, dtype, phases, ...).
    pub run_args: Vec<String>,
    /// Where the children write their JSON reports.
    pub work_dir: PathBuf,
}

/// Runs `tl-bench run` (the executable `tl_bench`) on every model in turn.
pub fn verify(
    tl_bench: &Path,
    options: &VerifyOptions,
    mut progress: impl FnMut(&str),
) -> Vec<ModelOutcome> {
    options
        .models
        .iter()
        .enumerate()
        .map(|(i, model)| {
            progress(model);
            let json = options.work_dir.join(format!("model-{i}.json"));
            verify_one(tl_bench, model, &options.run_args, &json)
        })
        .collect()
}

fn verify_one(tl_bench: &Path, model: &str, run_args: &[String], json: &Path) -> ModelOutcome {
    let _ = std::fs::remove_file(json);
    let stderr = json.with_extension("stderr");
    let mut outcome = ModelOutcome {
        model: model.to_owned(),
        status: "error",
        error: None,
        seconds: 0.0,
        peak_rss_mib: None,
        phases: Vec::new(),
        report: None,
    };
    let stderr_file = match std::fs::File::create(&stderr) {
        Ok(file) => file,
        Err(e) => {
            outcome.error = Some(format!("cannot create {}: {e}", stderr.display()));
            return outcome;
        }
    };
    let mut command = Command::new(tl_bench);
    command
        .arg("run")
        .arg("--quiet")
        .arg("--model")
        .arg(model)
        .arg("--json")
        .arg(json)
        .args(run_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr_file);
    let finished = match run_timed(&mut command) {
        Ok(finished) => finished,
        Err(e) => {
            outcome.error = Some(format!("cannot start {}: {e}", tl_bench.display()));
            return outcome;
        }
    };
    outcome.seconds = finished.seconds;
    let said = std::fs::read_to_string(&stderr).unwrap_or_default();
    match (finished.status.code(), ReportFile::read(json)) {
        (Some(0 | 1), Ok(report)) => {
            outcome.status = if report.passed { "passed" } else { "failed" };
            outcome.phases = phase_counts(&report);
            outcome.peak_rss_mib = outcome
                .phases
                .iter()
                .filter_map(|p| p.peak_rss_mib)
                .reduce(f64::max);
            outcome.report = Some(report);
        }
        (Some(code), _) => {
            let reason = said
                .trim()
                .lines()
                .last()
                .unwrap_or("no message")
                .to_owned();
            outcome.error = Some(format!("exit {code}: {reason}"));
        }
        (None, _) => {
            outcome.error = Some(format!(
                "crashed ({}); last words: {}",
                finished.status,
                said.trim().lines().last().unwrap_or("none")
            ));
        }
    }
    outcome
}

fn phase_counts(report: &ReportFile) -> Vec<PhaseCounts> {
    report
        .phases
        .iter()
        .map(|totals| {
            let of_phase: Vec<_> = report
                .results
                .iter()
                .filter(|r| r.phase == Some(totals.phase))
                .collect();
            PhaseCounts {
                phase: totals.phase,
                passed: of_phase.iter().filter(|r| r.ran() && r.passed).count(),
                failed: of_phase.iter().filter(|r| !r.passed).count(),
                not_applicable: of_phase.iter().filter(|r| !r.ran()).count(),
                seconds: totals.seconds,
                peak_rss_mib: totals.peak_rss_mib,
            }
        })
        .collect()
}

/// Whether every model ran and passed.
pub fn all_passed(outcomes: &[ModelOutcome]) -> bool {
    outcomes.iter().all(|o| o.status == "passed")
}

/// The summary table: one row per model and phase, and a row per model for the whole process.
pub fn table(outcomes: &[ModelOutcome]) -> String {
    let width = outcomes
        .iter()
        .map(|o| o.model.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:>5}  {:>6}  {:>6}  {:>14}  {:>8}  {:>11}",
        "model", "phase", "passed", "failed", "not applicable", "time", "peak memory"
    );
    let mib = |m: Option<f64>| {
        m.map(|m| format!("{m:.0} MiB"))
            .unwrap_or_else(|| "-".into())
    };
    for outcome in outcomes {
        if let Some(error) = &outcome.error {
            let _ = writeln!(out, "{:<width$}  {:>5}  {error}", outcome.model, "-");
            continue;
        }
        for p in &outcome.phases {
            let _ = writeln!(
                out,
                "{:<width$}  {:>5}  {:>6}  {:>6}  {:>14}  {:>6.1} s  {:>11}",
                outcome.model,
                p.phase,
                p.passed,
                p.failed,
                p.not_applicable,
                p.seconds,
                mib(p.peak_rss_mib)
            );
        }
        let sum = |f: fn(&PhaseCounts) -> usize| outcome.phases.iter().map(f).sum::<usize>();
        let _ = writeln!(
            out,
            "{:<width$}  {:>5}  {:>6}  {:>6}  {:>14}  {:>6.1} s  {:>11}  {}",
            outcome.model,
            "all",
            sum(|p| p.passed),
            sum(|p| p.failed),
            sum(|p| p.not_applicable),
            outcome.seconds,
            mib(outcome.peak_rss_mib),
            outcome.status.to_uppercase()
        );
    }
    let failed = outcomes.iter().filter(|o| o.status != "passed").count();
    let _ = writeln!(
        out,
        "{} of {} models passed",
        outcomes.len() - failed,
        outcomes.len()
    );
    out
}

/// The rows of the HTML page's summary.
pub fn html_rows(outcomes: &[ModelOutcome]) -> Vec<VerifyRow> {
    outcomes
        .iter()
        .map(|o| VerifyRow {
            model: o.model.clone(),
            status: o.error.clone().unwrap_or_else(|| o.status.to_owned()),
            passed: o.status == "passed",
            seconds: o.seconds,
            peak_rss_mib: o.peak_rss_mib,
        })
        .collect()
}

/// The JSON of a verify run.
#[derive(Serialize)]
pub struct VerifyJson<'a> {
    /// Whether every model passed.
    pub passed: bool,
    /// Each model's outcome.
    pub models: &'a [ModelOutcome],
}
