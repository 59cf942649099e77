//! `tl-perf report`: the targets, each a ratio of two measured figures against its bound.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::{json, Value};

use crate::cli::ReportArgs;
use crate::render::render_markdown;
use crate::AnyResult;

pub(crate) fn get(v: &Value, path: &str) -> Option<f64> {
    path.split('.')
        .try_fold(v, |v, key| v.get(key))
        .and_then(Value::as_f64)
}

pub(crate) fn fmt_opt(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "—".into(),
    }
}

/// One target: what it compares, the measured ratio, the bound, met or not.
#[derive(Serialize)]
pub(crate) struct Target {
    pub(crate) id: String,
    pub(crate) target: String,
    /// The ratio of medians (what the target is judged on).
    pub(crate) measured: Option<f64>,
    /// The same ratio from the fastest sample of each side (noise only ever adds time), where
    /// the figure is a timing with repeats.
    pub(crate) measured_min: Option<f64>,
    pub(crate) bound: String,
    /// The bound's number (`bound` without its sign).
    #[serde(skip)]
    pub(crate) limit: f64,
    pub(crate) met: Option<bool>,
    pub(crate) note: String,
}

impl Target {
    /// What the bound allows the ratio's numerator, `numerator` being its measured value: the
    /// denominator times the bound.
    pub(crate) fn allowed(&self, numerator: f64) -> Option<f64> {
        self.measured
            .filter(|m| *m != 0.0)
            .map(|m| numerator / m * self.limit)
    }
}

/// A bound on a ratio: at most (`Le`) or at least (`Ge`).
#[derive(Clone, Copy)]
enum Bound {
    Le(f64),
    Ge(f64),
}

fn target(
    id: &str,
    text: &str,
    (measured, measured_min): (Option<f64>, Option<f64>),
    bound: Bound,
    note: &str,
) -> Target {
    let met = measured.filter(|m| m.is_finite()).map(|m| match bound {
        Bound::Le(b) => m <= b,
        Bound::Ge(b) => m >= b,
    });
    Target {
        id: id.into(),
        target: text.into(),
        measured,
        measured_min,
        bound: match bound {
            Bound::Le(b) => format!("<= {b}"),
            Bound::Ge(b) => format!(">= {b}"),
        },
        limit: match bound {
            Bound::Le(b) | Bound::Ge(b) => b,
        },
        met,
        note: note.into(),
    }
}

pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

/// Ratios of two timings (`<key>.median_ms`, `<key>.min_ms`): of the medians and of the minima.
fn time_ratio(v: &Value, num: &str, den: &str) -> (Option<f64>, Option<f64>) {
    (
        ratio(
            get(v, &format!("{num}.median_ms")),
            get(v, &format!("{den}.median_ms")),
        ),
        ratio(
            get(v, &format!("{num}.min_ms")),
            get(v, &format!("{den}.min_ms")),
        ),
    )
}

/// The Python suite's figures used when no Python run is given (TransformerLens 3.9.0's
/// `run_benchmark_suite` measured on this machine class before the harness ran it live).
pub(crate) const ANCHOR_SUITE_S: f64 = 68.2;
pub(crate) const ANCHOR_SUITE_RSS_MB: f64 = 4803.0;

/// Which run a figure comes from.
#[derive(Clone, Copy)]
enum Run {
    /// `tl-perf measure`'s.
    Rust,
    /// `perf_python.py`'s in TransformerLens 3.9.0's venv (or, for the suite, the anchors).
    Python,
    /// `perf_python.py`'s in TransformerLens 4.3.0's venv.
    Tl4,
}

/// What a target's ratio divides.
enum Ratio {
    /// Two timings of the Rust run: medians (`<key>.median_ms`), and minima (`<key>.min_ms`).
    Timings(&'static str, &'static str),
    /// Two figures (dotted paths); the ratio of minima divides `numerator_min`, where given, by
    /// the same denominator.
    Figures {
        numerator: (Run, &'static str),
        numerator_min: Option<(Run, &'static str)>,
        denominator: (Run, &'static str),
    },
}

/// When a target is reported.
enum When {
    Always,
    /// A TransformerLens 4.3.0 run is given.
    WithTl4,
    /// The Rust run measured this figure.
    Measured(&'static str),
    /// The Rust run measured this figure and a TransformerLens 4.3.0 run is given.
    MeasuredWithTl4(&'static str),
}

/// What the target's note says.
enum Note {
    Text(&'static str),
    /// One text when a TransformerLens 3.9.0 run is given, another without.
    ByPythonRun(&'static str, &'static str),
}

/// One row of [`TARGETS`].
struct TargetSpec {
    id: &'static str,
    text: &'static str,
    ratio: Ratio,
    bound: Bound,
    note: Note,
    when: When,
}

const fn timings(numerator: &'static str, denominator: &'static str) -> Ratio {
    Ratio::Timings(numerator, denominator)
}

const fn figures(numerator: (Run, &'static str), denominator: (Run, &'static str)) -> Ratio {
    Ratio::Figures {
        numerator,
        numerator_min: None,
        denominator,
    }
}

const SUITE_AGAINST: Note = Note::ByPythonRun(
    "Python suite measured in the same run",
    "earlier measurements of the Python suite, not this run",
);
const GQA_AGAINST: Note = Note::ByPythonRun(
    "Python suite measured in the same run",
    "no Python run (no earlier figures for this checkpoint)",
);
const TL4_SAME_RUN: Note = Note::Text("transformer-lens 4.3.0 measured in the same run");

/// Every target of docs/performance.md, in its order.
const TARGETS: &[TargetSpec] = &[
    TargetSpec {
        id: "bridge_forward_1x128",
        text: "bridge forward, no hooks / raw HF forward (1x128)",
        ratio: timings("forward.1x128.bridge", "forward.1x128.hf"),
        bound: Bound::Le(1.05),
        note: Note::Text(""),
        when: When::Always,
    },
    TargetSpec {
        id: "run_with_cache_1x128",
        text: "bridge run_with_cache, all hooks / raw HF forward (1x128)",
        ratio: timings("forward.1x128.bridge_cache", "forward.1x128.hf"),
        bound: Bound::Le(1.15),
        note: Note::Text(""),
        when: When::Always,
    },
    TargetSpec {
        id: "bridge_forward_8x128",
        text: "bridge forward, no hooks / raw HF forward (8x128)",
        ratio: timings("forward.8x128.bridge", "forward.8x128.hf"),
        bound: Bound::Le(1.05),
        note: Note::Text(""),
        when: When::Always,
    },
    TargetSpec {
        id: "run_with_cache_8x128",
        text: "bridge run_with_cache, all hooks / raw HF forward (8x128)",
        ratio: timings("forward.8x128.bridge_cache", "forward.8x128.hf"),
        bound: Bound::Le(1.15),
        note: Note::Text(""),
        when: When::Always,
    },
    TargetSpec {
        id: "backward_hooks_total",
        text: "forward + backward with a backward hook on every point / without (1x128)",
        ratio: timings("backward.hooked.total", "backward.plain.total"),
        bound: Bound::Le(1.25),
        note: Note::Text(""),
        when: When::Always,
    },
    TargetSpec {
        id: "backward_hooks_backward_only",
        text: "the backward half alone, hooked / plain (1x128)",
        ratio: timings("backward.hooked.backward", "backward.plain.backward"),
        bound: Bound::Le(1.25),
        note: Note::Text(""),
        when: When::Always,
    },
    TargetSpec {
        id: "kv_cache_speedup",
        text: "greedy generation, tokens/s with KV cache / without (bridge, 64 new tokens, 128-token prompt)",
        ratio: timings("generation.bridge_uncached.stat", "generation.bridge_cached.stat"),
        bound: Bound::Ge(5.0),
        note: Note::Text(""),
        when: When::Always,
    },
    TargetSpec {
        id: "kv_cache_vs_hf",
        text: "bridge cached generation tokens/s / raw HF model's cached generation tokens/s",
        ratio: timings("generation.hf_cached.stat", "generation.bridge_cached.stat"),
        bound: Bound::Ge(1.0),
        note: Note::Text(""),
        when: When::Always,
    },
    TargetSpec {
        id: "load_time",
        text: "bridge load / plain read of the safetensors file (warm page cache)",
        ratio: timings("load.stats.bridge", "load.stats.read"),
        bound: Bound::Le(2.0),
        note: Note::Text(""),
        when: When::Always,
    },
    TargetSpec {
        id: "load_single_copy",
        text: "peak anonymous memory growth during bridge load / safetensors file size",
        ratio: figures(
            (Run::Rust, "load_memory.bridge.peak_anon_growth_mib"),
            (Run::Rust, "load_memory.bridge.file_mib"),
        ),
        bound: Bound::Le(1.1),
        note: Note::Text("1.0 = exactly one copy of the weights; 2.0 would be a second copy"),
        when: When::Always,
    },
    TargetSpec {
        id: "suite_wall",
        text: "Rust suite process wall time / Python run_benchmark_suite wall time",
        ratio: figures((Run::Rust, "suite.wall_s"), (Run::Python, "suite.suite_s")),
        bound: Bound::Le(0.25),
        note: SUITE_AGAINST,
        when: When::Always,
    },
    TargetSpec {
        id: "suite_rss",
        text: "Rust suite peak RSS / Python suite process peak RSS",
        ratio: figures((Run::Rust, "suite.peak_rss_mb"), (Run::Python, "suite.peak_rss_mb")),
        bound: Bound::Le(0.5),
        note: SUITE_AGAINST,
        when: When::Always,
    },
    TargetSpec {
        id: "suite_wall_tl4",
        text: "Rust suite process wall time / TransformerLens 4.3.0's suite (bridge only) process wall time",
        ratio: figures((Run::Rust, "suite.wall_s"), (Run::Tl4, "suite.process_wall_s")),
        bound: Bound::Le(0.4),
        note: TL4_SAME_RUN,
        when: When::WithTl4,
    },
    TargetSpec {
        id: "suite_rss_tl4",
        text: "Rust suite peak RSS / TransformerLens 4.3.0's suite process peak RSS",
        ratio: figures((Run::Rust, "suite.peak_rss_mb"), (Run::Tl4, "suite.peak_rss_mb")),
        bound: Bound::Le(0.75),
        note: TL4_SAME_RUN,
        when: When::WithTl4,
    },
    TargetSpec {
        id: "suite_gqa_wall",
        text: "Llama-family checkpoint: Rust suite process wall time / Python run_benchmark_suite wall time",
        ratio: figures((Run::Rust, "suite_gqa.wall_s"), (Run::Python, "suite_gqa.suite_s")),
        bound: Bound::Le(0.25),
        note: GQA_AGAINST,
        when: When::Measured("suite_gqa.wall_s"),
    },
    TargetSpec {
        id: "suite_gqa_rss",
        text: "Llama-family checkpoint: Rust suite peak RSS / Python suite process peak RSS",
        ratio: figures(
            (Run::Rust, "suite_gqa.peak_rss_mb"),
            (Run::Python, "suite_gqa.peak_rss_mb"),
        ),
        bound: Bound::Le(0.5),
        note: GQA_AGAINST,
        when: When::Measured("suite_gqa.wall_s"),
    },
    TargetSpec {
        id: "suite_gqa_wall_tl4",
        text: "Llama-family checkpoint: Rust suite process wall time / TransformerLens 4.3.0's suite process wall time",
        ratio: figures(
            (Run::Rust, "suite_gqa.wall_s"),
            (Run::Tl4, "suite_gqa.process_wall_s"),
        ),
        bound: Bound::Le(0.4),
        note: TL4_SAME_RUN,
        when: When::MeasuredWithTl4("suite_gqa.wall_s"),
    },
    TargetSpec {
        id: "suite_gqa_rss_tl4",
        text: "Llama-family checkpoint: Rust suite peak RSS / TransformerLens 4.3.0's suite process peak RSS",
        ratio: figures(
            (Run::Rust, "suite_gqa.peak_rss_mb"),
            (Run::Tl4, "suite_gqa.peak_rss_mb"),
        ),
        bound: Bound::Le(0.75),
        note: TL4_SAME_RUN,
        when: When::MeasuredWithTl4("suite_gqa.wall_s"),
    },
    TargetSpec {
        id: "patching_batched",
        text: "180-patch resid_pre sweep, batched / TransformerLens 3.9.0's get_act_patch_resid_pre",
        ratio: Ratio::Figures {
            numerator: (Run::Rust, "patching.batched_s"),
            numerator_min: Some((Run::Rust, "patching.batched_min_s")),
            denominator: (Run::Python, "patching.ht_s"),
        },
        bound: Bound::Le(0.2),
        note: Note::ByPythonRun("Python sweep measured in the same run", "no Python run"),
        when: When::Measured("patching.batched_s"),
    },
    TargetSpec {
        id: "patching_batched_vs_its_pass",
        text: "180-patch resid_pre sweep, batched / one unhooked forward of the 180 copies it runs",
        ratio: Ratio::Figures {
            numerator: (Run::Rust, "patching.batched_s"),
            numerator_min: Some((Run::Rust, "patching.batched_min_s")),
            denominator: (Run::Rust, "patching.batch_forward_s"),
        },
        bound: Bound::Le(1.5),
        note: Note::Text("both measured in this run"),
        when: When::Measured("patching.batched_s"),
    },
];

/// The three runs a report reads.
struct Runs<'a> {
    rust: &'a Value,
    python: Option<&'a Value>,
    tl4: Option<&'a Value>,
    /// The Python suite's anchors, read where no TransformerLens 3.9.0 run is given.
    anchors: Value,
}

impl Runs<'_> {
    fn figure(&self, (run, path): (Run, &str)) -> Option<f64> {
        match run {
            Run::Rust => get(self.rust, path),
            Run::Python => get(self.python.unwrap_or(&self.anchors), path),
            Run::Tl4 => self.tl4.and_then(|v| get(v, path)),
        }
    }

    /// The target of `spec`, or `None` where its run or figure is missing.
    fn target(&self, spec: &TargetSpec) -> Option<Target> {
        let applies = match spec.when {
            When::Always => true,
            When::WithTl4 => self.tl4.is_some(),
            When::Measured(path) => get(self.rust, path).is_some(),
            When::MeasuredWithTl4(path) => get(self.rust, path).is_some() && self.tl4.is_some(),
        };
        if !applies {
            return None;
        }
        let measured = match &spec.ratio {
            Ratio::Timings(numerator, denominator) => time_ratio(self.rust, numerator, denominator),
            Ratio::Figures {
                numerator,
                numerator_min,
                denominator,
            } => {
                let denominator = self.figure(*denominator);
                (
                    ratio(self.figure(*numerator), denominator),
                    numerator_min.and_then(|n| ratio(self.figure(n), denominator)),
                )
            }
        };
        let note = match spec.note {
            Note::Text(text) => text,
            Note::ByPythonRun(with, without) => {
                if self.python.is_some() {
                    with
                } else {
                    without
                }
            }
        };
        Some(target(spec.id, spec.text, measured, spec.bound, note))
    }
}

pub(crate) fn report(args: &ReportArgs) -> AnyResult<()> {
    let rust: Value = serde_json::from_str(&std::fs::read_to_string(&args.rust)?)?;
    let read = |path: &Option<PathBuf>| -> AnyResult<Option<Value>> {
        Ok(match path {
            Some(p) => Some(serde_json::from_str(&std::fs::read_to_string(p)?)?),
            None => None,
        })
    };
    let python = read(&args.python)?;
    let tl4 = read(&args.tl4)?;
    let runs = Runs {
        rust: &rust,
        python: python.as_ref(),
        tl4: tl4.as_ref(),
        anchors: json!({
            "suite": { "suite_s": ANCHOR_SUITE_S, "peak_rss_mb": ANCHOR_SUITE_RSS_MB }
        }),
    };
    let targets: Vec<Target> = TARGETS
        .iter()
        .filter_map(|spec| runs.target(spec))
        .collect();
    let md = render_markdown(&rust, python.as_ref(), tl4.as_ref(), &targets);
    std::fs::write(&args.md, md)?;
    let combined = json!({
        "machine": rust.get("machine"),
        "rust": rust,
        "python": python,
        "tl4": tl4,
        "targets": targets,
    });
    std::fs::write(&args.json, serde_json::to_string_pretty(&combined)? + "\n")?;
    let met = targets.iter().filter(|t| t.met == Some(true)).count();
    eprintln!(
        "tl-perf: {met}/{} targets met; wrote {} and {}",
        targets.len(),
        args.md.display(),
        args.json.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets_of(rust: &Value, python: Option<&Value>, tl4: Option<&Value>) -> Vec<Target> {
        let runs = Runs {
            rust,
            python,
            tl4,
            anchors: json!({}),
        };
        TARGETS
            .iter()
            .filter_map(|spec| runs.target(spec))
            .collect()
    }

    fn find<'a>(targets: &'a [Target], id: &str) -> &'a Target {
        targets
            .iter()
            .find(|t| t.id == id)
            .unwrap_or_else(|| panic!("no target {id}"))
    }

    #[test]
    fn the_llama_family_suite_targets_divide_their_own_section() {
        let rust = json!({
            "suite": { "wall_s": 10.0, "peak_rss_mb": 3000.0 },
            "suite_gqa": { "wall_s": 50.0, "peak_rss_mb": 9000.0 },
        });
        let python = json!({
            "suite": { "suite_s": 50.0, "peak_rss_mb": 4000.0 },
            "suite_gqa": { "suite_s": 250.0, "peak_rss_mb": 12000.0 },
        });
        let tl4 = json!({
            "suite": { "process_wall_s": 30.0, "peak_rss_mb": 3000.0 },
            "suite_gqa": { "process_wall_s": 100.0, "peak_rss_mb": 9000.0 },
        });
        let targets = targets_of(&rust, Some(&python), Some(&tl4));
        let wall = find(&targets, "suite_gqa_wall");
        assert_eq!((wall.measured, wall.met), (Some(0.2), Some(true)));
        let rss = find(&targets, "suite_gqa_rss");
        assert_eq!((rss.measured, rss.met), (Some(0.75), Some(false)));
        let wall_tl4 = find(&targets, "suite_gqa_wall_tl4");
        assert_eq!((wall_tl4.measured, wall_tl4.met), (Some(0.5), Some(false)));
        let rss_tl4 = find(&targets, "suite_gqa_rss_tl4");
        assert_eq!((rss_tl4.measured, rss_tl4.met), (Some(1.0), Some(false)));
        // GPT-2's suite targets read GPT-2's section.
        assert_eq!(find(&targets, "suite_wall").measured, Some(0.2));
    }

    #[test]
    fn without_the_llama_family_run_its_targets_are_not_reported() {
        let rust = json!({ "suite": { "wall_s": 10.0, "peak_rss_mb": 3000.0 } });
        let tl4 = json!({ "suite": { "process_wall_s": 30.0, "peak_rss_mb": 3000.0 } });
        let targets = targets_of(&rust, None, Some(&tl4));
        assert!(targets.iter().all(|t| !t.id.starts_with("suite_gqa")));
        // With the Rust figures but no TransformerLens 4.3.0 run, only the 3.9.0 ones appear.
        let rust = json!({ "suite_gqa": { "wall_s": 50.0, "peak_rss_mb": 9000.0 } });
        let ids: Vec<String> = targets_of(&rust, None, None)
            .into_iter()
            .map(|t| t.id)
            .filter(|id| id.starts_with("suite_gqa"))
            .collect();
        assert_eq!(ids, ["suite_gqa_wall", "suite_gqa_rss"]);
    }
}
