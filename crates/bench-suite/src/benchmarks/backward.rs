//! Backward benchmarks: the gradient at every hook, and the gradients of the parameters.

use std::collections::BTreeMap;

use hookpoint::ActivationCache;
use lens_core::model::{ForwardOptions, LensModel, ModelResult};
use tch::Tensor;

use super::hooks::critical_forward_hooks_of;
use super::{
    capture_both, compare_caches, describe, guarded, judge_one_recording, reference_error,
    sample_of, GradientTarget, Inputs,
};
use crate::compare::{compare_at_scale, max_abs, Comparison};
use crate::result::BenchmarkResult;

/// The gradient of `target` at every hook of the reference, compared with the model's.
pub fn backward_hooks(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    inputs: &Inputs,
    target: GradientTarget,
    tolerance: f64,
) -> BenchmarkResult {
    compare_gradients(
        "backward_hooks",
        model,
        reference,
        inputs,
        target,
        tolerance,
        None,
    )
}

/// The same on the critical hooks (the critical forward list without the embeddings' positional
/// part and ln_final, as in the Python suite).
pub fn critical_backward_hooks(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    inputs: &Inputs,
    target: GradientTarget,
    tolerance: f64,
) -> BenchmarkResult {
    compare_gradients(
        "critical_backward_hooks",
        model,
        reference,
        inputs,
        target,
        tolerance,
        Some(critical_gradient_names(reference)),
    )
}

/// [`critical_backward_hooks`] and [`backward_hooks`], in that order, from one recorded forward
/// and backward pass per model (the two compare the same recording on different names; the
/// suite runs them this way to halve its backward passes).
pub fn critical_and_all_backward_hooks(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    inputs: &Inputs,
    target: GradientTarget,
    tolerance: f64,
) -> [BenchmarkResult; 2] {
    let critical = "critical_backward_hooks";
    let all = "backward_hooks";
    judge_one_recording(
        model,
        reference,
        inputs,
        Some(target),
        [
            (critical, &|ours, theirs| {
                let names = Some(critical_gradient_names(reference));
                Ok(judge_gradients(
                    critical, ours, theirs, names, target, tolerance,
                ))
            }),
            (all, &|ours, theirs| {
                Ok(judge_gradients(all, ours, theirs, None, target, tolerance))
            }),
        ],
    )
}

fn critical_gradient_names(reference: &dyn LensModel) -> Vec<String> {
    critical_forward_hooks_of(reference)
        .into_iter()
        .filter(|n| !matches!(n.as_str(), "hook_pos_embed" | "ln_final.hook_normalized"))
        .map(|n| format!("{n}_grad"))
        .collect()
}

fn compare_gradients(
    name: &str,
    model: &dyn LensModel,
    reference: &dyn LensModel,
    inputs: &Inputs,
    target: GradientTarget,
    tolerance: f64,
    names: Option<Vec<String>>,
) -> BenchmarkResult {
    guarded(name, || {
        let (ours, theirs) = capture_both(model, reference, inputs, Some(target))?;
        Ok(judge_gradients(
            name, &ours, &theirs, names, target, tolerance,
        ))
    })
}

/// Compares the recorded hook gradients `names` (every gradient the reference recorded when
/// `None`).
fn judge_gradients(
    name: &str,
    ours: &ActivationCache,
    theirs: &ActivationCache,
    names: Option<Vec<String>>,
    target: GradientTarget,
    tolerance: f64,
) -> BenchmarkResult {
    let names = names.unwrap_or_else(|| {
        theirs
            .keys()
            .filter(|k| k.ends_with("_grad"))
            .map(str::to_owned)
            .collect()
    });
    if names.is_empty() {
        return BenchmarkResult::fail(name, "the reference recorded no gradient at all");
    }
    let report = compare_caches(ours, theirs, Some(&names), tolerance);
    if report.missing.is_empty() && report.mismatches.is_empty() {
        BenchmarkResult::pass(
            name,
            format!("all {} hook gradients match", report.compared),
        )
    } else {
        BenchmarkResult::fail(
            name,
            format!(
                "{} gradient mismatches, {} missing",
                report.mismatches.len(),
                report.missing.len()
            ),
        )
        .with("mismatches", sample_of(&describe(&report.mismatches)))
        .with("missing", sample_of(&report.missing))
    }
    .with("compared", report.compared)
    .with("worst_err", report.worst)
    .with_errors(report.errors)
    .with("loss", format!("{target:?}"))
}

/// Backward from `target` reaches every parameter, and (with a reference) each parameter's
/// gradient, in TransformerLens layout, equals the reference's.
///
/// Two facts shape the comparison. Weights tied in the model but separate in the reference
/// (GPT-2's embedding and unembedding, before compatibility mode unties them) receive the sum of
/// the reference's two gradients. And a bias gradient is a sum over positions of upstream
/// gradients that may cancel — b_K's true gradient is exactly zero, softmax being blind to a
/// shift shared by all keys — so what a float backward pass returns for it is rounding noise at
/// the scale of its block's gradients; each gradient's error is therefore measured against the
/// largest reference gradient of its block (`blocks.3`, `embed`, `unembed`...), which bounds
/// that noise without leaving any parameter out.
pub fn gradient_computation(
    model: &dyn LensModel,
    reference: Option<&dyn LensModel>,
    inputs: &Inputs,
    target: GradientTarget,
    tolerance: f64,
) -> BenchmarkResult {
    let name = "gradient_computation";
    guarded(name, || {
        backward_once(model, inputs, target)?;
        if let Some(reference) = reference {
            backward_once(reference, inputs, target).map_err(reference_error)?;
        }
        let names = model.tl_weight_names();
        let reference_names = reference.map(|r| r.tl_weight_names()).unwrap_or_default();
        let our_storage = storage_of(model, &names);
        let their_storage = reference
            .map(|r| storage_of(r, &reference_names))
            .unwrap_or_default();
        let mut without = Vec::new();
        let mut pairs: Vec<(String, Tensor, Tensor)> = Vec::new();
        // Constants (zero biases a checkpoint lacks, a parameterless LayerNorm's ones and
        // zeros) have no parameter to reach; they are counted in the result, must hold the value
        // they are declared to, and every other weight must get its gradient.
        let (constant, trainable): (Vec<&String>, Vec<&String>) =
            names.iter().partition(|w| model.tl_weight_is_constant(w));
        let mut mismatches = Vec::new();
        for weight in &constant {
            let fill = model.tl_weight_constant(weight).unwrap_or(0.0);
            if max_abs(&(model.tl_weight(weight)? - fill)) != 0.0 {
                mismatches.push(format!(
                    "{weight}: declared the constant {fill}, but is not"
                ));
            }
        }
        for weight in trainable {
            let Some(ours) = model.tl_weight_grad(weight)? else {
                without.push(weight.clone());
                continue;
            };
            // Weights the reference does not have (a processed HookedTransformer has no
            // LayerNorm weights) are only required to get a gradient.
            if let Some(reference) = reference.filter(|_| reference_names.contains(weight)) {
                match reference_gradient(model, reference, weight, &our_storage, &their_storage)
                    .map_err(reference_error)?
                {
                    Some(theirs) => pairs.push((weight.clone(), ours, theirs)),
                    None => without.push(format!("{weight} (reference)")),
                }
            }
        }
        let mut scales: BTreeMap<&str, f64> = BTreeMap::new();
        for (weight, _, theirs) in &pairs {
            let scale = scales.entry(group_of(weight)).or_insert(1.0);
            *scale = scale.max(max_abs(theirs));
        }
        let mut worst = 0.0f64;
        for (weight, ours, theirs) in &pairs {
            let theirs = theirs.to_device(ours.device());
            match compare_at_scale(ours, &theirs, None, scales[group_of(weight)]) {
                Comparison::Compared { err } => {
                    worst = worst.max(err);
                    // NaN counts as a mismatch.
                    if err.is_nan() || err > tolerance {
                        mismatches.push(format!("{weight}: err {err:.2e}"));
                    }
                }
                other => mismatches.push(format!("{weight}: {}", other.describe())),
            }
        }
        // Only now: the gradients above are views of the parameters' .grad storage.
        model.zero_grad();
        if let Some(reference) = reference {
            reference.zero_grad();
        }
        Ok(if without.is_empty() && mismatches.is_empty() {
            BenchmarkResult::pass(
                name,
                format!(
                    "every parameter got a gradient; {} compared with the reference",
                    pairs.len()
                ),
            )
        } else {
            BenchmarkResult::fail(
                name,
                format!(
                    "{} parameters without gradient, {} mismatches, {} compared",
                    without.len(),
                    mismatches.len(),
                    pairs.len()
                ),
            )
            .with("without_gradient", sample_of(&without))
            .with("mismatches", sample_of(&mismatches))
        }
        .with("constants", constant.len())
        .with("worst_err", worst))
    })
}

/// `blocks.3.attn.W_Q` -> `blocks.3`; `unembed.W_U` -> `unembed`.
fn group_of(weight: &str) -> &str {
    let end = if weight.starts_with("blocks.") {
        weight.match_indices('.').nth(1).map(|(i, _)| i)
    } else {
        weight.find('.')
    };
    &weight[..end.unwrap_or(weight.len())]
}

/// Where each TL weight of a model lives: `(data_ptr, numel)`, equal for two views of one
/// parameter (tied weights). Weights the model does not have are absent.
fn storage_of(model: &dyn LensModel, names: &[String]) -> BTreeMap<String, (usize, i64)> {
    names
        .iter()
        .filter_map(|name| Some((name.clone(), model.tl_weight_storage(name).ok()?)))
        .collect()
}

/// The weights tied to `weight` in a model, by [`storage_of`].
fn tied_to<'a>(
    storage: &'a BTreeMap<String, (usize, i64)>,
    weight: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    let own = storage.get(weight).copied();
    storage
        .iter()
        .filter(move |(name, place)| name.as_str() != weight && Some(**place) == own)
        .map(|(name, _)| name.as_str())
}

/// The reference's gradient for `weight`, summed over the weights tied to it in the model
/// (`ours`, by [`storage_of`]) but not in the reference (`theirs`), transposed into `weight`'s
/// layout and carried through the model's value relations where needed.
fn reference_gradient(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    weight: &str,
    ours: &BTreeMap<String, (usize, i64)>,
    theirs: &BTreeMap<String, (usize, i64)>,
) -> ModelResult<Option<Tensor>> {
    let Some(mut total) = reference.tl_weight_grad(weight)? else {
        return Ok(None);
    };
    for other in tied_to(ours, weight) {
        if tied_to(theirs, weight).any(|t| t == other) {
            continue;
        }
        if let Some(extra) = reference.tl_weight_grad(other)? {
            let extra = if extra.size() == total.size() {
                extra
            } else {
                extra.transpose(0, 1)
            };
            // Through the model's relations to the shared parameter: Gemma's `W_E` is the
            // tied embedding scaled, so the parameter's gradient is `s` times W_E's plus W_U's.
            let extra = model
                .tl_weight_value(weight)
                .grad_to_tl(&model.tl_weight_value(other).grad_to_hf(&extra));
            // Not `+=`: `total` may be the reference's own .grad storage.
            total = &total + extra;
        }
    }
    Ok(Some(total))
}

fn backward_once(
    model: &dyn LensModel,
    inputs: &Inputs,
    target: GradientTarget,
) -> ModelResult<()> {
    model.zero_grad();
    let output = model.forward(&inputs.tokens, &ForwardOptions::default())?;
    hookpoint::backward(&target.of(&output)?)?;
    Ok(())
}
