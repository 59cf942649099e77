//! The benchmarks. Each takes the model under test (the bridge, in the suite), the inputs, an
//! optional reference and a tolerance, and returns a [`BenchmarkResult`]; none panics or
//! returns an error: a failure to run becomes an ERROR result.

pub mod backward;
pub mod cache;
pub mod forward;
pub mod generation;
pub mod hooks;
pub mod recording;
pub mod weights;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use hookpoint::{ActivationCache, CacheOptions};
use lens_core::model::{ForwardOptions, ForwardOutput, LensModel, ModelError, ModelResult};
use tch::{Kind, Tensor};

use crate::compare::{compare_at_scale, Comparison};
use crate::result::BenchmarkResult;

/// What every benchmark runs the models on.
#[derive(Debug)]
pub struct Inputs {
    /// The text, for reports.
    pub text: String,
    /// Its tokens `[1, p]` (BOS prepended).
    pub tokens: Tensor,
    /// Greedy/sampled generation prompts (the Python suite's trio).
    pub prompts: Vec<Tensor>,
}

/// A model's mean next-token loss on the text (the loss of a plain forward pass), computed once
/// and given to the benchmarks that measure a change of it.
pub fn clean_loss(model: &dyn LensModel, inputs: &Inputs) -> ModelResult<f64> {
    let _no_grad = tch::no_grad_guard();
    let options = ForwardOptions {
        return_type: lens_core::model::ReturnType::Loss,
        ..ForwardOptions::default()
    };
    Ok(model
        .forward(&inputs.tokens, &options)?
        .loss()?
        .double_value(&[]))
}

/// Both models' [`clean_loss`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CleanLosses {
    /// The model's.
    pub ours: f64,
    /// The reference's.
    pub theirs: f64,
}

/// The scalar whose gradients the backward benchmarks compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradientTarget {
    /// `logits[:, -1, :].sum()` (the Python suite's choice).
    SumLastLogits,
    /// `logits[:, -1, :].log_softmax(-1).sum()`.
    SumLastLogProbs,
    /// `logits[:, -1, :].log_softmax(-1) . r`, with `r` a fixed pseudo-random vector, uniform in
    /// `[-1, 1)` over the vocabulary ([`projection`]): the Phase-3 target. After center_unembed
    /// the summed logits have an exactly zero gradient (every column of W_U sums to zero over the
    /// vocabulary), and the summed log-probabilities have the gradient `1 - V p` per logit, a
    /// difference of terms of size 1 and `V p` that cancel: on a short input (one position) that
    /// is rounding noise. Here the gradient of logit `j` is `r_j - (sum r) p_j`: no cancellation
    /// (`sum r` is of order `sqrt(V)`, `p_j` of order `1 / V`), whatever the input, and invariant
    /// under weight processing, as log-probabilities are.
    LastLogProbsProjection,
}

/// The seed of [`projection`].
pub const PROJECTION_SEED: u64 = 20_261_201;

/// The fixed projection of [`GradientTarget::LastLogProbsProjection`]: `d_vocab` values uniform
/// in `[-1, 1)` from a generator seeded with [`PROJECTION_SEED`], f32.
pub fn projection(d_vocab: i64, device: tch::Device) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(PROJECTION_SEED);
    let values: Vec<f32> = (0..d_vocab).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    Tensor::from_slice(&values).to_device(device)
}

impl GradientTarget {
    /// The scalar for a forward output.
    pub fn of(self, output: &ForwardOutput) -> ModelResult<Tensor> {
        let last = output.logits()?.select(1, -1);
        Ok(match self {
            GradientTarget::SumLastLogits => last.sum(Kind::Float),
            GradientTarget::SumLastLogProbs => last.log_softmax(-1, Kind::Float).sum(Kind::Float),
            GradientTarget::LastLogProbsProjection => {
                let r = projection(last.size()[1], last.device());
                (last.log_softmax(-1, Kind::Float) * r).sum(Kind::Float)
            }
        })
    }
}

/// Runs a benchmark body, turning an error or a panic into an ERROR result named `name`.
pub fn guarded(name: &str, body: impl FnOnce() -> ModelResult<BenchmarkResult>) -> BenchmarkResult {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(result)) => result,
        Ok(Err(error)) => BenchmarkResult::error(name, format!("could not run: {error}")),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown panic".to_owned());
            BenchmarkResult::error(name, format!("panicked: {message}"))
        }
    }
}

/// Runs `model` on `tokens` recording every hook that fires (and its gradient for `target`).
pub fn capture(
    model: &dyn LensModel,
    tokens: &Tensor,
    target: Option<GradientTarget>,
) -> ModelResult<ActivationCache> {
    // Without gradients there is no reason to record a graph (time and memory).
    let _no_grad = target.is_none().then(tch::no_grad_guard);
    model.zero_grad();
    let (forward, options) = (ForwardOptions::default(), CacheOptions::default());
    let (_, cache) = match target {
        Some(target) => {
            model.run_with_cache_and_backward(tokens, &forward, &options, &|out| target.of(out))?
        }
        None => model.run_with_cache(tokens, &forward, &options)?,
    };
    model.zero_grad();
    Ok(cache)
}

/// [`capture`] of the model and of the reference (whose errors are marked as the reference's).
pub fn capture_both(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    inputs: &Inputs,
    target: Option<GradientTarget>,
) -> ModelResult<(ActivationCache, ActivationCache)> {
    let ours = capture(model, &inputs.tokens, target)?;
    let theirs = capture(reference, &inputs.tokens, target).map_err(reference_error)?;
    Ok((ours, theirs))
}

/// Hook points of `model` that are not gated off but are absent from `cache` (never fired).
pub fn never_fired(model: &dyn LensModel, cache: &ActivationCache) -> Vec<String> {
    let registry = model.hooks();
    registry
        .names()
        .filter(|name| registry.disabled_by(name).is_none() && !cache.contains(*name))
        .map(str::to_owned)
        .collect()
}

/// For attention scores and their gradients: the entries the reference did not mask (finite
/// reference scores).
fn unmasked(name: &str, reference: &ActivationCache) -> Option<Tensor> {
    let activation = name.strip_suffix("_grad").unwrap_or(name);
    if !activation.ends_with("hook_attn_scores") {
        return None;
    }
    reference.get(activation).ok().map(Tensor::isfinite)
}

/// For a LayerNorm's `hook_scale_grad`: the largest `sum_d |normalized_d * grad_normalized_d| /
/// scale` in `reference`. The gradient at the scale is `-(1/scale) sum_d normalized_d *
/// grad_normalized_d`, terms of both signs that cancel to a small fraction of their size (on a
/// GPT-2-small-shaped model about 1/50), so the rounding error of any f32 evaluation is
/// proportional to the terms, not to the result; this is the scale its error is measured on.
fn scale_gradient_terms(name: &str, reference: &ActivationCache) -> Option<f64> {
    let prefix = name.strip_suffix("hook_scale_grad")?;
    let normalized = reference.get(format!("{prefix}hook_normalized")).ok()?;
    let gradient = reference
        .get(format!("{prefix}hook_normalized_grad"))
        .ok()?;
    let scale = reference.get(format!("{prefix}hook_scale")).ok()?;
    let terms =
        (normalized * gradient)
            .abs()
            .sum_dim_intlist([-1i64].as_slice(), true, Kind::Double)
            / scale.to_kind(Kind::Double);
    Some(terms.max().double_value(&[]))
}

/// One hook compared between two caches.
#[derive(Debug)]
pub struct HookComparison {
    /// Reference hook names absent from the tested cache.
    pub missing: Vec<String>,
    /// `(name, description)` of hooks outside tolerance.
    pub mismatches: Vec<(String, String)>,
    /// Largest err seen.
    pub worst: f64,
    /// How many hooks were compared.
    pub compared: usize,
    /// `(name, err)` of every compared hook; `inf` where the shapes or non-finite entries differ.
    pub errors: Vec<(String, f64)>,
}

/// Compares every entry of `reference` named in `names` (all of them when `None`) with `ours`.
/// Attention scores are compared on unmasked entries, and masked entries must be masked (-inf)
/// on both sides (their gradients: zero on both sides).
pub fn compare_caches(
    ours: &ActivationCache,
    reference: &ActivationCache,
    names: Option<&[String]>,
    tolerance: f64,
) -> HookComparison {
    let wanted: Vec<String> = match names {
        Some(names) => names.to_vec(),
        None => reference.keys().map(str::to_owned).collect(),
    };
    let mut report = HookComparison {
        missing: Vec::new(),
        mismatches: Vec::new(),
        worst: 0.0,
        compared: 0,
        errors: Vec::new(),
    };
    for name in wanted {
        let Ok(expected) = reference.get(name.as_str()) else {
            report
                .missing
                .push(format!("{name} (not in the reference)"));
            continue;
        };
        let Ok(actual) = ours.get(name.as_str()) else {
            report.missing.push(name);
            continue;
        };
        let keep = unmasked(&name, reference);
        let magnitude = scale_gradient_terms(&name, reference).unwrap_or(0.0);
        let mut outcome = compare_at_scale(actual, expected, keep.as_ref(), magnitude);
        if let (Some(keep), Comparison::Compared { .. }) = (&keep, &outcome) {
            let masked = keep.logical_not();
            let (a, b) = (
                actual.to_device(tch::Device::Cpu).masked_select(&masked),
                expected.masked_select(&masked),
            );
            if !a.equal(&b) {
                outcome = Comparison::NonFiniteMismatch {
                    count: i64::try_from(a.ne_tensor(&b).sum(Kind::Int64)).unwrap_or(-1),
                };
            }
        }
        report.compared += 1;
        let err = match outcome {
            Comparison::Compared { err } => err,
            _ => f64::INFINITY,
        };
        if err.is_finite() {
            report.worst = report.worst.max(err);
        }
        report.errors.push((name.clone(), err));
        if !outcome.within(tolerance) {
            report.mismatches.push((name, outcome.describe()));
        }
    }
    report
}

/// The first few items of a list, for a result's details.
pub fn sample_of(items: &[String]) -> Vec<String> {
    items.iter().take(8).cloned().collect()
}

/// Mismatch list as `name: description`.
pub fn describe(mismatches: &[(String, String)]) -> Vec<String> {
    mismatches
        .iter()
        .map(|(n, d)| format!("{n}: {d}"))
        .collect()
}

/// Errors from the reference are reported as such.
pub fn reference_error(error: ModelError) -> ModelError {
    ModelError::InvalidInput(format!("the reference model failed: {error}"))
}

/// `name -> tensor` for a result's details.
pub type Named = BTreeMap<String, Tensor>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_projection_is_fixed_and_its_gradient_is_of_size_one() {
        let (a, b) = (
            projection(1000, tch::Device::Cpu),
            projection(1000, tch::Device::Cpu),
        );
        assert!(a.equal(&b));
        assert!(a.abs().max().double_value(&[]) < 1.0);
        // On one position, the gradient of logit j is r_j - (sum r) p_j: of size 1, where the
        // summed log-probs' gradient, 1 - V p_j, cancels to rounding.
        let logits =
            Tensor::randn([1, 1, 1000], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
        let output = ForwardOutput {
            logits: Some(logits.shallow_clone()),
            loss: None,
            residual: None,
        };
        GradientTarget::LastLogProbsProjection
            .of(&output)
            .unwrap()
            .backward();
        let grad = logits.grad();
        let p = logits.detach().softmax(-1, Kind::Float);
        let expected = &a - a.sum(Kind::Float) * &p;
        let err = (grad.reshape([-1]) - expected.reshape([-1])).abs().max();
        assert!(err.double_value(&[]) < 1e-6);
    }
}
