//! Forward-pass benchmarks: logits and loss against a reference.

use bridge::{HfForward, TransformerBridge};
use lens_core::model::{ForwardOptions, ForwardOutput, LensModel, ModelResult, ReturnType};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::{Kind, Tensor};

use super::{guarded, reference_error, Inputs};
use crate::compare::{compare, Comparison};
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

/// The model's log-probs against those of reference logits (the unprocessed HF model's, in
/// Phases 5 and 6: weight processing may shift the logits per position, never a prediction).
pub fn log_probs_equivalence(
    model: &dyn LensModel,
    inputs: &Inputs,
    reference_logits: &Tensor,
    tolerance: f64,
) -> BenchmarkResult {
    let name = "log_probs_equivalence";
    guarded(name, || {
        let _no_grad = tch::no_grad_guard();
        let logits = model
            .forward(&inputs.tokens, &ForwardOptions::default())?
            .logits()?
            .shallow_clone();
        let ours = logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
        let theirs = reference_logits
            .to_kind(Kind::Float)
            .to_device(ours.device())
            .log_softmax(-1, Kind::Float);
        Ok(verdict(
            name,
            compare(&ours, &theirs, None),
            tolerance,
            "log-probs",
        ))
    })
}

/// Logits of the model and of a reference model on the same tokens.
pub fn logits_equivalence(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    inputs: &Inputs,
    tolerance: f64,
) -> BenchmarkResult {
    guarded("logits_equivalence", || {
        let (ours, theirs) = both_forward(model, reference, inputs)?;
        judge_logits(&ours, &theirs, tolerance)
    })
}

/// Mean next-token loss of the model and of a reference model.
pub fn loss_equivalence(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    inputs: &Inputs,
    tolerance: f64,
) -> BenchmarkResult {
    guarded("loss_equivalence", || {
        let (ours, theirs) = both_forward(model, reference, inputs)?;
        judge_loss(&ours, &theirs, tolerance)
    })
}

/// Both models' logits and loss on the text, without a graph.
fn both_forward(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    inputs: &Inputs,
) -> ModelResult<(ForwardOutput, ForwardOutput)> {
    let _no_grad = tch::no_grad_guard();
    let options = ForwardOptions {
        return_type: ReturnType::Both,
        ..ForwardOptions::default()
    };
    let ours = model.forward(&inputs.tokens, &options)?;
    let theirs = reference
        .forward(&inputs.tokens, &options)
        .map_err(reference_error)?;
    Ok((ours, theirs))
}

/// [`logits_equivalence`]'s verdict on two forward outputs.
pub fn judge_logits(
    ours: &ForwardOutput,
    theirs: &ForwardOutput,
    tolerance: f64,
) -> ModelResult<BenchmarkResult> {
    let outcome = compare(ours.logits()?, theirs.logits()?, None);
    Ok(verdict("logits_equivalence", outcome, tolerance, "logits"))
}

/// [`loss_equivalence`]'s verdict on two forward outputs.
pub fn judge_loss(
    ours: &ForwardOutput,
    theirs: &ForwardOutput,
    tolerance: f64,
) -> ModelResult<BenchmarkResult> {
    let (ours, theirs) = (ours.loss()?, theirs.loss()?);
    let (a, b) = (ours.double_value(&[]), theirs.double_value(&[]));
    let outcome = compare(ours, theirs, None);
    Ok(verdict("loss_equivalence", outcome, tolerance, "loss")
        .with("loss", a)
        .with("reference_loss", b))
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

/// Every component of the bridge (embeddings, each block and its norms, attention and MLP, the
/// final norm, the unembedding) run alone on random inputs through the bridge's hook points,
/// against the same component of the raw HF model (HF's fused kernels).
pub fn all_components(bridge: &TransformerBridge, tolerance: f64) -> BenchmarkResult {
    let name = "all_components";
    guarded(name, || {
        let _no_grad = tch::no_grad_guard();
        let dims = bridge.dims();
        let (device, kind) = (LensModel::device(bridge), LensModel::kind(bridge));
        let mut rng = StdRng::seed_from_u64(0);
        let (batch, len) = (2i64, 8i64.min(dims.n_ctx));
        let ids: Vec<i64> = (0..batch * len)
            .map(|_| rng.gen_range(0..dims.d_vocab))
            .collect();
        let ids = Tensor::from_slice(&ids)
            .reshape([batch, len])
            .to_device(device);
        let positions = Tensor::arange(len, (Kind::Int64, device))
            .unsqueeze(0)
            .repeat([batch, 1]);
        let hidden: Vec<f32> = (0..batch * len * dims.d_model)
            .map(|_| rng.gen_range(-2.0f32..2.0))
            .collect();
        let hidden = Tensor::from_slice(&hidden)
            .reshape([batch, len, dims.d_model])
            .to_device(device)
            .to_kind(kind);
        let (mut mismatches, mut worst) = (Vec::new(), 0.0f64);
        let components = bridge.hf_model().component_names();
        // A warm-up pass first: this check is the first work of a suite process. Once in about
        // 30 suite processes run ten at a time, the first component compared (blocks.0, the
        // first block run in the process) came out 1.1e-5 away from the same computation; the
        // thread count, MKL's and OpenMP's dynamic teams and the fused/unfused norm paths were
        // ruled out, the cause was not found. Every later check of the suite runs after earlier
        // passes; this one now does too.
        bridge.hf_model().forward(HfForward {
            input_ids: Some(&ids),
            ..HfForward::default()
        })?;
        for component in &components {
            let input = match component.as_str() {
                "embed" => &ids,
                "pos_embed" => &positions,
                _ => &hidden,
            };
            let ours = bridge.run_component(component, input)?;
            let theirs = bridge.hf_model().run_component(component, input)?;
            let outcome = compare(&ours, &theirs, None);
            if let Comparison::Compared { err } = outcome {
                worst = worst.max(err);
            }
            if !outcome.within(tolerance) {
                mismatches.push(format!("{component}: {}", outcome.describe()));
            }
        }
        Ok(if mismatches.is_empty() {
            BenchmarkResult::pass(
                name,
                format!("all {} components match the HF modules", components.len()),
            )
        } else {
            BenchmarkResult::fail(
                name,
                format!(
                    "{} of {} components differ from the HF modules",
                    mismatches.len(),
                    components.len()
                ),
            )
            .with("mismatches", super::sample_of(&mismatches))
        }
        .with("components", components.len())
        .with("worst_err", worst))
    })
}
