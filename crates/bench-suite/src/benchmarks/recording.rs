//! What a comparison phase records of both models once, for every benchmark that only reads a
//! pass: a forward pass with every hook cached and counted (logits and loss, activations, how
//! often each hook fired), then a forward and backward pass from the phase's gradient target with
//! every hook's gradient and every parameter's gradient. The benchmarks that must run passes of
//! their own (ablation, hook options, weight edits, generation) still do.
//!
//! Memory: the forward recordings are judged and dropped before the backward passes; the model's
//! gradient recording keeps only gradients; and the parameter gradients are judged while the
//! reference's backward pass runs ([`backward::judge_parameter_gradients`]), each pair freed as
//! soon as it is judged, so the model's full gradient set exists once, briefly, and the
//! reference's never.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use hookpoint::{ActivationCache, CacheOptions, HookSpec, NamesFilter};
use lens_core::model::{ForwardOptions, ForwardOutput, LensModel, ModelResult, ReturnType};
use tch::Tensor;

use super::hooks::FiringCounts;
use super::{
    backward, cache, forward, guarded, hooks, reference_error, CleanLosses, GradientTarget, Inputs,
};
use crate::compare::Tolerances;
use crate::result::BenchmarkResult;

/// One model's forward pass without a graph.
pub struct ForwardRecording {
    /// Logits and loss.
    pub output: ForwardOutput,
    /// Every hook's activation.
    pub activations: ActivationCache,
    /// How often each hook fired.
    pub firings: FiringCounts,
}

/// Both models' backward recordings, and `gradient_computation`'s result.
pub struct BackwardRecording {
    /// The model's hook gradients (`<hook>_grad`; its activations are the forward recording's).
    pub ours: ActivationCache,
    /// The reference's hook activations and gradients.
    pub theirs: ActivationCache,
    /// The parameter gradients compared, judged during the reference's backward pass.
    pub parameter_gradients: BenchmarkResult,
}

/// The benchmarks judged on both models' forward recordings, in the suite's order.
pub const FORWARD_JUDGED: [&str; 4] = [
    "logits_equivalence",
    "loss_equivalence",
    "critical_forward_hooks",
    "forward_hooks",
];

/// The benchmarks judged on both models' caches of the forward recording, in the suite's order.
pub const CACHE_JUDGED: [&str; 2] = ["run_with_cache", "activation_cache"];

/// The benchmarks judged on the backward recordings, in the suite's order.
pub const BACKWARD_JUDGED: [&str; 3] = [
    "gradient_computation",
    "critical_backward_hooks",
    "backward_hooks",
];

/// What [`recorded_benchmarks`] gives the rest of a phase.
pub struct RecordedPhase {
    /// Every benchmark of [`FORWARD_JUDGED`], [`CACHE_JUDGED`] and [`BACKWARD_JUDGED`], in
    /// that order.
    pub results: Vec<BenchmarkResult>,
    /// Seconds spent in the recorded passes (the judgements' own times are in the results).
    pub seconds: f64,
    /// Both models' clean losses from the forward recording, for the benchmarks that measure a
    /// change of the loss (`None` when the recording failed).
    pub clean_losses: Option<CleanLosses>,
}

/// Records both models, forward then backward, and judges every benchmark that reads the
/// recordings (a recording that fails makes each benchmark reading it an ERROR).
pub fn recorded_benchmarks(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    inputs: &Inputs,
    target: GradientTarget,
    tolerance: Tolerances,
) -> RecordedPhase {
    let started = Instant::now();
    let forward = recorded("record both models", || {
        record_forward(model, reference, inputs)
    });
    let mut seconds = started.elapsed().as_secs_f64();
    let (mut results, clean_losses) = match forward {
        Ok([ours, theirs]) => {
            let loss = |r: &ForwardRecording| r.output.loss().ok().map(|l| l.double_value(&[]));
            let clean_losses = loss(&ours)
                .zip(loss(&theirs))
                .map(|(ours, theirs)| CleanLosses { ours, theirs });
            let recordings = [&ours, &theirs];
            let mut results = judge_forward(model, reference, recordings, tolerance.activations);
            results.extend(judge_caches(model, recordings, tolerance.activations));
            (results, clean_losses)
        }
        Err(why) => (
            errors(FORWARD_JUDGED.iter().chain(&CACHE_JUDGED), &why),
            None,
        ),
    };
    let started = Instant::now();
    let backward = recorded("record both models' gradients", || {
        record_backward(model, reference, inputs, target, tolerance.gradients)
    });
    seconds += started.elapsed().as_secs_f64();
    results.extend(match backward {
        Ok(recording) => judge_backward(reference, &recording, target, tolerance.gradients),
        Err(why) => errors(BACKWARD_JUDGED.iter(), &why),
    });
    RecordedPhase {
        results,
        seconds,
        clean_losses,
    }
}

/// Runs a recording, turning an error or a panic into the reason every benchmark reading it
/// reports.
fn recorded<T>(what: &str, record: impl FnOnce() -> ModelResult<T>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(record)) {
        Ok(Ok(recording)) => Ok(recording),
        Ok(Err(error)) => Err(format!("could not {what}: {error}")),
        Err(_) => Err(format!("panicked trying to {what}")),
    }
}

fn errors<'a>(names: impl Iterator<Item = &'a &'a str>, why: &str) -> Vec<BenchmarkResult> {
    names
        .map(|name| BenchmarkResult::error(name, why))
        .collect()
}

/// Both models' forward passes ([`forward_pass`]).
pub fn record_forward(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    inputs: &Inputs,
) -> ModelResult<[ForwardRecording; 2]> {
    let ours = forward_pass(model, &inputs.tokens)?;
    let theirs = forward_pass(reference, &inputs.tokens).map_err(reference_error)?;
    Ok([ours, theirs])
}

/// The forward pass without a graph: logits and loss, every hook cached, every firing counted.
pub fn forward_pass(model: &dyn LensModel, tokens: &Tensor) -> ModelResult<ForwardRecording> {
    let _no_grad = tch::no_grad_guard();
    let (counts, counter) = hooks::counting_hook();
    let options = ForwardOptions {
        return_type: ReturnType::Both,
        ..ForwardOptions::default()
    };
    let counting = [HookSpec::forward(NamesFilter::All, counter)];
    let (output, activations) = model.hooks().with_hooks(&counting, || {
        model.run_with_cache(tokens, &options, &CacheOptions::default())
    })??;
    let firings = counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(ForwardRecording {
        output,
        activations,
        firings,
    })
}

/// Both models' forward and backward passes from `target`, the parameter gradients judged
/// during the reference's. Both models' parameter gradients are cleared however it ends.
pub fn record_backward(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    inputs: &Inputs,
    target: GradientTarget,
    gradient_tolerance: f64,
) -> ModelResult<BackwardRecording> {
    let tokens = &inputs.tokens;
    let mut ours = match backward_pass(model, tokens, target) {
        Ok(gradients) => gradients,
        Err(error) => {
            model.zero_grad();
            return Err(error);
        }
    };
    // The activations are the forward recording's: only the gradients are judged.
    ours.retain(|name| name.ends_with("_grad"));
    let mut theirs = None;
    let mut reference_backward = || {
        theirs = Some(backward_pass(reference, tokens, target)?);
        Ok(())
    };
    // Clears both models' gradients, whatever the outcome.
    let parameter_gradients = guarded(backward::GRADIENT_COMPUTATION, || {
        backward::judge_parameter_gradients(
            model,
            Some((reference, &mut reference_backward)),
            gradient_tolerance,
        )
    });
    let Some(theirs) = theirs else {
        return Err(reference_error(lens_core::model::ModelError::InvalidInput(
            parameter_gradients.message.clone(),
        )));
    };
    Ok(BackwardRecording {
        ours,
        theirs,
        parameter_gradients,
    })
}

/// The forward and backward pass: every hook's activation and gradient; the parameters'
/// gradients are left accumulated.
fn backward_pass(
    model: &dyn LensModel,
    tokens: &Tensor,
    target: GradientTarget,
) -> ModelResult<ActivationCache> {
    model.zero_grad();
    let (_, cache) = model.run_with_cache_and_backward(
        tokens,
        &ForwardOptions::default(),
        &CacheOptions::default(),
        &|out| target.of(out),
    )?;
    Ok(cache)
}

/// Judges [`FORWARD_JUDGED`] on both models' forward passes, each timed.
pub fn judge_forward(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    [ours, theirs]: [&ForwardRecording; 2],
    tolerance: f64,
) -> Vec<BenchmarkResult> {
    let critical_names = hooks::critical_forward_hooks_of(reference);
    let judges: [Judge; 4] = [
        &|| forward::judge_logits(&ours.output, &theirs.output, tolerance),
        &|| forward::judge_loss(&ours.output, &theirs.output, tolerance),
        &|| {
            let caches = (&ours.activations, &theirs.activations);
            let name = FORWARD_JUDGED[2];
            Ok(hooks::judge_critical(
                name,
                &critical_names,
                caches.0,
                caches.1,
                tolerance,
            ))
        },
        &|| {
            let caches = [&ours.activations, &theirs.activations];
            let counts = [&ours.firings, &theirs.firings];
            Ok(hooks::judge_forward_hooks(
                model, reference, caches, counts, tolerance,
            ))
        },
    ];
    timed(&FORWARD_JUDGED, &judges)
}

/// Judges [`CACHE_JUDGED`] on both models' forward passes, each timed.
fn judge_caches(
    model: &dyn LensModel,
    [ours, theirs]: [&ForwardRecording; 2],
    tolerance: f64,
) -> Vec<BenchmarkResult> {
    let judges: [Judge; 2] = [
        &|| {
            let theirs = Some(&theirs.activations);
            Ok(cache::judge_run_with_cache(
                model,
                &ours.activations,
                theirs,
            ))
        },
        &|| {
            let caches = (&ours.activations, &theirs.activations);
            Ok(cache::judge_activation_cache(caches.0, caches.1, tolerance))
        },
    ];
    timed(&CACHE_JUDGED, &judges)
}

/// Judges [`BACKWARD_JUDGED`] on the backward recordings, each timed.
fn judge_backward(
    reference: &dyn LensModel,
    recording: &BackwardRecording,
    target: GradientTarget,
    tolerance: f64,
) -> Vec<BenchmarkResult> {
    let critical = backward::critical_gradient_names(reference);
    let gradients = |name: &str, names: Option<Vec<String>>| {
        let (ours, theirs) = (&recording.ours, &recording.theirs);
        Ok(backward::judge_gradients(
            name, ours, theirs, names, target, tolerance,
        ))
    };
    let judges: [Judge; 3] = [
        &|| Ok(recording.parameter_gradients.clone()),
        &|| gradients(BACKWARD_JUDGED[1], Some(critical.clone())),
        &|| gradients(BACKWARD_JUDGED[2], None),
    ];
    timed(&BACKWARD_JUDGED, &judges)
}

/// A benchmark's verdict on a recording.
type Judge<'a> = &'a dyn Fn() -> ModelResult<BenchmarkResult>;

/// Runs each judge under its benchmark's name ([`guarded`]), with the seconds it took.
fn timed(names: &[&str], judges: &[Judge]) -> Vec<BenchmarkResult> {
    names
        .iter()
        .zip(judges)
        .map(|(name, judge)| {
            let started = Instant::now();
            let mut result = guarded(name, judge);
            result.seconds = Some(started.elapsed().as_secs_f64());
            result
        })
        .collect()
}
