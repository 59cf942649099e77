//! The markdown page: tables of every figure, ratio and target.

use std::fmt::Write as _;

use serde_json::Value;

use crate::causes::cause;
use crate::suite_times::SuiteTimes;
use crate::targets::{fmt_opt, get, ratio, Target, ANCHOR_SUITE_RSS_MB, ANCHOR_SUITE_S};

/// (largest `others_cores`, total `retaken`) over every timing found under `v`.
fn contention(v: Option<&Value>) -> (f64, u64) {
    let mut worst = 0.0f64;
    let mut retaken = 0u64;
    let mut stack: Vec<&Value> = v.into_iter().collect();
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) => {
                if let Some(c) = map.get("others_cores").and_then(Value::as_f64) {
                    worst = worst.max(c);
                }
                retaken += map.get("retaken").and_then(Value::as_u64).unwrap_or(0);
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    (worst, retaken)
}

fn contention_line(rust: Option<&Value>, python: Option<&Value>) -> String {
    let describe = |(worst, retaken): (f64, u64)| {
        format!("at most {worst:.2} cores busy in other processes during a kept sample, {retaken} samples retaken")
    };
    let mut line = format!("\nShared machine: Rust {}", describe(contention(rust)));
    if python.is_some() {
        let _ = write!(line, "; Python {}", describe(contention(python)));
    }
    line.push('.');
    line
}

/// The patching sweep's table, with its bound computed from the run: the patched copies'
/// token-forwards cost what the same number of tokens costs in one-patch passes, less the weights
/// each of those passes streams.
fn render_patching(out: &mut String, rust: &Value, python: Option<&Value>, tl4: Option<&Value>) {
    let r = |path: &str| get(rust, path);
    let p = |path: &str| python.and_then(|py| get(py, path));
    let Some(batched) = r("patching.batched_s") else {
        return;
    };
    let patches = r("patching.patches").unwrap_or(0.0);
    let _ = writeln!(
        out,
        "\n## Activation patching ({patches:.0}-patch `resid_pre` sweep, an IOI-style pair of {:.0} \
         tokens, the metric a logit difference)\n",
        r("patching.prompt_tokens").unwrap_or(0.0)
    );
    let _ = writeln!(
        out,
        "| | seconds | vs TransformerLens 3.9.0 |\n|---|---|---|"
    );
    let tl = p("patching.ht_s");
    let row = |out: &mut String, label: &str, seconds: Option<f64>| {
        let _ = writeln!(
            out,
            "| {label} | {} | {} |",
            fmt_opt(seconds, 2),
            fmt_opt(ratio(seconds, tl), 3)
        );
    };
    row(
        out,
        "ours, one patch per forward pass",
        r("patching.one_at_a_time_s"),
    );
    row(
        out,
        "ours, batched (batch size from a 1 GiB budget: one pass)",
        Some(batched),
    );
    if tl.is_some() {
        row(out, "TransformerLens 3.9.0 `get_act_patch_resid_pre`", tl);
    }
    if let Some(seconds) = tl4.and_then(|v| get(v, "patching.ht_s")) {
        row(
            out,
            "TransformerLens 4.3.0 `get_act_patch_resid_pre` through its TransformerBridge",
            Some(seconds),
        );
    }
    render_workloads(out, rust, python, tl4);
    let forward_s = r("patching.forward_ms").map(|ms| ms / 1e3);
    let batch_forward = r("patching.batch_forward_s");
    let _ = writeln!(
        out,
        "\nBatched and one-at-a-time results differ by at most {} (max abs). One unpatched \
         forward pass of the corrupted prompt takes {} ms, so {patches:.0} one-patch passes cost \
         at least {} s, most of it streaming the 0.5 GB of weights once per pass. Batched, the \
         sweep is one pass over {patches:.0} copies ({patches:.0} x {:.0} tokens), which streams \
         the weights once and is bound by its arithmetic: the same pass without patches or \
         metric takes {} s, so the batched sweep costs {}x the forward pass it makes (patching \
         and metrics are the rest).",
        fmt_opt(r("patching.batched_vs_one_at_a_time_max_abs_diff"), 8),
        fmt_opt(r("patching.forward_ms"), 1),
        fmt_opt(forward_s.map(|f| f * patches), 2),
        r("patching.prompt_tokens").unwrap_or(0.0),
        fmt_opt(batch_forward, 2),
        fmt_opt(ratio(Some(batched), batch_forward), 2),
    );
}

/// Attribution patching and the `run_with_cache` loop, ours and each TransformerLens's.
fn render_workloads(out: &mut String, rust: &Value, python: Option<&Value>, tl4: Option<&Value>) {
    let ours = |k: &str| get(rust, &format!("patching.{k}"));
    let theirs = |v: Option<&Value>, k: &str| v.and_then(|v| get(v, &format!("patching.{k}")));
    let _ = writeln!(
        out,
        "\n| workload (median seconds) | ours (bridge) | TransformerLens 3.9.0 (HookedTransformer) | \
         TransformerLens 4.3.0 (TransformerBridge) | ours / 3.9.0 | ours / 4.3.0 |\n|---|---|---|---|---|---|"
    );
    for (label, key) in [
        (
            "attribution patching: clean run_with_cache, corrupted forward + backward caching every hook",
            "attribution_s",
        ),
        (
            "run_with_cache of every hook, 64 prompts of 32 tokens in batches of 8",
            "cache_loop_s",
        ),
    ] {
        let (a, b, c) = (ours(key), theirs(python, key), theirs(tl4, key));
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {} |",
            fmt_opt(a, 2),
            fmt_opt(b, 2),
            fmt_opt(c, 2),
            fmt_opt(ratio(a, b), 3),
            fmt_opt(ratio(a, c), 3)
        );
    }
    for (who, v) in [("3.9.0", python), ("4.3.0", tl4)] {
        if let Some(error) = v
            .and_then(|v| v.pointer("/patching/attribution_error"))
            .and_then(Value::as_str)
        {
            let _ = writeln!(
                out,
                "\nTransformerLens {who}'s attribution patching failed: {error}"
            );
        }
    }
}

/// The suite on the Llama-family checkpoint: what it is, the table, where the time goes.
fn render_gqa_suite(out: &mut String, rust: &Value, python: Option<&Value>, tl4: Option<&Value>) {
    let r = |path: &str| get(rust, &format!("suite_gqa.{path}"));
    let _ = writeln!(
        out,
        "\n## The full suite (phases 1-3), Llama-family checkpoint\n\n\
         A Qwen2.5-0.5B-shaped checkpoint with random weights ({} M parameters in f32, {} MiB: 24 \
         layers, d_model 896, 14 query heads sharing 2 key/value heads, MLP 4864, vocabulary \
         151936, tied embeddings, RoPE) written by `xtask/python/make_perf_checkpoint.py \
         --shape qwen2.5-0.5b` into models-cache/generated/qwen2.5-0.5b/, and served to \
         TransformerLens offline as `Qwen/Qwen2.5-0.5B` (it reads a Qwen2 model's shape from \
         config.json). The real tokenizer cannot be fetched here; the checkpoint carries \
         tiny-qwen2's (the same byte-level BPE scheme, 2259 tokens with its specials), so texts tokenize longer \
         than with Qwen's, for every implementation alike. TransformerLens's `generation` check \
         fails on it (both versions): it decodes the greedy tokens and asks for new text, and \
         random weights pick mostly ids beyond the 2259 the tokenizer has, which decode to \
         nothing; ours compares token ids.\n",
        fmt_opt(
            r("checkpoint.weights_mib").map(|m| m * 1_048_576.0 / 4.0 / 1e6),
            0
        ),
        fmt_opt(r("checkpoint.weights_mib"), 0),
    );
    render_suite_table(out, "suite_gqa", rust, python, tl4);
    if let Some(times) = SuiteTimes::of(rust, "suite_gqa") {
        render_suite_times(out, &times, r("wall_s"));
    }
}

/// The failed checks a run's suite section `key` lists.
fn failures_of<'a>(run: Option<&'a Value>, key: &str) -> Vec<&'a str> {
    run.and_then(|v| v.pointer(&format!("/{key}/failures")))
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The suite's table for the checkpoint whose figures are under `key` (`suite`, `suite_gqa`) in
/// each run: ours, TransformerLens 3.9.0's and 4.3.0's, the runs' spread and the contention.
fn render_suite_table(
    out: &mut String,
    key: &str,
    rust: &Value,
    python: Option<&Value>,
    tl4: Option<&Value>,
) {
    let r = |path: &str| get(rust, &format!("{key}.{path}"));
    let p = |path: &str| python.and_then(|py| get(py, &format!("{key}.{path}")));
    let _ = writeln!(
        out,
        "| | wall time (s) | peak RSS (MB) | CPU time (s) | results | passed | failed |\n|---|---|---|---|---|---|---|"
    );
    // One row: the figures of one run's section.
    let row = |out: &mut String, label: &str, wall: &str, figure: &dyn Fn(&str) -> Option<f64>| {
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {} | {} |",
            fmt_opt(figure(wall), 1),
            fmt_opt(figure("peak_rss_mb"), 0),
            fmt_opt(figure("cpu_s"), 1),
            fmt_opt(figure("results"), 0),
            fmt_opt(figure("passed"), 0),
            fmt_opt(figure("failed"), 0)
        );
    };
    let process_row = |out: &mut String, label: &str, seconds: Option<f64>| {
        let _ = writeln!(out, "| {label} | {} | | | | | |", fmt_opt(seconds, 1));
    };
    row(out, "Rust `tl-bench --quiet` (whole process)", "wall_s", &r);
    if python.is_some() {
        row(
            out,
            "Python TransformerLens 3.9.0 `run_benchmark_suite` (the call)",
            "suite_s",
            &p,
        );
        process_row(
            out,
            "Python, whole process (imports included)",
            p("process_wall_s"),
        );
        if let Some(v) = tl4 {
            let t = |path: &str| get(v, &format!("{key}.{path}"));
            let torch = v.pointer("/versions/torch").and_then(Value::as_str);
            row(
                out,
                &format!(
                    "Python TransformerLens 4.3.0 `run_benchmark_suite`, bridge only (the call; torch {})",
                    torch.unwrap_or("?")
                ),
                "suite_s",
                &t,
            );
            process_row(
                out,
                "TransformerLens 4.3.0, whole process (imports included)",
                t("process_wall_s"),
            );
        }
    } else if key == "suite" {
        let _ = writeln!(
            out,
            "| Python, earlier measurement (not this run) | {ANCHOR_SUITE_S} | {ANCHOR_SUITE_RSS_MB} | | 39 | 39 | 0 |"
        );
    }
    if let Some(walls) = rust
        .pointer(&format!("/{key}/wall_s_runs"))
        .and_then(Value::as_array)
    {
        let walls: Vec<String> = walls.iter().map(|w| fmt_opt(w.as_f64(), 1)).collect();
        let _ = writeln!(
            out,
            "\nThe Rust suite ran {} times ({} s); the median run is shown, with the largest \
             peak RSS of the runs.",
            walls.len(),
            walls.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "\nOther processes kept {} cores busy on average while the Rust suite ran{}.",
        fmt_opt(r("others_cores"), 2),
        if python.is_some() {
            format!(
                ", {} while the Python suite ran",
                fmt_opt(p("others_cores"), 2)
            )
        } else {
            String::new()
        }
    );
    for f in failures_of(Some(rust), key) {
        let _ = writeln!(out, "\nRust suite failure: `{f}`");
    }
    for (who, run) in [("3.9.0", python), ("4.3.0", tl4)] {
        let failures: Vec<String> = failures_of(run, key)
            .into_iter()
            .map(|f| format!("`{f}`"))
            .collect();
        if !failures.is_empty() {
            let _ = writeln!(
                out,
                "\nTransformerLens {who}'s suite failed {}.",
                failures.join(", ")
            );
        }
    }
}

pub(crate) fn render_markdown(
    rust: &Value,
    python: Option<&Value>,
    tl4: Option<&Value>,
    targets: &[Target],
) -> String {
    let r = |path: &str| get(rust, path);
    let p = |path: &str| python.and_then(|py| get(py, path));
    let m = rust.get("machine").cloned().unwrap_or(Value::Null);
    let ms = |s: &Value, k: &str| s.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
    let mut out = String::new();
    let _ = writeln!(out, "# Performance\n");
    let _ = writeln!(
        out,
        "Generated by `cargo xtask perf{}` (crates/bench-suite/src/bin/tl-perf/, \
         xtask/python/perf_python.py); do not edit by hand. Model: a GPT-2-small-shaped checkpoint \
         (12 layers, d_model 768, 12 heads, vocab 50257, n_positions 1024, 124M parameters, random \
         weights, real GPT-2 tokenizer) written by xtask/python/make_perf_checkpoint.py into \
         models-cache/generated/gpt2-small/. f32, no_grad unless stated, random token ids.\n",
        if python.is_some() {
            " --compare-python"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "| machine | |\n|---|---|");
    let _ = writeln!(out, "| date | {} |", ms(&m, "date_utc"));
    let _ = writeln!(
        out,
        "| commit | `{}`{} |",
        ms(&m, "commit"),
        if m.get("worktree_modified").and_then(Value::as_bool) == Some(true) {
            " (with uncommitted changes)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "| CPU | {} × {} |",
        m.get("nproc").and_then(Value::as_u64).unwrap_or(0),
        ms(&m, "cpu")
    );
    let _ = writeln!(out, "| memory | {} GiB |", fmt_opt(get(&m, "mem_gib"), 1));
    if let Some(gpu) = m.get("gpu").and_then(Value::as_str) {
        let _ = writeln!(out, "| GPU | {gpu} |");
    }
    let _ = writeln!(
        out,
        "| device, threads | {}, libtorch intra-op threads {} |",
        ms(&m, "device"),
        m.get("torch_threads").and_then(Value::as_i64).unwrap_or(0)
    );
    let _ = writeln!(
        out,
        "| build | libtorch 2.13.0 / tch 0.26.0, {} |",
        ms(&m, "profile")
    );
    let _ =
        writeln!(
        out,
        "| load average (1/5/15 min) | {} at the start, {} at the end of the Rust measurements |",
        rust.get("loadavg_start").and_then(Value::as_str).unwrap_or("?"),
        rust.get("loadavg_end").and_then(Value::as_str).unwrap_or("?")
    );
    if let Some(py) = python {
        let v = |k: &str| {
            py.get("versions")
                .and_then(|v| v.get(k))
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned()
        };
        let _ = writeln!(
            out,
            "| Python | torch {}, transformers {}, transformer-lens {}, {} threads |",
            v("torch"),
            v("transformers"),
            v("transformer_lens"),
            py.get("threads").and_then(Value::as_i64).unwrap_or(0)
        );
    }
    if rust.get("quick").and_then(Value::as_bool) == Some(true) {
        let _ = writeln!(
            out,
            "\n**--quick run: one repeat each and 8 generated tokens; a smoke test, not a measurement.**"
        );
    }

    let _ = writeln!(out, "\n## Targets\n");
    let _ = writeln!(
        out,
        "| target | measured (medians) | from the fastest samples | bound | met |\n|---|---|---|---|---|"
    );
    for t in targets {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        let note = if t.note.is_empty() {
            String::new()
        } else {
            format!(" ({})", t.note)
        };
        let _ = writeln!(
            out,
            "| {}{} | {} | {} | {} | {} |",
            t.target,
            note,
            fmt_opt(t.measured, 3),
            fmt_opt(t.measured_min, 3),
            t.bound,
            met
        );
    }

    let _ = writeln!(
        out,
        "\n### What the figures rest on\n\n\
         * The bridge runs HuggingFace's fused kernels (`layer_norm`, one `c_attn` product) unless \
         a hook edits an intermediate they skip (`HookPoint::run_noting_edits`: a replacement, an \
         in-place change seen through the storage's version counter, or a backward hook); hooks \
         that only read, `run_with_cache` included, leave the pass and its logits bit-identical \
         (docs/bridge-hook-names.md).\n\
         * The zero `b_U` the bridge adds is left out of the unembedding while it is zero and \
         needs no gradient; the attention mask is built once per pass, TransformerLens's `-inf` \
         is written in place (and not at all for one new position without padding, where \
         nothing is masked), and the empty-row fills of its softmax run only with a padding \
         mask.\n\
         * `tl-bench` and `tl-perf` call `lens_core::allocator::keep_freed_memory` (glibc serves \
         every block from its heap and keeps freed ones for reuse instead of unmapping them); programs linking the \
         crates can do the same.\n\
         * The suite's comparisons are streaming reductions (`aminmax`, chunked differences), \
         with no full-size f64 copies or masks unless some entry is not finite.\n\
         * Timings: each figure is a median over repeats after a warm-up, with the models \
         alternating; a sample taken while other processes kept a core busy is taken again.\n"
    );

    let missed: Vec<&Target> = targets.iter().filter(|t| t.met == Some(false)).collect();
    if !missed.is_empty() {
        let _ = writeln!(
            out,
            "\n### Why targets are missed\n\n\
             Causes found with this harness, `perf` and timing the pieces alone; the figures in \
             the text are this run's.\n"
        );
        let mut seen = std::collections::BTreeSet::new();
        for t in missed {
            if let Some((key, text)) = cause(t, rust, python, tl4) {
                if seen.insert(key) {
                    let _ = writeln!(out, "* {text}\n");
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "\n## Forward passes (median ms; ratio to the raw HF forward of the same implementation)\n"
    );

    let _ = writeln!(
        out,
        "| | Rust 1x128 | ratio | Rust 8x128 | ratio | Python 1x128 | ratio | Python 8x128 | ratio |\n|---|---|---|---|---|---|---|---|---|"
    );
    let rows: [(&str, &str, &str); 7] = [
        (
            "raw HF forward (Rust: `Gpt2LMHeadModel`, eager attention; Python: default attention)",
            "hf",
            "hf",
        ),
        ("raw HF forward, eager attention", "", "hf_eager"),
        (
            "the bridge's own HF model (`hf_model()`, with the zero `b_U` the bridge adds)",
            "hf_in_bridge",
            "",
        ),
        ("bridge forward, no hooks", "bridge", "tl_bridge"),
        (
            "bridge run_with_cache, every hook",
            "bridge_cache",
            "tl_bridge_cache",
        ),
        ("HookedTransformer forward", "hooked", "ht"),
        (
            "HookedTransformer run_with_cache, every hook",
            "hooked_cache",
            "ht_cache",
        ),
    ];
    let cell = |v: &Value, key: &str, b: &str| -> String {
        if key.is_empty() {
            return " | |".to_owned();
        }
        let t = get(v, &format!("forward.{b}.{key}.median_ms"));
        let hf = get(v, &format!("forward.{b}.hf.median_ms"));
        format!(" {} | {} |", fmt_opt(t, 1), fmt_opt(ratio(t, hf), 3))
    };
    for (label, rk, pk) in rows {
        if python.is_none() && rk.is_empty() {
            continue;
        }
        let mut line = format!("| {label} |");
        for b in ["1x128", "8x128"] {
            line.push_str(&cell(rust, rk, b));
        }
        for b in ["1x128", "8x128"] {
            match python {
                Some(py) => line.push_str(&cell(py, pk, b)),
                None => line.push_str(" | |"),
            }
        }
        let _ = writeln!(out, "{line}");
    }
    if python.is_some() {
        let _ = writeln!(
            out,
            "\nRust time / Python time for the same computation:\n\n\
             | | 1x128 | 8x128 |\n|---|---|---|"
        );
        for (label, rk, pk) in [
            ("raw HF forward (both eager attention)", "hf", "hf_eager"),
            ("bridge forward", "bridge", "tl_bridge"),
            ("bridge run_with_cache", "bridge_cache", "tl_bridge_cache"),
            ("HookedTransformer forward", "hooked", "ht"),
            (
                "HookedTransformer run_with_cache",
                "hooked_cache",
                "ht_cache",
            ),
        ] {
            let mut line = format!("| {label} |");
            for b in ["1x128", "8x128"] {
                let _ = write!(
                    line,
                    " {} |",
                    fmt_opt(
                        ratio(
                            r(&format!("forward.{b}.{rk}.median_ms")),
                            p(&format!("forward.{b}.{pk}.median_ms"))
                        ),
                        3
                    )
                );
            }
            let _ = writeln!(out, "{line}");
        }
    }
    let _ = writeln!(
        out,
        "{}",
        contention_line(rust.get("forward"), python.and_then(|py| py.get("forward")))
    );
    let _ = writeln!(
        out,
        "\n## Forward + backward (bridge, 1x128, TransformerLens loss; median ms)\n"
    );
    let _ = writeln!(
        out,
        "| | forward + backward | forward half | backward half |\n|---|---|---|---|"
    );
    for (label, k) in [
        ("plain", "plain"),
        ("a backward hook on every hook point", "hooked"),
    ] {
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} |",
            fmt_opt(r(&format!("backward.{k}.total.median_ms")), 1),
            fmt_opt(r(&format!("backward.{k}.forward.median_ms")), 1),
            fmt_opt(r(&format!("backward.{k}.backward.median_ms")), 1)
        );
    }
    let _ = writeln!(
        out,
        "\nBackward hooks that fired in one hooked pass: {}.",
        rust.pointer("/backward/backward_hooks_fired")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    );

    let _ = writeln!(out, "{}", contention_line(rust.get("backward"), None));
    render_patching(&mut out, rust, python, tl4);
    let _ = writeln!(
        out,
        "\n## Greedy generation ({} new tokens from a {}-token prompt, batch 1)\n",
        rust.pointer("/generation/new_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        rust.pointer("/generation/prompt_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    );
    let _ = writeln!(out, "| | seconds (median) | tokens/s |\n|---|---|---|");
    for (label, k) in [
        ("bridge, KV cache", "bridge_cached"),
        ("raw HF model, KV cache", "hf_cached"),
        ("bridge, no cache", "bridge_uncached"),
    ] {
        let _ = writeln!(
            out,
            "| {label} | {} | {} |",
            fmt_opt(r(&format!("generation.{k}.seconds")), 2),
            fmt_opt(r(&format!("generation.{k}.tokens_per_s")), 1)
        );
    }
    if python.is_some() {
        let _ = writeln!(
            out,
            "| Python HF `generate`, KV cache | {} | {} |",
            fmt_opt(p("generation.hf_cached.seconds"), 2),
            fmt_opt(p("generation.hf_cached.tokens_per_s"), 1)
        );
    }
    let _ = writeln!(
        out,
        "\nTokens identical across the three Rust runs: {}.",
        rust.pointer("/generation/tokens_identical")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    );

    let _ = writeln!(out, "{}", contention_line(rust.get("generation"), None));
    let _ = writeln!(out, "\n## Loading (warm page cache; median ms)\n");
    let _ = writeln!(
        out,
        "| | ms | / plain read | peak anonymous memory growth (MiB) | peak RSS growth incl. mapped file (MiB) |\n|---|---|---|---|---|"
    );
    let read = r("load.stats.read.median_ms");
    for (label, k, probe) in [
        ("`std::fs::read` of model.safetensors", "read", Some("read")),
        ("TransformerBridge::boot", "bridge", Some("bridge")),
        (
            "HookedTransformer::from_pretrained_no_processing",
            "hooked",
            Some("hooked"),
        ),
        ("of which: Weights::load alone", "hf_weights_only", None),
        ("of which: tokenizer.json alone", "tokenizer_only", None),
    ] {
        let v = r(&format!("load.stats.{k}.median_ms"));
        let (anon, rss) = match probe {
            Some(pk) => (
                r(&format!("load_memory.{pk}.peak_anon_growth_mib")),
                r(&format!("load_memory.{pk}.peak_rss_growth_mib")),
            ),
            None => (None, None),
        };
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} |",
            fmt_opt(v, 1),
            fmt_opt(ratio(v, read), 2),
            fmt_opt(anon, 0),
            fmt_opt(rss, 0)
        );
    }
    let _ = writeln!(
        out,
        "\nmodel.safetensors: {} MiB. Memory columns come from a fresh process per load \
         (`tl-perf load-probe`), sampling /proc/self/status every millisecond.",
        fmt_opt(r("load_memory.bridge.file_mib"), 0)
    );
    if python.is_some() {
        let _ = writeln!(
            out,
            "Python: `GPT2LMHeadModel.from_pretrained` {} ms, `HookedTransformer.from_pretrained_no_processing` {} ms, plain read {} ms.",
            fmt_opt(p("load.hf.median_ms"), 0),
            fmt_opt(p("load.ht.median_ms"), 0),
            fmt_opt(p("load.read.median_ms"), 0)
        );
    }

    let _ = writeln!(
        out,
        "\n## The full suite (phases 1-3), GPT-2-small-shaped checkpoint\n"
    );
    render_suite_table(&mut out, "suite", rust, python, tl4);
    if let Some(times) = SuiteTimes::of(rust, "suite") {
        render_suite_times(&mut out, &times, r("suite.wall_s"));
    }
    if let Some(steps) = rust
        .pointer("/suite_profile/steps")
        .and_then(Value::as_array)
    {
        let _ = writeln!(
            out,
            "\n### Where the Rust suite's time goes (`--profile-suite`: the suite once more, in \
             its own process, time and RSS between the suite's progress calls)\n\n\
             The suite names Phase 1's benchmarks and Phase 3's weight checks before running \
             them, but each comparison benchmark of Phases 2 and 3 after it has run: an interval \
             *from* a Phase 1 benchmark's or weight check's name, or *to* a comparison \
             benchmark's name, is that benchmark's time (the interval from \
             `forward_pass_logits` to `generation` holds both, and the HookedTransformer's \
             load). Total {} s, peak RSS {} MiB.\n",
            fmt_opt(r("suite_profile.total_s"), 1),
            fmt_opt(r("suite_profile.vm_hwm_mib"), 0)
        );
        let _ = writeln!(
            out,
            "| from | to | seconds | RSS at start (MiB) | peak RSS (MiB) |\n|---|---|---|---|---|"
        );
        let text = |s: &Value, k: &str| s.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
        for s in steps {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                text(s, "from"),
                text(s, "to"),
                fmt_opt(s.get("seconds").and_then(Value::as_f64), 2),
                fmt_opt(s.get("rss_mib_at_start").and_then(Value::as_f64), 0),
                fmt_opt(s.get("rss_mib_peak").and_then(Value::as_f64), 0)
            );
        }
    }
    if rust.get("suite_gqa").is_some() {
        render_gqa_suite(&mut out, rust, python, tl4);
    }
    let _ = writeln!(
        out,
        "\n## How it is measured\n\n\
         Medians over repeats after one warm-up run of each variant; the variants of a table are \
         interleaved repeat by repeat, so load from other processes hits them alike. On the CPU \
         libtorch runs {} intra-op threads. A sample during which other processes kept more than \
         a quarter of a core busy is taken again (at most three times; the counts are given \
         under each table). Raw HF forward = `Gpt2LMHeadModel` loaded on its own (no hook \
         points, no unembedding bias); `run_with_cache` caches every hook point that fires (394 \
         for the bridge, 210 for the HookedTransformer). The suite runs as a separate \
         `tl-bench --quiet` process, three times (the median wall time is kept: page faults of \
         fresh memory make a run vary by a second or more here): wall time from spawn to exit, \
         peak RSS and CPU time the child's own (`wait4`; the largest peak over the suite's runs; \
         cross-checked by polling VmHWM). The Python suite runs \
         the same way (`run_benchmark_suite(phases=[1, 2, 3])` in a child process, its peak RSS \
         the child's own `getrusage(RUSAGE_SELF)`, the model under the name `gpt2` in a local \
         offline Hugging Face cache, as the earlier figures were measured). The machine may be shared: compare figures of one run, not across runs.",
        m.get("torch_threads").and_then(Value::as_i64).unwrap_or(0)
    );
    out
}

/// The Rust suite's own account of its time: load, each phase, and the groups of checks that
/// take most of it.
fn render_suite_times(out: &mut String, times: &SuiteTimes, wall: Option<f64>) {
    let _ = writeln!(
        out,
        "\n### Where the Rust suite's time goes (its own report, `tl-bench --json`)\n\n\
         | | seconds | of which recording both models once | peak RSS at its end (MiB) |\n\
         |---|---|---|---|"
    );
    let _ = writeln!(
        out,
        "| booting the bridge, tokenizing the inputs | {} | | |",
        fmt_opt(times.load_s, 2)
    );
    let label = |n: u8| match n {
        2 => "Phase 2 (the HookedTransformer's load included)",
        3 => "Phase 3 (processing both models' weights included)",
        _ => "Phase 1",
    };
    for phase in &times.phases {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            label(phase.phase),
            fmt_opt(Some(phase.seconds), 2),
            fmt_opt(phase.recording_seconds, 2),
            fmt_opt(phase.peak_rss_mib, 0)
        );
    }
    let accounted =
        times.load_s.unwrap_or(0.0) + times.phases.iter().map(|p| p.seconds).sum::<f64>();
    let _ = writeln!(
        out,
        "\nOf Phases 2 and 3: the generation checks {} s (one cached greedy batch of the prompts \
         shared by the three, then each check's own runs), the hook-option checks of both models \
         {} s (one pass per option and model), the recording {} s, the HookedTransformer's load \
         {} s; of Phase 3, its weight checks {} s and processing both models {} s. Starting and \
         ending the process (libtorch's initialisers, freeing) takes the rest of the wall time: \
         {} s.",
        fmt_opt(Some(times.generation_s()), 2),
        fmt_opt(Some(times.gated_s()), 2),
        fmt_opt(Some(times.recording_s()), 2),
        fmt_opt(times.setup_s(2), 2),
        fmt_opt(Some(times.weight_checks_s()), 2),
        fmt_opt(times.setup_s(3), 2),
        fmt_opt(wall.map(|w| w - accounted), 2),
    );
}
