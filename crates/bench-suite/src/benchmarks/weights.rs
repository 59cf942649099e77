//! Weight benchmarks: what weight processing must produce (Phase 3), and that weights written
//! through the TransformerLens views reach the model.

use lens_core::model::{LensModel, ModelResult};
use tch::{Kind, Tensor};

use super::{clean_loss, guarded, reference_error, sample_of, CleanLosses, Inputs};
use crate::compare::{compare, max_abs, Comparison};
use crate::result::BenchmarkResult;
use lens_core::layout::in_memory_order;

fn weights_matching(model: &dyn LensModel, suffix: &str) -> Vec<String> {
    model
        .tl_weight_names()
        .into_iter()
        .filter(|n| n.ends_with(suffix))
        .collect()
}

/// Runs `check` on every weight whose name ends with `suffix`; the result passes when no weight
/// is reported.
fn every_weight(
    name: &str,
    model: &dyn LensModel,
    suffix: &str,
    what: &str,
    check: impl Fn(&Tensor) -> Option<String>,
) -> BenchmarkResult {
    guarded(name, || {
        let names = weights_matching(model, suffix);
        if names.is_empty() {
            return Ok(BenchmarkResult::fail(
                name,
                format!("no weight named *{suffix}"),
            ));
        }
        let mut bad = Vec::new();
        for weight in &names {
            if let Some(problem) = check(&model.tl_weight(weight)?.detach()) {
                bad.push(format!("{weight}: {problem}"));
            }
        }
        Ok(if bad.is_empty() {
            BenchmarkResult::pass(name, format!("{what} ({} weights)", names.len()))
        } else {
            BenchmarkResult::fail(
                name,
                format!("{} of {} weights fail: {what}", bad.len(), names.len()),
            )
            .with("failing", sample_of(&bad))
        })
    })
}

/// Zero within `tolerance` of the tensor's own scale (its rounding).
fn near_zero(t: &Tensor, scale_of: &Tensor, tolerance: f64) -> Option<String> {
    let scale = max_abs(scale_of).max(1.0);
    let worst = max_abs(t);
    (worst / scale > tolerance).then(|| format!("max |mean| {worst:.2e}"))
}

/// No weight holds NaN or an infinity.
pub fn no_nan_inf(model: &dyn LensModel) -> BenchmarkResult {
    every_weight("no_nan_inf", model, "", "all finite", |w| {
        // max |w| is finite exactly when every entry is; count only then (no temporaries in the
        // common case).
        if max_abs(w).is_finite() {
            return None;
        }
        let bad = i64::try_from(w.isfinite().logical_not().sum(Kind::Int64)).unwrap_or(-1);
        Some(format!("{bad} non-finite entries"))
    })
}

/// No weight is absurdly large (max |w| <= 1000), and no weight matrix is all but zero
/// (mean |w| >= 1e-6; biases may be zero).
pub fn weight_magnitudes(model: &dyn LensModel) -> BenchmarkResult {
    let name = "weight_magnitudes";
    guarded(name, || {
        let mut bad = Vec::new();
        let names = model.tl_weight_names();
        for weight in &names {
            // In memory order: the reductions below stride through a transposed view slowly.
            let w = in_memory_order(&model.tl_weight(weight)?.detach());
            let max = max_abs(&w);
            // The L1 norm over every dimension: mean |w| without an |w| temporary, or a copy
            // (which flattening a view would make).
            let every_dim: Vec<i64> = (0..w.dim() as i64).collect();
            let mean = if w.numel() == 0 {
                0.0
            } else if w.dim() == 0 {
                w.abs().to_kind(Kind::Double).double_value(&[])
            } else {
                w.norm_scalaropt_dim(1.0, every_dim.as_slice(), false)
                    .to_kind(Kind::Double)
                    .double_value(&[])
                    / w.numel() as f64
            };
            // Biases may legitimately be zero (b_V after folding, b_U of GPT-2); matrices may not.
            let is_bias = weight.rsplit('.').next().is_some_and(|last| {
                last == "b" || last.starts_with("b_") || last.starts_with("_b_")
            });
            if max > 1000.0 {
                bad.push(format!("{weight}: max |w| = {max:.3e}"));
            } else if !is_bias && mean < 1e-6 {
                bad.push(format!("{weight}: mean |w| = {mean:.3e}"));
            }
        }
        Ok(if bad.is_empty() {
            BenchmarkResult::pass(
                name,
                format!("magnitudes in range ({} weights)", names.len()),
            )
        } else {
            BenchmarkResult::fail(
                name,
                format!("{} of {} weights out of range", bad.len(), names.len()),
            )
            .with("failing", sample_of(&bad))
        })
    })
}

/// Every norm fold_ln folds (`ln1`, `ln2`, `ln_final`: those before a weight) has weight 1
/// and bias 0, or none at all (LNPre). Norms after a sublayer (Gemma's `ln1_post`, `ln2_post`)
/// and q/k norms read no weight to fold into, and keep theirs, as in TransformerLens.
pub fn layer_norm_folding(model: &dyn LensModel) -> BenchmarkResult {
    let name = "layer_norm_folding";
    guarded(name, || {
        let folded = |n: &str| {
            let norm = n.strip_suffix(".w").or_else(|| n.strip_suffix(".b"));
            norm.is_some_and(|norm| {
                norm == "ln_final" || norm.ends_with(".ln1") || norm.ends_with(".ln2")
            })
        };
        let norms: Vec<String> = model
            .tl_weight_names()
            .into_iter()
            .filter(|n| folded(n))
            .collect();
        let mut bad = Vec::new();
        for weight in &norms {
            let t = model.tl_weight(weight)?.detach();
            let identity = if weight.ends_with(".w") {
                t.ones_like()
            } else {
                t.zeros_like()
            };
            if !t.equal(&identity) {
                bad.push(weight.clone());
            }
        }
        Ok(if bad.is_empty() {
            BenchmarkResult::pass(
                name,
                format!(
                    "{} norm parameters are the identity (weights 1{})",
                    norms.len(),
                    if norms.iter().any(|n| n.ends_with(".b")) {
                        ", biases 0"
                    } else {
                        ""
                    }
                ),
            )
        } else {
            BenchmarkResult::fail(
                name,
                format!("{} norm parameters are not folded", bad.len()),
            )
            .with("unfolded", sample_of(&bad))
        })
    })
}

/// Every attention output matrix writes a zero-mean vector.
pub fn attention_output_centering(model: &dyn LensModel, tolerance: f64) -> BenchmarkResult {
    every_weight(
        "attention_output_centering",
        model,
        "attn.W_O",
        "W_O centred over d_model",
        |w| {
            near_zero(
                &w.to_kind(Kind::Float).mean_dim(-1, false, Kind::Float),
                w,
                tolerance,
            )
        },
    )
}

/// Every MLP output matrix writes a zero-mean vector.
pub fn mlp_output_centering(model: &dyn LensModel, tolerance: f64) -> BenchmarkResult {
    every_weight(
        "mlp_output_centering",
        model,
        "mlp.W_out",
        "W_out centred over d_model",
        |w| {
            near_zero(
                &w.to_kind(Kind::Float).mean_dim(-1, false, Kind::Float),
                w,
                tolerance,
            )
        },
    )
}

/// The unembedding is centred over the vocabulary.
pub fn unembed_centering(model: &dyn LensModel, tolerance: f64) -> BenchmarkResult {
    every_weight(
        "unembed_centering",
        model,
        "unembed.W_U",
        "W_U centred over the vocabulary",
        |w| {
            near_zero(
                &w.to_kind(Kind::Float).mean_dim(-1, false, Kind::Float),
                w,
                tolerance,
            )
        },
    )
}

/// Every value bias was folded into the output bias.
pub fn value_bias_folding(model: &dyn LensModel) -> BenchmarkResult {
    // `attn.b_V`, or `attn._b_V` with grouped key/value heads.
    every_weight("value_bias_folding", model, "b_V", "b_V = 0", |b| {
        let max = max_abs(b);
        (max != 0.0).then(|| format!("max |b_V| = {max:.3e}"))
    })
}

/// Every weight of the processed reference equals the model's.
pub fn weight_processing(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    tolerance: f64,
) -> BenchmarkResult {
    let name = "weight_processing";
    guarded(name, || {
        let ours = model.tl_weight_names();
        let (mut missing, mut mismatches, mut worst, mut compared) =
            (Vec::new(), Vec::new(), 0.0f64, 0usize);
        for weight in reference.tl_weight_names() {
            if !ours.contains(&weight) {
                missing.push(weight);
                continue;
            }
            let outcome = compare(
                &model.tl_weight(&weight)?.detach(),
                &reference
                    .tl_weight(&weight)
                    .map_err(reference_error)?
                    .detach(),
                None,
            );
            compared += 1;
            if let Comparison::Compared { err } = outcome {
                worst = worst.max(err);
            }
            if !outcome.within(tolerance) {
                mismatches.push(format!("{weight}: {}", outcome.describe()));
            }
        }
        Ok(if missing.is_empty() && mismatches.is_empty() {
            BenchmarkResult::pass(
                name,
                format!("all {compared} processed weights equal the reference's"),
            )
        } else {
            BenchmarkResult::fail(
                name,
                format!(
                    "{} weights differ, {} missing",
                    mismatches.len(),
                    missing.len()
                ),
            )
            .with("mismatches", sample_of(&mismatches))
            .with("missing", sample_of(&missing))
        }
        .with("worst_err", worst))
    })
}

/// The weight the edit checks write to: layer 0's values (`W_V`, or `_W_V` with grouped
/// key/value heads), which change the loss at any input length.
fn probe_weight(model: &dyn LensModel) -> &'static str {
    const GROUPED: &str = "blocks.0.attn._W_V";
    if model.tl_weight_names().iter().any(|n| n == GROUPED) {
        GROUPED
    } else {
        "blocks.0.attn.W_V"
    }
}

/// Zeroes head 0 of the probe weight ([`probe_weight`]) through the TL view, measures the loss, restores the weight.
/// The loss change when `probe_weight[0]` is zeroed, from the loss `before` (the clean loss),
/// and with `check_restore`, how far restoring the weight leaves the loss from `before` (else 0).
fn loss_change_when_zeroing(
    model: &dyn LensModel,
    inputs: &Inputs,
    before: f64,
    check_restore: bool,
) -> ModelResult<(f64, f64)> {
    let view = model.tl_weight(probe_weight(model))?;
    let original = view.detach().copy();
    let after = {
        let _no_grad = tch::no_grad_guard();
        let _ = view.get(0).fill_(0.0);
        clean_loss(model, inputs)
    };
    {
        let _no_grad = tch::no_grad_guard();
        let mut view = view;
        view.copy_(&original);
    }
    let residue = if check_restore {
        clean_loss(model, inputs)? - before
    } else {
        0.0
    };
    Ok((after? - before, residue))
}

/// Writing through the TL view changes the model, and restoring the weight restores the output.
pub fn weight_modification(model: &dyn LensModel, inputs: &Inputs) -> BenchmarkResult {
    match clean_loss(model, inputs) {
        Ok(clean) => weight_modification_given(model, inputs, clean),
        Err(error) => {
            BenchmarkResult::error("weight_modification", format!("could not run: {error}"))
        }
    }
}

/// [`weight_modification`] from the model's clean loss, computed elsewhere ([`clean_loss`]).
pub fn weight_modification_given(
    model: &dyn LensModel,
    inputs: &Inputs,
    clean: f64,
) -> BenchmarkResult {
    let name = "weight_modification";
    guarded(name, || {
        let probe = probe_weight(model);
        let (change, residue) = loss_change_when_zeroing(model, inputs, clean, true)?;
        Ok(if change.abs() < 1e-6 {
            BenchmarkResult::fail(
                name,
                format!("zeroing {probe}[0] changed the loss by only {change:.3e}"),
            )
        } else if residue != 0.0 {
            BenchmarkResult::fail(
                name,
                format!("restoring {probe} left the loss off by {residue:.3e}"),
            )
        } else {
            BenchmarkResult::pass(
                name,
                format!("zeroing {probe}[0] changed the loss by {change:.6}; restoring undid it"),
            )
        }
        .with("loss_change", change))
    })
}

/// The model and the reference hold the same probe weight (layer 0's `W_V`), and the same edit
/// changes both losses by the same amount.
pub fn weight_sharing(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    inputs: &Inputs,
    tolerance: f64,
) -> BenchmarkResult {
    let clean = clean_loss(model, inputs).and_then(|ours| {
        let theirs = clean_loss(reference, inputs).map_err(reference_error)?;
        Ok(CleanLosses { ours, theirs })
    });
    match clean {
        Ok(clean) => weight_sharing_given(model, reference, inputs, clean, tolerance),
        Err(error) => BenchmarkResult::error("weight_sharing", format!("could not run: {error}")),
    }
}

/// [`weight_sharing`] from both models' clean losses, computed elsewhere.
pub fn weight_sharing_given(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    inputs: &Inputs,
    clean: CleanLosses,
    tolerance: f64,
) -> BenchmarkResult {
    let name = "weight_sharing";
    guarded(name, || {
        let probe = probe_weight(model);
        let same = compare(
            &model.tl_weight(probe)?.detach(),
            &reference
                .tl_weight(probe)
                .map_err(reference_error)?
                .detach(),
            None,
        );
        if !same.within(tolerance) {
            return Ok(BenchmarkResult::fail(
                name,
                format!("{probe} differs: {}", same.describe()),
            ));
        }
        // Restoring is weight_modification's check; here only the two changes are compared.
        let (ours, _) = loss_change_when_zeroing(model, inputs, clean.ours, false)?;
        let (theirs, _) = loss_change_when_zeroing(reference, inputs, clean.theirs, false)
            .map_err(reference_error)?;
        let outcome = compare(&Tensor::from(ours), &Tensor::from(theirs), None);
        Ok(if outcome.within(tolerance) {
            BenchmarkResult::pass(
                name,
                format!("the same edit changes both losses alike: {ours:.6} vs {theirs:.6}"),
            )
        } else {
            BenchmarkResult::fail(
                name,
                format!("the same edit changes the losses differently: {ours:.6} vs {theirs:.6}"),
            )
        })
    })
}
