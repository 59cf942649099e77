//! Why a target is missed, computed from the run's figures.

use serde_json::Value;

use crate::targets::{fmt_opt, get, ratio, ANCHOR_SUITE_RSS_MB, ANCHOR_SUITE_S};

/// Parameters of GPT-2 small with an untied unembedding (compatibility mode unties `W_U`): what
/// each model holds in Phase 3, in MiB of f32.
const PHASE3_MODEL_MIB: f64 = (124_439_808.0 + 38_597_376.0) * 4.0 / 1_048_576.0;

/// Seconds the suite profile spent in the benchmarks named `names` (both phases).
fn profile_seconds(rust: &Value, names: &[&str]) -> Option<f64> {
    let steps = rust.pointer("/suite_profile/steps")?.as_array()?;
    Some(
        steps
            .iter()
            .filter(|s| {
                s.get("to")
                    .and_then(Value::as_str)
                    .is_some_and(|to| names.contains(&to))
            })
            .filter_map(|s| get(s, "seconds"))
            .sum(),
    )
}

/// "min-max ms" of the samples at `pointer` (a JSON pointer to an array of milliseconds).
fn sample_range(v: &Value, pointer: &str) -> String {
    let samples: Vec<f64> = v
        .pointer(pointer)
        .and_then(Value::as_array)
        .map(|v| v.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let lo = samples.iter().copied().fold(f64::NAN, f64::min);
    let hi = samples.iter().copied().fold(f64::NAN, f64::max);
    format!("{}-{} ms", fmt_opt(Some(lo), 0), fmt_opt(Some(hi), 0))
}

/// Why a target is missed: (a key shared by targets with one cause, the explanation).
pub(crate) fn cause(
    id: &str,
    rust: &Value,
    python: Option<&Value>,
) -> Option<(&'static str, String)> {
    let r = |path: &str| get(rust, path);
    let p = |path: &str| python.and_then(|py| get(py, path));
    let diff = |v: Option<&Value>, a: &str, b: &str| {
        let v = v?;
        Some(get(v, a)? - get(v, b)?)
    };
    let over = |b: &str, k: &str| {
        fmt_opt(
            ratio(
                r(&format!("forward.{b}.{k}.median_ms")),
                r(&format!("forward.{b}.hf.median_ms")),
            ),
            3,
        )
    };
    let caching = |v: Option<&Value>, size: &str, model: &str| {
        fmt_opt(
            diff(
                v,
                &format!("forward.{size}.{model}_cache.median_ms"),
                &format!("forward.{size}.{model}.median_ms"),
            ),
            0,
        )
    };
    match id {
        "bridge_forward_1x128" | "bridge_forward_8x128" => Some((
            "bridge",
            format!(
                "**Bridge forward.** With no hook attached the bridge runs the raw model's \
                 kernels: the fused `layer_norm`, one `c_attn` product for q, k and v, and no \
                 pass for the zero `b_U` it adds (left out of the unembedding while it is zero \
                 and needs no gradient; crates/bridge/src/hf/forward.rs). What is left is \
                 TransformerLens's `-inf` mask (one `masked_fill` where HF adds its additive \
                 mask) and about 400 unhooked hook points at one atomic load each. The bridge's \
                 own HF model takes {} x (1x128) and {} x (8x128) the raw model's time in this \
                 run, with no hook point at all: differences of a few percent are this machine's \
                 run-to-run spread; compare the fastest samples.",
                over("1x128", "hf_in_bridge"),
                over("8x128", "hf_in_bridge"),
            ),
        )),
        "run_with_cache_1x128" | "run_with_cache_8x128" => Some((
            "cache",
            format!(
                "**run_with_cache.** The cache copies nothing (`detach` only) but keeps every \
                 activation alive until it is dropped: caching costs {} ms over the bridge \
                 forward at 1x128 and {} ms at 8x128 here (HookedTransformer {} and {} ms{}). The \
                 binaries keep freed memory for reuse (`lens_core::allocator::keep_freed_memory`: \
                 glibc serves blocks up to 32 MiB from its heap and keeps up to 2 GiB freed); \
                 without that every pass faults its activations' pages back in and the kernel \
                 zeroes them (`perf`: `clear_page_erms`, `exc_page_fault`). Blocks over 32 MiB \
                 (the 8x128 logits, 206 MB) are still mapped fresh for every pass.",
                caching(Some(rust), "1x128", "bridge"),
                caching(Some(rust), "8x128", "bridge"),
                caching(Some(rust), "1x128", "hooked"),
                caching(Some(rust), "8x128", "hooked"),
                match python {
                    Some(_) => format!(
                        "; Python's TransformerBridge {} ms at 1x128",
                        caching(python, "1x128", "tl_bridge")
                    ),
                    None => String::new(),
                }
            ),
        )),
        "kv_cache_vs_hf" => {
            let range =
                |k: &str| sample_range(rust, &format!("/generation/{k}/stat/samples_ms"));
            Some((
                "generation",
                format!(
                    "**Cached generation.** A tie: each step runs one position through the same \
                     kernels on the same weights as the raw model (a step's time is mostly \
                     reading the 0.5 GB of weights), and the bridge's extra work per step (about \
                     400 unhooked hook points, one atomic load each) is below a microsecond per \
                     point. The two sets of samples overlap (bridge {}, raw HF {} for {} tokens; \
                     the harness alternates which model runs first); the medians differ by {} ms \
                     per generated token.",
                    range("bridge_cached"),
                    range("hf_cached"),
                    fmt_opt(r("generation.new_tokens"), 0),
                    fmt_opt(
                        diff(
                            Some(rust),
                            "generation.bridge_cached.stat.median_ms",
                            "generation.hf_cached.stat.median_ms"
                        )
                        .zip(r("generation.new_tokens"))
                        .map(|(d, n)| d / n),
                        2
                    )
                ),
            ))
        }
        "kv_cache_speedup" => Some((
            "speedup",
            "**KV-cache speed-up.** With few new tokens the 128-token prompt's first pass \
             dominates both runs; the ratio grows with the number of new tokens."
                .to_owned(),
        )),
        "backward_hooks_total" | "backward_hooks_backward_only" => {
            let spread =
                |k: &str| sample_range(rust, &format!("/backward/{k}/backward/samples_ms"));
            Some((
                "backward",
                format!(
                    "**Backward hooks.** A backward hook on `hook_scale`, `hook_normalized` or \
                     `attn.{{q,k,v}}.hook_in` needs those values in the graph, so the hooked \
                     pass takes the decomposed LayerNorms and three q/k/v products where the \
                     plain pass takes the fused kernels; the 392 native hooks themselves (one \
                     C++ tensor hook and one call into Rust each) cost less than the noise. The \
                     backward half varies from run to run on this machine (plain {}, hooked {} \
                     in this run); compare the fastest samples.",
                    spread("plain"),
                    spread("hooked")
                ),
            ))
        }
        "load_time" | "load_single_copy" => Some((
            "load",
            format!(
                "**Load.** `Weights::load` takes {} ms and parsing tokenizer.json {} ms of the \
                 bridge's load.",
                fmt_opt(r("load.stats.hf_weights_only.median_ms"), 0),
                fmt_opt(r("load.stats.tokenizer_only.median_ms"), 0)
            ),
        )),
        "suite_wall" => {
            Some((
                "suite_wall",
                format!(
                "**Suite wall time.** Both suites are libtorch work on the same model: the Rust \
                 suite used {} s of CPU, the Python suite {} s. Fixed on the way here: `compare` \
                 and the parameter-gradient comparison made f64 copies, masks and \
                 `masked_select` copies of every tensor (3.9 s for one 38.6M-entry tensor); they \
                 now use streaming reductions (`aminmax` for max |x|, max |a - b| in 4M-entry \
                 chunks), and the weight checks no longer build |w| or `isfinite` temporaries. \
                 What remains is the passes themselves (profile below, {} s in all): a forward \
                 pass of GPT-2 small over the suite's short inputs costs 40-70 ms here whatever \
                 their length, as it reads every weight (0.5 GB) from memory. The generation \
                 benchmarks take {} s (about 115 greedy steps of either model), the gradient \
                 benchmarks {} s (a forward and a backward pass of both models for the \
                 parameters, another for the hook gradients, per phase), and about 25 other \
                 benchmarks run their own passes of both models, as the Python suite's do. That \
                 is the bound: the target allows {} s for the whole process, so meeting it needs \
                 a suite that runs fewer passes than Python's: one recorded forward and backward pass per model and phase shared by \
                 every benchmark that reads it (the critical and full hook benchmarks already \
                 share theirs), and fewer generation steps.",
                fmt_opt(r("suite.cpu_s"), 1),
                fmt_opt(p("suite.cpu_s"), 1),
                fmt_opt(r("suite_profile.total_s"), 1),
                fmt_opt(
                    profile_seconds(
                        rust,
                        &[
                            "generation",
                            "generation_with_kv_cache",
                            "multiple_generation_calls"
                        ]
                    ),
                    1
                ),
                fmt_opt(
                    profile_seconds(
                        rust,
                        &[
                            "gradient_computation",
                            "critical_backward_hooks",
                            "backward_hooks"
                        ]
                    ),
                    1
                ),
                fmt_opt(p("suite.suite_s").or(Some(ANCHOR_SUITE_S)).map(|s| s / 4.0), 1),
            ),
            ))
        }
        "suite_rss" => {
            // The interval of the profile with the highest RSS, if the suite was profiled.
            let peak_step = rust
                .pointer("/suite_profile/steps")
                .and_then(Value::as_array)
                .and_then(|steps| {
                    steps.iter().max_by(|a, b| {
                        let peak = |s: &Value| get(s, "rss_mib_peak").unwrap_or(0.0);
                        peak(a).total_cmp(&peak(b))
                    })
                });
            let where_ = match peak_step {
                Some(s) => format!(
                    "In the profile below the peak, {} MiB, is reached in `{}` (from {} MiB at \
                     its start). ",
                    fmt_opt(get(s, "rss_mib_peak"), 0),
                    s.get("to").and_then(Value::as_str).unwrap_or("?"),
                    fmt_opt(get(s, "rss_mib_at_start"), 0)
                ),
                None => String::new(),
            };
            let bound = p("suite.peak_rss_mb")
                .or(Some(ANCHOR_SUITE_RSS_MB))
                .map(|m| m / 2.0);
            Some((
                "suite_rss",
                format!(
                    "**Suite peak RSS.** {where_}`gradient_computation` compares every \
                     parameter's gradient between the two models, so both models' full f32 \
                     gradients exist at once next to both models' weights. In Phase 3 each \
                     model holds {:.0} MiB (124M parameters plus the untied `W_U`), so weights \
                     and gradients alone are {:.0} MiB, before libtorch's runtime and any \
                     activation, against a bound of {} MiB. (`compare`'s f64 copies, about 2 GB \
                     at once, were removed on the way here.) That is the bound: meeting it needs \
                     a gradient comparison that never holds both gradient sets (compare each \
                     parameter's gradient from a tensor hook during the second model's backward \
                     pass and free the first model's as it goes), and even then one gradient set \
                     and two models come to {:.0} MiB.",
                    PHASE3_MODEL_MIB,
                    4.0 * PHASE3_MODEL_MIB,
                    fmt_opt(bound, 0),
                    3.0 * PHASE3_MODEL_MIB,
                ),
            ))
        }
        _ => None,
    }
}
