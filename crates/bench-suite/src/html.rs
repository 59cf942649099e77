//! The HTML report of `tl-bench run --html` and `tl-bench verify --html`: one self-contained
//! file (inline CSS, no script, nothing fetched) with the summary, every result, and for each
//! compared phase a heatmap of err per hook family x layer, for activations (`forward_hooks`)
//! and gradients (`backward_hooks`). Colours are log-scaled against the tolerance, so a layer
//! that nearly misses stands out from one that matches to the last bit.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::compare::tolerances_for;
use crate::model_args::parse_dtype;
use crate::report::ReportFile;
use crate::result::{BenchmarkResult, Severity};

/// The benchmarks whose per-hook errors become heatmaps, with what they compare.
const HEATMAPS: [(&str, &str, bool); 2] = [
    ("forward_hooks", "activations", false),
    ("backward_hooks", "gradients", true),
];

/// One model's report as a page.
pub fn render_run(report: &ReportFile) -> String {
    let title = format!("tl-bench: {}", report.info.model);
    let mut body = String::new();
    model_section(&mut body, report);
    page(&title, &body)
}

/// A row of `verify`'s summary, for the page's first table.
#[derive(Clone, Debug)]
pub struct VerifyRow {
    /// The model.
    pub model: String,
    /// `passed`, `failed`, or why it did not run.
    pub status: String,
    /// Whether it passed.
    pub passed: bool,
    /// The child's wall time.
    pub seconds: f64,
    /// The child's peak resident set.
    pub peak_rss_mib: Option<f64>,
}

/// `verify`'s page: the summary of every model, then each model's report.
pub fn render_verify(rows: &[VerifyRow], reports: &[ReportFile]) -> String {
    let mut body = String::new();
    let _ = writeln!(
        body,
        "<h1>tl-bench verify</h1><table><tr><th>model</th><th>status</th><th>time</th>\
         <th>peak memory</th></tr>"
    );
    for row in rows {
        let _ = writeln!(
            body,
            "<tr class=\"{}\"><td><a href=\"#{}\">{}</a></td><td>{}</td><td>{:.1} s</td><td>{}</td></tr>",
            if row.passed { "pass" } else { "fail" },
            anchor(&row.model),
            escape(&row.model),
            escape(&row.status),
            row.seconds,
            mib(row.peak_rss_mib),
        );
    }
    body.push_str("</table>\n");
    for report in reports {
        model_section(&mut body, report);
    }
    page("tl-bench verify", &body)
}

fn model_section(out: &mut String, report: &ReportFile) {
    let ran: Vec<&BenchmarkResult> = report.results.iter().filter(|r| r.ran()).collect();
    let failed = ran.iter().filter(|r| !r.passed).count();
    let _ = writeln!(
        out,
        "<section id=\"{}\"><h1>{}</h1><p class=\"{}\">{} — {} of {} checks passed, {} not \
         applicable · {} · {} · loading {:.2} s</p>",
        anchor(&report.info.model),
        escape(&report.info.model),
        if report.passed { "pass" } else { "fail" },
        if report.passed { "PASSED" } else { "FAILED" },
        ran.len() - failed,
        ran.len(),
        report.results.len() - ran.len(),
        escape(&report.info.device),
        escape(&report.info.dtype),
        report.load_seconds,
    );
    phase_table(out, report);
    let tolerance = parse_dtype(&report.info.dtype)
        .map(tolerances_for)
        .unwrap_or_else(|_| tolerances_for(tch::Kind::Float));
    for totals in &report.phases {
        for (benchmark, what, gradients) in HEATMAPS {
            let Some(result) = report
                .results
                .iter()
                .find(|r| r.phase == Some(totals.phase) && r.name == benchmark)
            else {
                continue;
            };
            if result.errors.is_empty() {
                continue;
            }
            let bound = if gradients {
                tolerance.gradients
            } else {
                tolerance.activations
            };
            heatmap(out, totals.phase, what, result, bound);
        }
    }
    results_table(out, report);
    out.push_str("</section>\n");
}

fn phase_table(out: &mut String, report: &ReportFile) {
    out.push_str(
        "<table><tr><th>phase</th><th>passed</th><th>failed</th><th>not applicable</th>\
         <th>time</th><th>peak memory</th></tr>\n",
    );
    for totals in &report.phases {
        let of_phase = || {
            report
                .results
                .iter()
                .filter(move |r| r.phase == Some(totals.phase))
        };
        let passed = of_phase().filter(|r| r.ran() && r.passed).count();
        let failed = of_phase().filter(|r| !r.passed).count();
        let skipped = of_phase().filter(|r| !r.ran()).count();
        let _ = writeln!(
            out,
            "<tr class=\"{}\"><td>{}</td><td>{passed}</td><td>{failed}</td><td>{skipped}</td>\
             <td>{:.2} s</td><td>{}</td></tr>",
            if failed == 0 { "pass" } else { "fail" },
            totals.phase,
            totals.seconds,
            mib(totals.peak_rss_mib),
        );
    }
    out.push_str("</table>\n");
}

/// Splits `blocks.3.attn.hook_z_grad` into (`attn.hook_z`, Some(3)); a name outside the blocks
/// keeps its name as the family, with no layer.
fn family_and_layer(name: &str) -> (String, Option<usize>) {
    let name = name.strip_suffix("_grad").unwrap_or(name);
    if let Some(rest) = name.strip_prefix("blocks.") {
        if let Some((layer, family)) = rest.split_once('.') {
            if let Ok(layer) = layer.parse() {
                return (family.to_owned(), Some(layer));
            }
        }
    }
    (name.to_owned(), None)
}

/// The colour of an err against its bound, on log10(err / bound): -4 and below pale green,
/// through yellow (-2) to orange at the bound; above the bound red; exactly 0 grey.
fn colour(err: f64, bound: f64) -> String {
    if err == 0.0 {
        return "#e0e0e0".to_owned();
    }
    if !err.is_finite() || err > bound {
        return "#d32f2f".to_owned();
    }
    let t = ((err / bound).log10() + DECADES).clamp(0.0, DECADES) / DECADES;
    let hue = 120.0 - 95.0 * t;
    let lightness = 82.0 - 27.0 * t;
    format!("hsl({hue:.0}, 75%, {lightness:.0}%)")
}

/// How many decades below the bound the colour scale spans.
const DECADES: f64 = 4.0;

/// A cell's text: the err with one significant digit (`3e-7`), `0`, or `✗`.
fn short(err: f64) -> String {
    if err == 0.0 {
        "0".to_owned()
    } else if !err.is_finite() {
        "✗".to_owned()
    } else {
        let text = format!("{err:.0e}");
        text.replace("e-", "e−")
    }
}

fn heatmap(out: &mut String, phase: u8, what: &str, result: &BenchmarkResult, bound: f64) {
    let mut cells: BTreeMap<(String, Option<usize>), (f64, String)> = BTreeMap::new();
    let mut layers = BTreeSet::new();
    let mut families: Vec<String> = Vec::new();
    for (name, &err) in &result.errors {
        let (family, layer) = family_and_layer(name);
        if let Some(layer) = layer {
            layers.insert(layer);
        }
        if !families.contains(&family) {
            families.push(family.clone());
        }
        let cell = cells.entry((family, layer)).or_insert((0.0, name.clone()));
        if err > cell.0 || !err.is_finite() {
            *cell = (err, name.clone());
        }
    }
    families.sort_by_key(|f| (cells.keys().any(|(g, l)| g == f && l.is_some()), f.clone()));
    let _ = writeln!(
        out,
        "<h2>Phase {phase}: {what} ({} hooks, worst err {:.2e}, bound {bound:.0e})</h2>\
         <table class=\"heat\"><tr><th>hook</th><th>model</th>",
        result.errors.len(),
        result
            .errors
            .values()
            .copied()
            .fold(0.0f64, |a, b| if b.is_finite() {
                a.max(b)
            } else {
                f64::INFINITY
            }),
    );
    for layer in &layers {
        let _ = write!(out, "<th>{layer}</th>");
    }
    out.push_str("</tr>\n");
    for family in &families {
        let _ = write!(out, "<tr><th>{}</th>", escape(family));
        for layer in std::iter::once(None).chain(layers.iter().map(|&l| Some(l))) {
            match cells.get(&(family.clone(), layer)) {
                Some((err, name)) => {
                    let _ = write!(
                        out,
                        "<td style=\"background:{}\" title=\"{}: err {}\">{}</td>",
                        colour(*err, bound),
                        escape(name),
                        if err.is_finite() {
                            format!("{err:.3e}")
                        } else {
                            "shape or non-finite mismatch".to_owned()
                        },
                        short(*err),
                    );
                }
                None => out.push_str("<td class=\"none\"></td>"),
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    legend(out, bound);
}

fn legend(out: &mut String, bound: f64) {
    out.push_str("<p class=\"legend\">err: ");
    for (label, err) in [
        ("0", 0.0),
        ("≤ 1e-4 x bound", bound * 1e-4),
        ("1e-3 x", bound * 1e-3),
        ("1e-2 x", bound * 1e-2),
        ("1e-1 x", bound * 1e-1),
        ("bound", bound),
        ("over", bound * 10.0),
    ] {
        let _ = write!(
            out,
            "<span style=\"background:{}\">{label}</span> ",
            colour(err, bound)
        );
    }
    out.push_str("(hover a cell for the hook and its err)</p>\n");
}

fn results_table(out: &mut String, report: &ReportFile) {
    out.push_str(
        "<h2>Every result</h2><table><tr><th>phase</th><th>check</th><th>verdict</th>\
         <th>message</th><th>time</th></tr>\n",
    );
    for result in &report.results {
        let (class, verdict) = match (result.severity, result.passed) {
            (Severity::Skipped, _) => ("skip", "NOT APPLICABLE"),
            (_, true) => ("pass", "PASS"),
            (_, false) => ("fail", "FAIL"),
        };
        let details = if result.details.is_empty() {
            String::new()
        } else {
            format!(
                "<details><summary>details</summary><pre>{}</pre></details>",
                escape(&serde_json::to_string_pretty(&result.details).unwrap_or_default())
            )
        };
        let _ = writeln!(
            out,
            "<tr class=\"{class}\"><td>{}</td><td>{}</td><td>{verdict}</td><td>{}{details}</td>\
             <td>{}</td></tr>",
            result.phase.map(|p| p.to_string()).unwrap_or_default(),
            escape(&result.name),
            escape(&result.message),
            result
                .seconds
                .map(|s| format!("{s:.3} s"))
                .unwrap_or_default(),
        );
    }
    out.push_str("</table>\n");
}

fn mib(value: Option<f64>) -> String {
    value
        .map(|m| format!("{m:.0} MiB"))
        .unwrap_or_else(|| "—".into())
}

fn anchor(model: &str) -> String {
    model
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}\
th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top;font-size:13px}\
tr.pass td:first-child{border-left:4px solid #2e7d32}tr.fail td:first-child{border-left:4px solid #d32f2f}\
tr.skip{color:#777}p.pass{color:#2e7d32;font-weight:bold}p.fail{color:#d32f2f;font-weight:bold}\
table.heat td{min-width:34px;height:16px;padding:0 2px;font-size:10px;font-family:monospace;text-align:center}table.heat td.none{background:#fff}\
table.heat th{font-weight:normal;font-family:monospace}\
p.legend span{padding:1px 6px;border:1px solid #bbb;font-size:12px}\
pre{margin:0;font-size:12px}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>{STYLE}</style></head><body>\n{body}</body></html>\n",
        escape(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_family_and_layer() {
        assert_eq!(
            family_and_layer("blocks.11.attn.hook_z_grad"),
            ("attn.hook_z".to_owned(), Some(11))
        );
        assert_eq!(
            family_and_layer("ln_final.hook_scale"),
            ("ln_final.hook_scale".to_owned(), None)
        );
    }

    #[test]
    fn a_hook_over_the_bound_is_a_red_cell_naming_it() {
        use crate::report::RunInfo;
        use crate::suite::PhaseTotals;

        let result = BenchmarkResult::fail("forward_hooks", "1 mismatch")
            .in_phase(2)
            .with_errors([
                ("blocks.0.hook_resid_pre".to_owned(), 2e-7),
                ("blocks.1.attn.hook_z".to_owned(), 3e-4),
                ("hook_embed".to_owned(), f64::INFINITY),
            ]);
        let report = ReportFile {
            info: RunInfo {
                model: "broken".into(),
                device: "cpu".into(),
                dtype: "f32".into(),
            },
            passed: false,
            load_seconds: 0.0,
            phases: vec![PhaseTotals {
                phase: 2,
                seconds: 1.0,
                peak_rss_mib: None,
                recording_seconds: None,
            }],
            results: vec![result],
        };
        let page = render_run(&report);
        assert!(page.contains(
            "<td style=\"background:#d32f2f\" title=\"blocks.1.attn.hook_z: err 3.000e-4\">3e−4</td>"
        ));
        assert!(page.contains("title=\"hook_embed: err shape or non-finite mismatch\">✗</td>"));
        assert!(page.contains("Phase 2: activations (3 hooks, worst err inf, bound 1e-5)"));
        assert!(page.contains("<p class=\"fail\">FAILED"));
    }

    #[test]
    fn colours_order_by_closeness_to_the_bound() {
        assert_eq!(colour(2e-5, 1e-5), "#d32f2f");
        assert_eq!(colour(f64::INFINITY, 1e-5), "#d32f2f");
        assert_eq!(colour(0.0, 1e-5), "#e0e0e0");
        assert_ne!(colour(1e-9, 1e-5), colour(9e-6, 1e-5));
        assert_eq!(
            colour(1e-12, 1e-5),
            colour(1e-9, 1e-5),
            "the scale stops 4 decades down"
        );
        assert_eq!(short(3.2e-7), "3e−7");
        assert_eq!(
            escape("<a href=\"x\">&"),
            "&lt;a href=&quot;x&quot;&gt;&amp;"
        );
    }
}
