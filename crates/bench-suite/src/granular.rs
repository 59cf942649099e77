//! Phases 5 and 6 (opt-in, `--phases 5,6`): weight processing one step at a time (Phase 5) and
//! in the combinations TransformerLens 3.9.0's suite runs (Phase 6). For each set of steps a
//! fresh bridge is processed in compatibility mode and a fresh HookedTransformer with
//! `process_weights`, the same steps on both (TransformerLens's own refusals applied to both,
//! `lens_core::processing::applicable`), and compared: logits, loss, an ablation, the critical
//! and every forward hook, and the bridge's log-probs against its own unprocessed HF model
//! (processing changes no prediction). Results are named `<steps>/<check>`.

use bridge::{CompatibilityOptions, HfForward, TransformerBridge};
use hooked_ref::{HookedTransformer, ProcessingOptions};
use lens_core::model::{LensModel, ModelResult};

use crate::benchmarks::{forward, hooks, recording, Inputs};
use crate::compare::Tolerances;
use crate::result::BenchmarkResult;
use crate::suite::{load_options, Clock, Progress, SuiteOptions};

/// One set of processing steps, named as TransformerLens's suite names it.
#[derive(Clone, Copy, Debug)]
pub struct StepSet {
    /// `only_fold_ln`, `fold_ln+center_unembed`, ...
    pub name: &'static str,
    /// fold_ln, center_writing_weights, center_unembed, fold_value_biases.
    pub steps: [bool; 4],
}

impl StepSet {
    fn processing(self) -> ProcessingOptions {
        let [fold_ln, center_writing_weights, center_unembed, fold_value_biases] = self.steps;
        ProcessingOptions {
            fold_ln,
            center_writing_weights,
            center_unembed,
            fold_value_biases,
            refactor_factored_attn_matrices: false,
        }
    }

    fn compatibility(self) -> CompatibilityOptions {
        let p = self.processing();
        CompatibilityOptions {
            fold_ln: p.fold_ln,
            center_writing_weights: p.center_writing_weights,
            center_unembed: p.center_unembed,
            fold_value_biases: p.fold_value_biases,
            refactor_factored_attn_matrices: false,
            no_processing: false,
        }
    }
}

const fn set(name: &'static str, steps: [bool; 4]) -> StepSet {
    StepSet { name, steps }
}

/// Phase 5: each step alone (TransformerLens 3.9.0, `granular_weight_processing.py`).
pub const PHASE_5: [StepSet; 4] = [
    set("only_fold_ln", [true, false, false, false]),
    set("only_center_weights", [false, true, false, false]),
    set("only_center_unembed", [false, false, true, false]),
    set("only_fold_value_biases", [false, false, false, true]),
];

/// Phase 6: fold_ln with each other step, with each pair of them, and all four.
pub const PHASE_6: [StepSet; 7] = [
    set("fold_ln+center_weights", [true, true, false, false]),
    set("fold_ln+center_unembed", [true, false, true, false]),
    set("fold_ln+fold_value_biases", [true, false, false, true]),
    set(
        "fold_ln+center_weights+center_unembed",
        [true, true, true, false],
    ),
    set(
        "fold_ln+center_weights+fold_value_biases",
        [true, true, false, true],
    ),
    set(
        "fold_ln+center_unembed+fold_value_biases",
        [true, false, true, true],
    ),
    set("standard_all", [true, true, true, true]),
];

/// Runs Phase `phase` (5 or 6) on fresh models for each of its step sets.
pub(crate) fn run_phase(
    phase: u8,
    options: &SuiteOptions,
    inputs: &Inputs,
    tolerance: Tolerances,
    progress: Progress,
) -> Vec<BenchmarkResult> {
    let sets: &[StepSet] = match phase {
        5 => &PHASE_5,
        _ => &PHASE_6,
    };
    let mut results = Vec::new();
    for step_set in sets {
        progress(step_set.name);
        let mut clock = Clock::start();
        let outcome = run_set(*step_set, options, inputs, tolerance);
        let named = |mut r: BenchmarkResult| {
            r.name = format!("{}/{}", step_set.name, r.name);
            r.in_phase(phase)
        };
        match outcome {
            Ok(checks) => results.extend(checks.into_iter().map(|r| clock.stamp(named(r)))),
            Err(error) => results.push(clock.stamp(named(BenchmarkResult::error(
                "processing",
                error.to_string(),
            )))),
        }
    }
    results
}

/// One step set's checks on a freshly processed bridge and HookedTransformer.
fn run_set(
    step_set: StepSet,
    options: &SuiteOptions,
    inputs: &Inputs,
    tolerance: Tolerances,
) -> ModelResult<Vec<BenchmarkResult>> {
    let tol = tolerance.activations;
    let mut bridge = TransformerBridge::boot(&options.model, options.device, options.dtype)?;
    let unprocessed = tch::no_grad(|| {
        bridge.hf_model().forward(HfForward {
            input_ids: Some(&inputs.tokens),
            ..HfForward::default()
        })
    })?
    .logits;
    bridge.enable_compatibility_mode(step_set.compatibility())?;
    let mut checks = vec![forward::log_probs_equivalence(
        &bridge,
        inputs,
        &unprocessed,
        tol,
    )];
    if !options.use_ht_reference {
        return Ok(checks);
    }
    let reference = HookedTransformer::from_pretrained(
        &options.model,
        &load_options(options),
        step_set.processing(),
    )?;
    let reference: &dyn LensModel = &reference;
    // Logits, loss and both hook checks judge one forward pass of each model.
    let mut judged = match recording::record_forward(&bridge, reference, inputs) {
        Ok([ours, theirs]) => recording::judge_forward(&bridge, reference, [&ours, &theirs], tol),
        Err(error) => recording::FORWARD_JUDGED
            .iter()
            .map(|name| {
                BenchmarkResult::error(name, format!("could not record both models: {error}"))
            })
            .collect(),
    };
    let hook_checks = judged.split_off(2);
    checks.extend(judged);
    checks.push(hooks::hook_functionality(
        &bridge,
        Some(reference),
        inputs,
        tol,
    ));
    checks.extend(hook_checks);
    Ok(checks)
}

/// The names of a phase's results, in order (for tests and reports).
pub fn result_names(phase: u8, with_reference: bool) -> Vec<String> {
    let sets: &[StepSet] = if phase == 5 { &PHASE_5 } else { &PHASE_6 };
    let mut checks = vec!["log_probs_equivalence"];
    if with_reference {
        checks.extend([
            "logits_equivalence",
            "loss_equivalence",
            "hook_functionality",
            "critical_forward_hooks",
            "forward_hooks",
        ]);
    }
    sets.iter()
        .flat_map(|s| checks.iter().map(move |c| format!("{}/{c}", s.name)))
        .collect()
}
