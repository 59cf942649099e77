//! Why a target is missed, computed from the run's figures.

use serde_json::Value;

use crate::suite_times::SuiteTimes;
use crate::targets::{fmt_opt, get, ratio, Target};

/// MiB in a MB.
const MIB_PER_MB: f64 = 1e6 / 1_048_576.0;

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
    target: &Target,
    rust: &Value,
    python: Option<&Value>,
    tl4: Option<&Value>,
) -> Option<(&'static str, String)> {
    let r = |path: &str| get(rust, path);
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
    match target.id.as_str() {
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
                 glibc serves every block from its heap and keeps up to 2 GiB freed); without \
                 that every pass faults its activations' pages back in and the kernel zeroes \
                 them (`perf`: `clear_page_erms`, `exc_page_fault`).",
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
            let range = |k: &str| sample_range(rust, &format!("/generation/{k}/stat/samples_ms"));
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
        suite if suite.starts_with("suite") => suite_cause(target, rust, tl4),
        _ => None,
    }
}

/// Why a suite target is missed. Its id is `suite[_gqa]_{wall,rss}[_tl4]`: the checkpoint's
/// section, the figure, and which TransformerLens it is held against.
fn suite_cause(
    target: &Target,
    rust: &Value,
    tl4: Option<&Value>,
) -> Option<(&'static str, String)> {
    let id = target.id.as_str();
    let key = if id.starts_with("suite_gqa") {
        "suite_gqa"
    } else {
        "suite"
    };
    let against_tl4 = id.ends_with("_tl4");
    let r = |path: &str| get(rust, &format!("{key}.{path}"));
    // The checkpoint's weights and its embedding matrix, in MiB of f32 (`tl-perf measure` reads
    // them from the checkpoint).
    let weights = r("checkpoint.weights_mib")?;
    let embedding = r("checkpoint.embedding_mib")?;
    if id.contains("_wall") {
        let times = SuiteTimes::of(rust, key)?;
        let wall = r("wall_s")?;
        return Some((
            if key == "suite" {
                "suite_wall"
            } else {
                "suite_gqa_wall"
            },
            format!(
                "**Suite wall time{}.** {:.1} s against {} s allowed. The suite records both \
                 models once per comparison phase (a forward pass with every hook cached, a \
                 forward and backward pass with every hook's and parameter's gradient; {} s \
                 for both phases) and nine benchmarks judge that recording; the rest are \
                 passes a check needs of its own: the generation checks ({} s: one cached \
                 greedy batch shared, then the reference's run, the uncached run, seeded \
                 sampling twice, a second call, each prompt alone), the hook options ({} s: \
                 one forward pass per option and model, as an option changes the \
                 computation), ablation and weight edits, and Phase 3's weight checks ({} s). \
                 A forward pass over these short inputs reads every weight ({:.0} MiB) \
                 whatever their length; loading the HookedTransformer takes {} s, processing \
                 both models' weights {} s, and starting libtorch about 0.3 s of any \
                 process. Below this, a check would have to be dropped or merged with \
                 another's pass.{}",
                checkpoint_label(key),
                wall,
                fmt_opt(target.allowed(wall), 1),
                fmt_opt(Some(times.recording_s()), 1),
                fmt_opt(Some(times.generation_s()), 1),
                fmt_opt(Some(times.gated_s()), 1),
                fmt_opt(Some(times.weight_checks_s()), 1),
                weights,
                fmt_opt(times.setup_s(2), 1),
                fmt_opt(times.setup_s(3), 1),
                if against_tl4 {
                    hooked_tier(&times, tl4.and_then(|v| get(v, &format!("{key}.results"))))
                } else {
                    String::new()
                },
            ),
        ));
    }
    let peak = r("peak_rss_mb")?;
    // In Phase 3 each model holds its weights with the unembedding untied (compatibility mode
    // unties `W_U`); the comparison holds both models, the first's whole gradient set and the
    // second's embedding gradient in flight.
    let model = weights + embedding;
    let held = 3.0 * model + embedding;
    Some((
        if key == "suite" {
            "suite_rss"
        } else {
            "suite_gqa_rss"
        },
        format!(
            "**Suite peak RSS{}.** {:.0} MB against {} MB allowed, reached while Phase 3 \
             records both models' gradients. Nothing there is held twice: the reference's \
             parameter gradients are compared as its backward pass accumulates them and freed \
             at once (a post-accumulate-grad hook on each parameter, \
             `hookpoint::with_accumulated_gradient_hooks`), the bridge's are freed as they are \
             compared, and the forward recording is judged and dropped before the backward \
             passes. What remains is what comparing two backward passes needs: both models' \
             weights ({:.0} MiB each: the checkpoint plus the untied `W_U`), the first model's \
             whole gradient set (its backward pass ends before the second's begins) and the \
             second's embedding gradient in flight ({:.0} MiB): {:.0} MiB, plus libtorch's \
             runtime, activations and mapped libraries (the other {:.0} MB of the peak). \
             Meeting the bound needs the gradients compared in parts, one more backward pass \
             of each model per part and phase, which the wall-time target cannot spare.",
            checkpoint_label(key),
            peak,
            fmt_opt(target.allowed(peak), 0),
            model,
            embedding,
            held,
            peak - held / MIB_PER_MB,
        ),
    ))
}

/// What TransformerLens 4.3.0's suite leaves out and ours runs: the HookedTransformer tier.
fn hooked_tier(times: &SuiteTimes, their_results: Option<f64>) -> String {
    let gated_reference = times.seconds_of(None, |name| name == "gated_hooks_fire_reference");
    format!(
        " TransformerLens 4.3.0's suite is the bridge's alone ({} results: the bridge against \
         the HF model); ours also checks the bridge against a HookedTransformer in Phases 2 \
         and 3, as TransformerLens 3.9.0's does: loading it takes {} s, and it has its half of \
         each recording and of the weight processing, and its own hook-option checks ({} s).",
        fmt_opt(their_results, 0),
        fmt_opt(times.setup_s(2), 1),
        fmt_opt(Some(gated_reference), 1),
    )
}

/// How a cause names the checkpoint of section `key`.
fn checkpoint_label(key: &str) -> &'static str {
    if key == "suite" {
        ""
    } else {
        ", Llama-family checkpoint"
    }
}
