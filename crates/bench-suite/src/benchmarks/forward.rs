//! Forward-pass benchmarks: logits and loss against a reference.

use lens_core::model::{ForwardOptions, LensModel, ReturnType};
use tch::Tensor;

use super::{guarded, reference_error, Inputs};
use crate::compare::compare;
use crate::result::BenchmarkResult;

/// The model's logits against reference logits computed elsewhere (the raw HF model's, in
/// Phase 1).
pub fn forward_pass(
    model: &dyn LensModel,
    inputs: &Inputs,
    reference_logits: &Tensor,
    tolerance: f64,
) -> BenchmarkResult {
    let name = "forward_pass_logits";
    guarded(name, || {
        let _no_grad = tch::no_grad_guard();
        let logits = model
            .forward(&inputs.tokens, &ForwardOptions::default())?
            .logits()?
            .shallow_clone();
        let outcome = compare(&logits, reference_logits, None);
        Ok(verdict(name, outcome, tolerance, "logits"))
    })
}

/// Logits of the model and of a reference model on the same tokens.
pub fn logits_equivalence(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    inputs: &Inputs,
    tolerance: f64,
) -> BenchmarkResult {
    let name = "logits_equivalence";
    guarded(name, || {
        let _no_grad = tch::no_grad_guard();
        let ours = model
            .forward(&inputs.tokens, &ForwardOptions::default())?
            .logits()?
            .shallow_clone();
        let theirs = reference
            .forward(&inputs.tokens, &ForwardOptions::default())
            .map_err(reference_error)?;
        Ok(verdict(
            name,
            compare(&ours, theirs.logits()?, None),
            tolerance,
            "logits",
        ))
    })
}

/// Mean next-token loss of the model and of a reference model.
pub fn loss_equivalence(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    inputs: &Inputs,
    tolerance: f64,
) -> BenchmarkResult {
    let name = "loss_equivalence";
    guarded(name, || {
        let _no_grad = tch::no_grad_guard();
        let options = ForwardOptions {
            return_type: ReturnType::Loss,
            ..ForwardOptions::default()
        };
        let ours = model
            .forward(&inputs.tokens, &options)?
            .loss()?
            .shallow_clone();
        let theirs = reference
            .forward(&inputs.tokens, &options)
            .map_err(reference_error)?
            .loss()?
            .shallow_clone();
        let (a, b) = (ours.double_value(&[]), theirs.double_value(&[]));
        Ok(
            verdict(name, compare(&ours, &theirs, None), tolerance, "loss")
                .with("loss", a)
                .with("reference_loss", b),
        )
    })
}

fn verdict(
    name: &str,
    outcome: crate::compare::Comparison,
    tolerance: f64,
    what: &str,
) -> BenchmarkResult {
    let detail = outcome.describe();
    if outcome.within(tolerance) {
        BenchmarkResult::pass(name, format!("{what} match ({detail} <= {tolerance:.0e})"))
    } else {
        BenchmarkResult::fail(name, format!("{what} differ: {detail} > {tolerance:.0e}"))
    }
    .with("comparison", detail)
    .with("tolerance", tolerance)
}
