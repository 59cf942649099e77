//! Activation-cache benchmarks.

use hookpoint::ActivationCache;
use lens_core::model::LensModel;

use super::{
    capture, capture_both, compare_caches, describe, guarded, never_fired, reference_error,
    sample_of, Inputs,
};
use crate::result::BenchmarkResult;

/// `run_with_cache` returns an entry for every hook that fires (and nothing else), including the
/// embedding and the unembedding; with a reference, every reference entry is found.
pub fn run_with_cache(
    model: &dyn LensModel,
    reference: Option<&dyn LensModel>,
    inputs: &Inputs,
) -> BenchmarkResult {
    guarded("run_with_cache", || {
        let cache = capture(model, &inputs.tokens, None)?;
        let theirs = match reference {
            Some(reference) => {
                Some(capture(reference, &inputs.tokens, None).map_err(reference_error)?)
            }
            None => None,
        };
        Ok(judge_run_with_cache(model, &cache, theirs.as_ref()))
    })
}

/// [`run_with_cache`]'s verdict on the model's cache of a forward pass (and the reference's).
pub fn judge_run_with_cache(
    model: &dyn LensModel,
    cache: &ActivationCache,
    reference: Option<&ActivationCache>,
) -> BenchmarkResult {
    let name = "run_with_cache";
    let mut problems = Vec::new();
    // `ln_final.hook_normalized` where the model has a final norm (it registers it).
    let has_final_norm = model.hooks().get("ln_final.hook_normalized").is_ok();
    let required = ["hook_embed", "unembed.hook_out", "ln_final.hook_normalized"];
    for required in required
        .into_iter()
        .take(if has_final_norm { 3 } else { 2 })
    {
        if !cache.contains(required) {
            problems.push(format!("{required} not cached"));
        }
    }
    problems.extend(
        never_fired(model, cache)
            .into_iter()
            .map(|n| format!("{n} not cached (never fired)")),
    );
    let mut reference_size = None;
    if let Some(theirs) = reference {
        reference_size = Some(theirs.len());
        problems.extend(
            theirs
                .keys()
                .filter(|k| !cache.contains(*k))
                .map(|k| format!("reference entry {k} not found")),
        );
    }
    if problems.is_empty() {
        BenchmarkResult::pass(
            name,
            format!("{} entries, every firing hook cached", cache.len()),
        )
    } else {
        BenchmarkResult::fail(name, format!("{} problems", problems.len()))
            .with("problems", sample_of(&problems))
    }
    .with("entries", cache.len())
    .with("reference_entries", reference_size)
}

/// Every cached activation of the reference equals the model's.
pub fn activation_cache(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    inputs: &Inputs,
    tolerance: f64,
) -> BenchmarkResult {
    guarded("activation_cache", || {
        let (ours, theirs) = capture_both(model, reference, inputs, None)?;
        Ok(judge_activation_cache(&ours, &theirs, tolerance))
    })
}

/// [`activation_cache`]'s verdict on both models' caches of one forward pass.
pub fn judge_activation_cache(
    ours: &ActivationCache,
    theirs: &ActivationCache,
    tolerance: f64,
) -> BenchmarkResult {
    let name = "activation_cache";
    let report = compare_caches(ours, theirs, None, tolerance);
    if report.missing.is_empty() && report.mismatches.is_empty() && report.compared > 0 {
        BenchmarkResult::pass(
            name,
            format!("all {} cached activations match", report.compared),
        )
    } else {
        BenchmarkResult::fail(
            name,
            format!(
                "{} of {} differ, {} missing",
                report.mismatches.len(),
                report.compared,
                report.missing.len()
            ),
        )
        .with("mismatches", sample_of(&describe(&report.mismatches)))
        .with("missing", sample_of(&report.missing))
    }
    .with("worst_err", report.worst)
}
