//! `run_benchmark_suite`: the tiered runner.
//!
//! * Phase 1 — the bridge against the raw HF model it wraps (the HF tier: same parameters, no
//!   hooks, so no second copy of the weights).
//! * Phase 2 — the unprocessed bridge against the unprocessed HookedTransformer.
//! * Phase 3 — the bridge in compatibility mode against the processed HookedTransformer (both
//!   processed in place: still two copies of the weights at most).
//!
//! With a reference disabled the suite falls back as the Python suite does: HF -> HT ->
//! bridge-only (checks that need the missing reference are reported SKIPPED, never passed).

use bridge::{CompatibilityOptions, HfForward, TransformerBridge};
use hooked_ref::{HookedTransformer, ProcessingOptions};
use lens_core::model::{LensModel, ModelError, ModelResult};
use lens_core::processing::applicable;
use lens_core::LoadOptions;
use serde::{Deserialize, Serialize};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

use crate::benchmarks::{
    backward, cache, forward, generation, hooks, recording, weights, CleanLosses, GradientTarget,
    Inputs,
};
use crate::compare::{tolerances_for, Tolerances};
use crate::process::peak_rss_mib;
use crate::result::BenchmarkResult;

/// The Python suite's default test text.
pub const DEFAULT_TEST_TEXT: &str = "Natural language processing tasks, such as question answering, machine translation, reading comprehension, and summarization, are typically approached with supervised learning.";

/// The generation prompts of the Python suite.
pub const GENERATION_PROMPTS: [&str; 3] =
    ["The quick brown fox", "Hello world", "Machine learning is"];

/// What to run.
#[derive(Clone, Debug)]
pub struct SuiteOptions {
    /// A local HF directory, an embedded model name, or an HF id.
    pub model: String,
    /// Where the models run.
    pub device: Device,
    /// Their dtype.
    pub dtype: Kind,
    /// The text every benchmark runs on.
    pub test_text: String,
    /// Phase 1: compare against the raw HF model.
    pub use_hf_reference: bool,
    /// Phases 2 and 3: compare against the HookedTransformer.
    pub use_ht_reference: bool,
    /// Phase 3: process the weights and compare again.
    pub enable_compatibility_mode: bool,
    /// Which phases to run (1, 2, 3; 5 and 6, granular weight processing, on request).
    pub phases: Vec<u8>,
}

impl Default for SuiteOptions {
    fn default() -> Self {
        SuiteOptions {
            model: lens_core::DEFAULT_MODEL.to_owned(),
            device: Device::Cpu,
            dtype: Kind::Float,
            test_text: DEFAULT_TEST_TEXT.to_owned(),
            use_hf_reference: true,
            use_ht_reference: true,
            enable_compatibility_mode: true,
            phases: vec![1, 2, 3],
        }
    }
}

/// Called before each benchmark with its name (progress display).
pub type Progress<'a> = &'a mut dyn FnMut(&str);

/// Where a phase's time and memory went.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PhaseTotals {
    /// 1, 2 or 3.
    pub phase: u8,
    /// Wall time of the phase, its setup included (loading the HookedTransformer for Phase 2,
    /// processing both models' weights for Phase 3).
    pub seconds: f64,
    /// The process's peak resident set (MiB) at the end of the phase.
    pub peak_rss_mib: Option<f64>,
    /// Of `seconds`, the time spent recording both models once for the benchmarks that judge a
    /// recording (Phases 2 and 3 with a reference; their own times leave it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_seconds: Option<f64>,
}

/// A suite run: every result, and the totals of each phase that ran.
#[derive(Clone, Debug)]
pub struct SuiteReport {
    /// Every result, in the order the checks ran.
    pub results: Vec<BenchmarkResult>,
    /// Seconds spent booting the bridge and tokenizing the inputs.
    pub load_seconds: f64,
    /// The phases that ran, in order.
    pub phases: Vec<PhaseTotals>,
}

/// Loads the models and runs the requested phases. Loading failures are errors (the CLI exits
/// with 2); a benchmark that cannot run is an ERROR result.
pub fn run_benchmark_suite(
    options: &SuiteOptions,
    progress: Progress,
) -> ModelResult<Vec<BenchmarkResult>> {
    Ok(run_suite(options, progress)?.results)
}

/// The fewest tokens (BOS included) a test text may have: the loss and the next-token checks
/// need one prediction.
pub const MIN_TEST_TOKENS: i64 = 2;

/// Why a test text is refused (before any model is loaded).
#[derive(Debug, thiserror::Error)]
pub enum TestTextError {
    /// Nothing to run on.
    #[error("the test text is empty: give a text of at least one token (--test-text)")]
    Empty,
    /// Too short for the checks that compare predictions.
    #[error(
        "the test text is {tokens} token(s) with BOS; the loss and next-token checks need at \
         least {MIN_TEST_TOKENS}"
    )]
    TooShort {
        /// Tokens of the text, BOS included.
        tokens: i64,
    },
    /// Longer than the model's context: every check would have to truncate it.
    #[error(
        "the test text is {tokens} tokens with BOS, longer than the model's context of {n_ctx} \
         tokens (n_ctx): shorten it"
    )]
    TooLong {
        /// Tokens of the text, BOS included.
        tokens: i64,
        /// The model's context length.
        n_ctx: i64,
    },
    /// The model's config or tokenizer could not be read.
    #[error("cannot check the test text against the model: {0}")]
    Model(#[from] lens_core::LensError),
}

/// Checks the test text against the model's tokenizer and context, reading only its config and
/// tokenizer: empty, too short for a prediction, or longer than the context is refused, so no
/// check runs on a silently truncated or degenerate input. A model without a tokenizer runs on
/// seeded token ids, and only emptiness is checked.
pub fn check_test_text(model: &str, text: &str) -> Result<(), TestTextError> {
    if text.trim().is_empty() {
        return Err(TestTextError::Empty);
    }
    let files = lens_core::ModelSource::resolve(model, &lens_core::ResolveOptions::default())?;
    let config = lens_core::HfConfig::from_file(&files.config)?;
    let Some(tokenizer) = lens_core::load_tokenizer(&files, &config, &Default::default())? else {
        return Ok(());
    };
    let tokens = tokenizer.to_tokens(&[text], None, None, false)?.ids.size()[1];
    let n_ctx = config.n_ctx();
    if tokens < MIN_TEST_TOKENS {
        return Err(TestTextError::TooShort { tokens });
    }
    if tokens > n_ctx {
        return Err(TestTextError::TooLong { tokens, n_ctx });
    }
    Ok(())
}

/// [`run_benchmark_suite`], with the time and memory of each phase. The test text is checked
/// first ([`check_test_text`]), before any model is loaded.
pub fn run_suite(options: &SuiteOptions, progress: Progress) -> ModelResult<SuiteReport> {
    check_test_text(&options.model, &options.test_text)
        .map_err(|e| lens_core::model::ModelError::InvalidInput(e.to_string()))?;
    let started = Instant::now();
    let tolerance = tolerances_for(options.dtype);
    let mut bridge = TransformerBridge::boot(&options.model, options.device, options.dtype)?;
    let inputs = inputs(&bridge, &options.test_text)?;
    let load_seconds = started.elapsed().as_secs_f64();
    // Loading's temporaries go back to the kernel (glibc would keep them for reuse).
    lens_core::allocator::release_freed_memory();
    let mut results = Vec::new();
    let mut phases = Vec::new();
    let phase = |n: u8| options.phases.contains(&n);
    let mut phase_clock = Instant::now();
    let mut close_phase = |n: u8, recording_seconds: Option<f64>, phases: &mut Vec<PhaseTotals>| {
        phases.push(PhaseTotals {
            phase: n,
            seconds: phase_clock.elapsed().as_secs_f64(),
            peak_rss_mib: peak_rss_mib(),
            recording_seconds,
        });
        phase_clock = Instant::now();
    };

    if phase(1) {
        results.extend(phase_one(&bridge, &inputs, options, tolerance, progress));
        close_phase(1, None, &mut phases);
    }
    let mut reference = if options.use_ht_reference && (phase(2) || phase(3)) {
        Some(HookedTransformer::from_pretrained_no_processing(
            &options.model,
            &load_options(options),
        )?)
    } else {
        None
    };
    lens_core::allocator::release_freed_memory();
    if phase(2) {
        let target = GradientTarget::SumLastLogits;
        let recorded = record(
            &bridge,
            reference.as_ref(),
            &inputs,
            target,
            tolerance,
            progress,
        );
        let seconds = recorded.as_ref().map(|r| r.seconds);
        results.extend(compare_phase(
            2,
            &mut bridge,
            reference.as_mut().map(|r| r as &mut dyn LensModel),
            &inputs,
            tolerance,
            target,
            recorded,
            progress,
        ));
        close_phase(2, seconds, &mut phases);
    }
    if phase(3) && options.enable_compatibility_mode {
        let mut recording_seconds = None;
        progress("enable_compatibility_mode");
        match bridge.enable_compatibility_mode(CompatibilityOptions::default()) {
            Ok(()) => {
                if let Some(reference) = reference.as_mut() {
                    reference.process_weights(ProcessingOptions::default())?;
                }
                // Processing replaced most weights of both models: the old ones go back to
                // the kernel.
                lens_core::allocator::release_freed_memory();
                let target = GradientTarget::LastLogProbsProjection;
                let recorded = record(
                    &bridge,
                    reference.as_ref(),
                    &inputs,
                    target,
                    tolerance,
                    progress,
                );
                recording_seconds = recorded.as_ref().map(|r| r.seconds);
                results.extend(processed_checks(
                    &bridge,
                    reference.as_ref().map(|r| r as &dyn LensModel),
                    &inputs,
                    tolerance,
                    recorded.as_ref().and_then(|r| r.clean_losses),
                    progress,
                ));
                results.extend(compare_phase(
                    3,
                    &mut bridge,
                    reference.as_mut().map(|r| r as &mut dyn LensModel),
                    &inputs,
                    tolerance,
                    target,
                    recorded,
                    progress,
                ));
            }
            // An architecture without compatibility mode yet is reported, never passed over:
            // skipped says phase 3 did not run; any other failure is an error.
            Err(ModelError::Unsupported(reason)) => {
                results.push(BenchmarkResult::skipped("compatibility_mode", reason).in_phase(3))
            }
            Err(other) => results
                .push(BenchmarkResult::error("compatibility_mode", other.to_string()).in_phase(3)),
        }
        close_phase(3, recording_seconds, &mut phases);
    } else if phase(3) {
        results.push(
            BenchmarkResult::skipped("compatibility_mode", "disabled (--no-compat)").in_phase(3),
        );
        close_phase(3, None, &mut phases);
    }
    // Phases 5 and 6 process fresh models of their own: the ones above are done with.
    drop(reference);
    for granular in [5u8, 6] {
        if phase(granular) {
            results.extend(crate::granular::run_phase(
                granular, options, &inputs, tolerance, progress,
            ));
            close_phase(granular, None, &mut phases);
        }
    }
    Ok(SuiteReport {
        results,
        load_seconds,
        phases,
    })
}

/// Times the checks of a phase: each result gets the wall time since the previous one (or
/// since the clock started) and the peak resident set when it finished.
pub(crate) struct Clock(Instant);

impl Clock {
    pub(crate) fn start() -> Self {
        Clock(Instant::now())
    }

    /// A result that already has its time (judged on a recording) keeps it.
    pub(crate) fn stamp(&mut self, mut result: BenchmarkResult) -> BenchmarkResult {
        let elapsed = self.0.elapsed().as_secs_f64();
        result.seconds.get_or_insert(elapsed);
        result.peak_rss_mib = peak_rss_mib();
        self.0 = Instant::now();
        result
    }
}

pub(crate) fn load_options(options: &SuiteOptions) -> LoadOptions {
    LoadOptions {
        device: options.device,
        kind: Some(options.dtype),
        ..LoadOptions::default()
    }
}

/// The test text and prompts as tokens. A checkpoint without `tokenizer.json` runs on token ids
/// drawn with a fixed seed instead (BOS first; 24 for the text, 5 to 7 per prompt).
fn inputs(bridge: &TransformerBridge, text: &str) -> ModelResult<Inputs> {
    if bridge.tokenizer().is_some() {
        let tokens = bridge.to_tokens(&[text], None, None)?.ids;
        let prompts = GENERATION_PROMPTS
            .iter()
            .map(|p| Ok(bridge.to_tokens(&[p], None, None)?.ids))
            .collect::<ModelResult<Vec<Tensor>>>()?;
        return Ok(Inputs {
            text: text.to_owned(),
            tokens,
            prompts,
        });
    }
    let dims = bridge.dims();
    let bos = bridge.config().bos_token_id().unwrap_or(dims.d_vocab - 1);
    let device = LensModel::device(bridge);
    let random = |len: i64, seed: i64| {
        tch::manual_seed(seed);
        let ids = Tensor::randint(dims.d_vocab - 1, [1, len - 1], (Kind::Int64, Device::Cpu));
        Tensor::cat(
            &[&Tensor::full([1, 1], bos, (Kind::Int64, Device::Cpu)), &ids],
            1,
        )
        .to_device(device)
    };
    let prompts = (0..GENERATION_PROMPTS.len() as i64)
        .map(|i| random(5 + i, 1 + i))
        .collect();
    Ok(Inputs {
        text: format!("{} seeded token ids (the model has no tokenizer)", 24),
        tokens: random(24, 0),
        prompts,
    })
}

fn phase_one(
    bridge: &TransformerBridge,
    inputs: &Inputs,
    options: &SuiteOptions,
    tolerance: Tolerances,
    progress: Progress,
) -> Vec<BenchmarkResult> {
    if !options.use_hf_reference {
        return vec![BenchmarkResult::skipped(
            "forward_pass_logits",
            "no HF reference (--no-hf-reference)",
        )
        .in_phase(1)];
    }
    let mut clock = Clock::start();
    progress("all_components");
    let components =
        clock.stamp(forward::all_components(bridge, tolerance.activations).in_phase(1));
    progress("forward_pass_logits");
    let reference = tch::no_grad(|| {
        bridge.hf_model().forward(HfForward {
            input_ids: Some(&inputs.tokens),
            ..HfForward::default()
        })
    });
    let result = match reference {
        Ok(out) => forward::forward_pass(bridge, inputs, &out.logits, tolerance.activations),
        Err(error) => BenchmarkResult::error(
            "forward_pass_logits",
            format!("the HF model failed: {error}"),
        ),
    };
    vec![components, clock.stamp(result.in_phase(1))]
}

/// The checks that only make sense on processed weights.
fn processed_checks(
    bridge: &TransformerBridge,
    reference: Option<&dyn LensModel>,
    inputs: &Inputs,
    tolerance: Tolerances,
    clean_losses: Option<CleanLosses>,
    progress: Progress,
) -> Vec<BenchmarkResult> {
    let mut results = Vec::new();
    let mut clock = Clock::start();
    let mut run = |name: &str, f: &dyn Fn() -> BenchmarkResult| {
        progress(name);
        results.push(clock.stamp(f().in_phase(3)));
    };
    run("no_nan_inf", &|| weights::no_nan_inf(bridge));
    run("weight_magnitudes", &|| weights::weight_magnitudes(bridge));
    // The steps TransformerLens applies to this architecture, and why it turns any off.
    let traits = bridge.config().processing_traits();
    let (applied, _) = applicable(ProcessingOptions::default(), &traits);
    let turned_off = |step: &str| {
        bridge
            .processing_notes()
            .iter()
            .find(|note| note.contains(step))
            .cloned()
            .unwrap_or_else(|| format!("{step} does not apply to {}", traits.architecture))
    };
    run("layer_norm_folding", &|| {
        if applied.fold_ln {
            weights::layer_norm_folding(bridge)
        } else {
            BenchmarkResult::skipped("layer_norm_folding", turned_off("fold_ln"))
        }
    });
    // TransformerLens centres the weights writing to the residual only under LayerNorm, which
    // removes the mean; under RMSNorm it leaves them, and so must the bridge. It turns the step
    // off for post-norm architectures, and says so.
    let not_centred = if bridge.config().uses_rms_norm() {
        Some("RMSNorm model: TransformerLens centres writing weights only for LayerNorm".into())
    } else if !applied.center_writing_weights {
        Some(turned_off("center_writing_weights"))
    } else {
        None
    };
    run("attention_output_centering", &|| match &not_centred {
        None => weights::attention_output_centering(bridge, tolerance.activations),
        Some(why) => BenchmarkResult::skipped("attention_output_centering", why.clone()),
    });
    run("mlp_output_centering", &|| match &not_centred {
        None => weights::mlp_output_centering(bridge, tolerance.activations),
        Some(why) => BenchmarkResult::skipped("mlp_output_centering", why.clone()),
    });
    run("unembed_centering", &|| {
        if applied.center_unembed {
            weights::unembed_centering(bridge, tolerance.activations)
        } else {
            BenchmarkResult::skipped("unembed_centering", turned_off("center_unembed"))
        }
    });
    run("value_bias_folding", &|| {
        weights::value_bias_folding(bridge)
    });
    match reference {
        Some(reference) => {
            run("weight_processing", &|| {
                weights::weight_processing(bridge, reference, tolerance.activations)
            });
            run("weight_sharing", &|| match clean_losses {
                Some(clean) => weights::weight_sharing_given(
                    bridge,
                    reference,
                    inputs,
                    clean,
                    tolerance.activations,
                ),
                None => weights::weight_sharing(bridge, reference, inputs, tolerance.activations),
            });
        }
        None => {
            run("weight_processing", &|| {
                BenchmarkResult::skipped("weight_processing", "no HookedTransformer reference")
            });
            run("weight_sharing", &|| {
                BenchmarkResult::skipped("weight_sharing", "no HookedTransformer reference")
            });
        }
    }
    run("weight_modification", &|| match clean_losses {
        Some(clean) => weights::weight_modification_given(bridge, inputs, clean.ours),
        None => weights::weight_modification(bridge, inputs),
    });
    results
}

/// Records both models for a comparison phase ([`recording::recorded_benchmarks`]), when there
/// is a reference.
fn record(
    bridge: &TransformerBridge,
    reference: Option<&HookedTransformer>,
    inputs: &Inputs,
    target: GradientTarget,
    tolerance: Tolerances,
    progress: Progress,
) -> Option<recording::RecordedPhase> {
    let reference = reference?;
    progress("recording both models");
    Some(recording::recorded_benchmarks(
        bridge, reference, inputs, target, tolerance,
    ))
}

/// The comparison benchmarks of Phases 2 and 3, in the Python suite's order: those that only
/// read a pass come `recorded` (judged on one recording of both models); the others run their
/// own passes.
#[allow(clippy::too_many_arguments)]
fn compare_phase(
    phase: u8,
    bridge: &mut TransformerBridge,
    mut reference: Option<&mut dyn LensModel>,
    inputs: &Inputs,
    tolerance: Tolerances,
    target: GradientTarget,
    recorded: Option<recording::RecordedPhase>,
    progress: Progress,
) -> Vec<BenchmarkResult> {
    let clean_losses = recorded.as_ref().and_then(|r| r.clean_losses);
    let mut recorded = recorded.map(|r| r.results).unwrap_or_default();
    let mut results = Vec::new();
    let mut clock = Clock::start();
    let mut push = |name: &str, result: BenchmarkResult, progress: &mut dyn FnMut(&str)| {
        progress(name);
        results.push(clock.stamp(result.in_phase(phase)));
    };
    // A judged result keeps the time its judgement took (its passes were the recording's).
    let skipped = |name: &str| {
        BenchmarkResult::skipped(name, "no HookedTransformer reference (--no-ht-reference)")
    };
    let mut judged = |name: &str| match recorded.iter().position(|r| r.name == name) {
        Some(i) => recorded.remove(i),
        None => skipped(name),
    };
    if phase == 2 {
        // One cached greedy run of the bridge, which each generation check compares with runs
        // of its own (its time counts towards the first).
        let greedy = catch_unwind(AssertUnwindSafe(|| {
            generation::GreedyBatch::generate(bridge, inputs)
        }));
        let greedy = match greedy {
            Ok(Ok(greedy)) => Ok(greedy),
            Ok(Err(error)) => Err(format!("could not generate: {error}")),
            Err(_) => Err("panicked while generating".to_owned()),
        };
        let on_greedy =
            |name: &str, check: &dyn Fn(&generation::GreedyBatch) -> BenchmarkResult| match &greedy
            {
                Ok(greedy) => check(greedy),
                Err(why) => BenchmarkResult::error(name, why.clone()),
            };
        let reference = reference.as_deref();
        let result = on_greedy("generation", &|g| {
            generation::generation_given(bridge, reference, g, tolerance.activations)
        });
        push("generation", result, progress);
        let result = on_greedy("generation_with_kv_cache", &|g| {
            generation::generation_with_kv_cache_given(bridge, inputs, g)
        });
        push("generation_with_kv_cache", result, progress);
        let result = on_greedy("multiple_generation_calls", &|g| {
            generation::multiple_generation_calls_given(bridge, inputs, g)
        });
        push("multiple_generation_calls", result, progress);
    }
    let activations = tolerance.activations;
    let r = reference.as_deref();
    for name in ["logits_equivalence", "loss_equivalence"] {
        push(name, judged(name), progress);
    }
    let registry = match r {
        Some(r) => hooks::hook_registry(bridge, r),
        None => skipped("hook_registry"),
    };
    push("hook_registry", registry, progress);
    let functionality = match (r, clean_losses) {
        (Some(r), Some(clean)) => hooks::hook_functionality_given(
            bridge,
            Some((r, clean.theirs)),
            inputs,
            clean.ours,
            activations,
        ),
        _ => hooks::hook_functionality(bridge, r, inputs, activations),
    };
    push("hook_functionality", functionality, progress);
    for name in ["critical_forward_hooks", "forward_hooks"] {
        push(name, judged(name), progress);
    }
    push(
        "gated_hooks_fire",
        hooks::gated_hooks_fire(bridge, inputs),
        progress,
    );
    if let Some(r) = reference.as_deref_mut() {
        let mut result = hooks::gated_hooks_fire(r, inputs);
        result.name = "gated_hooks_fire_reference".to_owned();
        push("gated_hooks_fire_reference", result, progress);
    }
    if reference.is_some() {
        for name in recording::CACHE_JUDGED
            .iter()
            .chain(&recording::BACKWARD_JUDGED)
        {
            push(name, judged(name), progress);
        }
    } else {
        let gradients = tolerance.gradients;
        push(
            "run_with_cache",
            cache::run_with_cache(bridge, None, inputs),
            progress,
        );
        push("activation_cache", skipped("activation_cache"), progress);
        push(
            "gradient_computation",
            backward::gradient_computation(bridge, None, inputs, target, gradients),
            progress,
        );
        for name in ["critical_backward_hooks", "backward_hooks"] {
            push(name, skipped(name), progress);
        }
    }
    results
}

/// A readable error for a device that is not there (shared with the models).
pub use lens_core::model::check_device;
