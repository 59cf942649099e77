//! What a comparison phase records of both models once, for every benchmark that only reads a
//! pass: a forward pass with every hook cached and counted (logits and loss, activations, how
//! often each hook fired), and a forward and backward pass from the phase's gradient target with
//! every hook's gradient and every parameter's gradient. The benchmarks that must run passes of
//! their own (ablation, hook options, weight edits, generation) still do.
//!
//! The parameter gradients are judged while the reference's backward pass runs
//! ([`backward::judge_parameter_gradients`]), so the recording holds the model's gradient set and
//! never the reference's.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hookpoint::{ActivationCache, CacheOptions, Hook, HookSpec, NamesFilter};
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

/// One model's passes.
pub struct Recording {
    /// The forward pass.
    pub forward: ForwardRecording,
    /// Every hook's activation and gradient (`<hook>_grad`) in the forward and backward pass.
    pub gradients: ActivationCache,
}

/// Both models' recordings, and `gradient_computation`'s result.
pub struct PhaseRecording {
    /// The model under test.
    pub ours: Recording,
    /// The reference.
    pub theirs: Recording,
    /// The parameter gradients compared, judged during the reference's backward pass.
    pub parameter_gradients: BenchmarkResult,
}

/// Records both models on the text. An error of either model's passes is returned (marked as
/// the reference's where it is); both models' parameter gradients are cleared however it ends.
pub fn record_phase(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    inputs: &Inputs,
    target: GradientTarget,
    gradient_tolerance: f64,
) -> ModelResult<PhaseRecording> {
    let tokens = &inputs.tokens;
    let forward = forward_pass(model, tokens)?;
    let gradients = match backward_pass(model, tokens, target) {
        Ok(gradients) => gradients,
        Err(error) => {
            model.zero_grad();
            return Err(error);
        }
    };
    let ours = Recording { forward, gradients };
    let theirs_forward = forward_pass(reference, tokens).map_err(reference_error);
    let forward = match theirs_forward {
        Ok(recorded) => recorded,
        Err(error) => {
            model.zero_grad();
            return Err(error);
        }
    };
    let mut theirs_gradients = None;
    let mut reference_backward = || {
        theirs_gradients = Some(backward_pass(reference, tokens, target)?);
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
    let Some(gradients) = theirs_gradients else {
        return Err(reference_error(lens_core::model::ModelError::InvalidInput(
            parameter_gradients.message.clone(),
        )));
    };
    Ok(PhaseRecording {
        ours,
        theirs: Recording { forward, gradients },
        parameter_gradients,
    })
}

/// Both models' forward passes ([`forward_pass`]), for phases without gradients.
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
    let counts: Arc<Mutex<FiringCounts>> = Arc::default();
    let sink = counts.clone();
    let counter = Hook::new(move |_, ctx| {
        *sink
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(ctx.name().to_owned())
            .or_insert(0) += 1;
        None
    });
    let options = ForwardOptions {
        return_type: ReturnType::Both,
        ..ForwardOptions::default()
    };
    let counting = [HookSpec::forward(NamesFilter::All, counter)];
    let (output, cache) = model.hooks().with_hooks(&counting, || {
        model.run_with_cache(tokens, &options, &CacheOptions::default())
    })??;
    let firings = counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(ForwardRecording {
        output,
        activations: cache,
        firings,
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

/// The benchmarks judged on a forward recording, in the suite's order.
pub const FORWARD_JUDGED: [&str; 4] = [
    "logits_equivalence",
    "loss_equivalence",
    "critical_forward_hooks",
    "forward_hooks",
];

/// The benchmarks judged on a phase's recording, in the suite's order: those of
/// [`FORWARD_JUDGED`], then these.
pub const PHASE_JUDGED: [&str; 5] = [
    "run_with_cache",
    "activation_cache",
    "gradient_computation",
    "critical_backward_hooks",
    "backward_hooks",
];

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

/// Judges [`FORWARD_JUDGED`] and [`PHASE_JUDGED`] on a phase's recording, each timed.
pub fn judge_phase(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    recording: &PhaseRecording,
    target: GradientTarget,
    tolerance: Tolerances,
) -> Vec<BenchmarkResult> {
    let (ours, theirs) = (&recording.ours, &recording.theirs);
    let mut results = judge_forward(
        model,
        reference,
        [&ours.forward, &theirs.forward],
        tolerance.activations,
    );
    let critical_gradients = backward::critical_gradient_names(reference);
    let gradients = |name: &str, names: Option<Vec<String>>| {
        let (ours, theirs) = (&ours.gradients, &theirs.gradients);
        Ok(backward::judge_gradients(
            name,
            ours,
            theirs,
            names,
            target,
            tolerance.gradients,
        ))
    };
    let judges: [Judge; 5] = [
        &|| {
            let theirs = Some(&theirs.forward.activations);
            Ok(cache::judge_run_with_cache(
                model,
                &ours.forward.activations,
                theirs,
            ))
        },
        &|| {
            let caches = (&ours.forward.activations, &theirs.forward.activations);
            Ok(cache::judge_activation_cache(
                caches.0,
                caches.1,
                tolerance.activations,
            ))
        },
        &|| Ok(recording.parameter_gradients.clone()),
        &|| gradients(PHASE_JUDGED[3], Some(critical_gradients.clone())),
        &|| gradients(PHASE_JUDGED[4], None),
    ];
    results.extend(timed(&PHASE_JUDGED, &judges));
    results
}

/// What [`recorded_benchmarks`] gives the rest of a phase.
pub struct RecordedPhase {
    /// Every benchmark of [`FORWARD_JUDGED`] and [`PHASE_JUDGED`], in that order.
    pub results: Vec<BenchmarkResult>,
    /// Seconds spent recording.
    pub seconds: f64,
    /// Both models' clean losses from the forward recording, for the benchmarks that measure a
    /// change of the loss (`None` when the recording failed).
    pub clean_losses: Option<CleanLosses>,
}

/// Records both models and judges every benchmark of [`FORWARD_JUDGED`] and [`PHASE_JUDGED`]
/// (a recording that fails makes each an ERROR).
pub fn recorded_benchmarks(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    inputs: &Inputs,
    target: GradientTarget,
    tolerance: Tolerances,
) -> RecordedPhase {
    let started = Instant::now();
    let recorded = catch_unwind(AssertUnwindSafe(|| {
        record_phase(model, reference, inputs, target, tolerance.gradients)
    }));
    let seconds = started.elapsed().as_secs_f64();
    let why = match recorded {
        Ok(Ok(recording)) => {
            let loss = |r: &Recording| r.forward.output.loss().ok().map(|l| l.double_value(&[]));
            let clean_losses = loss(&recording.ours)
                .zip(loss(&recording.theirs))
                .map(|(ours, theirs)| CleanLosses { ours, theirs });
            return RecordedPhase {
                results: judge_phase(model, reference, &recording, target, tolerance),
                seconds,
                clean_losses,
            };
        }
        Ok(Err(error)) => format!("could not record both models: {error}"),
        Err(_) => "panicked while recording both models".to_owned(),
    };
    let results = FORWARD_JUDGED
        .iter()
        .chain(&PHASE_JUDGED)
        .map(|name| BenchmarkResult::error(name, why.clone()))
        .collect();
    RecordedPhase {
        results,
        seconds,
        clean_losses: None,
    }
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
