//! Hook benchmarks: names, firing, forward activations, and the effect of an ablation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hookpoint::{ActivationCache, Hook, HookSpec, NamesFilter};
use lens_core::model::{ForwardOptions, LensModel, ModelResult, ReturnType};
use tch::Tensor;

use super::{
    capture_both, clean_loss, compare_caches, describe, guarded, never_fired, reference_error,
    sample_of, Inputs,
};
use crate::compare::compare;
use crate::result::BenchmarkResult;

/// Hooks every model must have and that the suite compares first (the Python suite's list,
/// without `attn.hook_result`, which only fires with `use_attn_result`).
pub const CRITICAL_FORWARD_HOOKS: [&str; 13] = [
    "hook_embed",
    "hook_pos_embed",
    "blocks.0.hook_resid_pre",
    "blocks.0.hook_resid_mid",
    "blocks.0.hook_resid_post",
    "blocks.0.attn.hook_q",
    "blocks.0.attn.hook_k",
    "blocks.0.attn.hook_v",
    "blocks.0.attn.hook_z",
    "blocks.0.mlp.hook_pre",
    "blocks.0.mlp.hook_post",
    "blocks.0.hook_mlp_out",
    "ln_final.hook_normalized",
];

/// The critical hooks of this reference: those of [`CRITICAL_FORWARD_HOOKS`] it registers (a
/// rotary model has no `hook_pos_embed`). What the reference registers must be in the model.
pub fn critical_forward_hooks_of(reference: &dyn LensModel) -> Vec<String> {
    CRITICAL_FORWARD_HOOKS
        .iter()
        .filter(|n| reference.hooks().get(n).is_ok())
        .map(|n| (*n).to_owned())
        .collect()
}

/// Every hook name of the reference (hook points and aliases) must be a hook name of the model.
pub fn hook_registry(model: &dyn LensModel, reference: &dyn LensModel) -> BenchmarkResult {
    let name = "hook_registry";
    guarded(name, || {
        let ours = model.hooks();
        let theirs = reference.hooks();
        let reference_names: Vec<&str> = theirs
            .names()
            .chain(theirs.aliases().map(|(alias, _)| alias))
            .collect();
        let missing: Vec<String> = reference_names
            .iter()
            .filter(|n| ours.get(n).is_err())
            .map(|n| (*n).to_owned())
            .collect();
        let total = ours.len() + ours.aliases().count();
        let result = if missing.is_empty() {
            BenchmarkResult::pass(
                name,
                format!(
                    "all {} reference hooks present ({} names here, {} more than the reference)",
                    reference_names.len(),
                    total,
                    total.saturating_sub(reference_names.len())
                ),
            )
        } else {
            BenchmarkResult::fail(
                name,
                format!(
                    "{} of {} reference hooks are missing",
                    missing.len(),
                    reference_names.len()
                ),
            )
            .with("missing", sample_of(&missing))
        };
        Ok(result
            .with("reference_hooks", reference_names.len())
            .with("hooks", total))
    })
}

/// Counts how often each hook point fires in one forward pass.
pub fn firing_counts(
    model: &dyn LensModel,
    tokens: &Tensor,
) -> ModelResult<BTreeMap<String, usize>> {
    let (counts, counter) = counting_hook();
    let _no_grad = tch::no_grad_guard();
    model.run_with_hooks(
        tokens,
        &ForwardOptions::default(),
        &[HookSpec::forward(NamesFilter::All, counter)],
    )?;
    let counts = counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(counts)
}

/// A forward hook that counts each point's firings into the map it comes with.
pub fn counting_hook() -> (Arc<Mutex<FiringCounts>>, Hook) {
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
    (counts, counter)
}

/// Every forward activation of the reference, compared with the model's; every hook point of
/// either model that is not gated off must fire, as often as the reference fires it (once, but
/// for the `ln1` that TransformerLens runs on each of q, k and v's inputs).
pub fn forward_hooks(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    inputs: &Inputs,
    tolerance: f64,
) -> BenchmarkResult {
    let name = "forward_hooks";
    guarded(name, || {
        let (ours, theirs) = capture_both(model, reference, inputs, None)?;
        let counts = both_firing_counts(model, reference, inputs)?;
        Ok(judge_forward_hooks(
            model,
            reference,
            [&ours, &theirs],
            [&counts.0, &counts.1],
            tolerance,
        ))
    })
}

/// The critical hooks: present in both models, firing, and matching.
pub fn critical_forward_hooks(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    inputs: &Inputs,
    tolerance: f64,
) -> BenchmarkResult {
    let name = "critical_forward_hooks";
    guarded(name, || {
        let (ours, theirs) = capture_both(model, reference, inputs, None)?;
        Ok(judge_critical(
            name,
            &critical_forward_hooks_of(reference),
            &ours,
            &theirs,
            tolerance,
        ))
    })
}

/// How often each hook fires in one forward pass: the model's and the reference's.
pub type FiringCounts = BTreeMap<String, usize>;

fn both_firing_counts(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    inputs: &Inputs,
) -> ModelResult<(FiringCounts, FiringCounts)> {
    let ours = firing_counts(model, &inputs.tokens)?;
    let theirs = firing_counts(reference, &inputs.tokens).map_err(reference_error)?;
    Ok((ours, theirs))
}

/// [`forward_hooks`]'s verdict on both models' caches and firing counts of one forward pass.
pub fn judge_forward_hooks(
    model: &dyn LensModel,
    reference: &dyn LensModel,
    [ours, theirs]: [&ActivationCache; 2],
    [our_counts, reference_counts]: [&FiringCounts; 2],
    tolerance: f64,
) -> BenchmarkResult {
    let name = "forward_hooks";
    let report = compare_caches(ours, theirs, None, tolerance);
    let mut silent = never_fired(model, ours);
    silent.extend(
        never_fired(reference, theirs)
            .into_iter()
            .map(|n| format!("{n} (reference)")),
    );
    let mut repeated: Vec<String> = our_counts
        .iter()
        .filter_map(|(n, &c)| {
            let expected = expected_firings(model, n, reference_counts);
            (c != expected).then(|| format!("{n} fired {c} times, not {expected}"))
        })
        .collect();
    // Counts that miss a cached hook were not taken in the cached pass: nothing is judged.
    repeated.extend(
        ours.keys()
            .filter(|n| !our_counts.contains_key(*n))
            .map(|n| format!("{n} cached but never counted")),
    );
    let problems = report.missing.len() + report.mismatches.len() + silent.len() + repeated.len();
    let result = if problems == 0 {
        BenchmarkResult::pass(
            name,
            format!(
                "all {} reference activations match; every hook fired as often as in the reference",
                report.compared
            ),
        )
    } else {
        BenchmarkResult::fail(
            name,
            format!(
                "{} mismatches, {} missing, {} never fired, {} fired more than once",
                report.mismatches.len(),
                report.missing.len(),
                silent.len(),
                repeated.len()
            ),
        )
        .with("mismatches", sample_of(&describe(&report.mismatches)))
        .with("missing", sample_of(&report.missing))
        .with("never_fired", sample_of(&silent))
        .with("fired_more_than_once", sample_of(&repeated))
    };
    result
        .with("compared", report.compared)
        .with("worst_err", report.worst)
        .with("tolerance", tolerance)
        .with_errors(report.errors)
}

/// How often hook `name` must fire: as often as the reference fires it (or one of its aliases); a
/// hook the reference
/// lacks (a bridge component's `hook_in` / `hook_out`) as often as the reference fires the hooks
/// of its component (`ln1` runs three times with `use_split_qkv_input`), else once.
fn expected_firings(
    model: &dyn LensModel,
    name: &str,
    reference_counts: &BTreeMap<String, usize>,
) -> usize {
    let registry = model.hooks();
    let mut names = std::iter::once(name).chain(
        registry
            .aliases()
            .filter(|(_, t)| *t == name)
            .map(|(a, _)| a),
    );
    if let Some(count) = names.find_map(|n| reference_counts.get(n)) {
        return *count;
    }
    let Some((component, _)) = name.rsplit_once('.') else {
        return 1;
    };
    let prefix = format!("{component}.");
    reference_counts
        .iter()
        .filter(|(n, _)| n.starts_with(&prefix))
        .map(|(_, &c)| c)
        .max()
        .unwrap_or(1)
}

/// [`critical_forward_hooks`]'s verdict on both models' caches of one forward pass.
pub fn judge_critical(
    name: &str,
    names: &[String],
    ours: &ActivationCache,
    theirs: &ActivationCache,
    tolerance: f64,
) -> BenchmarkResult {
    let report = compare_caches(ours, theirs, Some(names), tolerance);
    if report.missing.is_empty() && report.mismatches.is_empty() {
        BenchmarkResult::pass(
            name,
            format!("all {} critical hooks match", report.compared),
        )
    } else {
        BenchmarkResult::fail(
            name,
            format!(
                "{} missing, {} mismatches",
                report.missing.len(),
                report.mismatches.len()
            ),
        )
        .with("missing", report.missing.clone())
        .with("mismatches", describe(&report.mismatches))
    }
    .with("worst_err", report.worst)
}

/// Zero-ablates head 0 of block 0's values and measures the loss change; the change must be
/// real, and equal the reference's.
pub fn hook_functionality(
    model: &dyn LensModel,
    reference: Option<&dyn LensModel>,
    inputs: &Inputs,
    tolerance: f64,
) -> BenchmarkResult {
    let clean = clean_loss(model, inputs).and_then(|ours| {
        let theirs = match reference {
            Some(reference) => Some(clean_loss(reference, inputs).map_err(reference_error)?),
            None => None,
        };
        Ok((ours, theirs))
    });
    match clean {
        Ok((ours, theirs)) => {
            let reference = reference.zip(theirs);
            hook_functionality_given(model, reference, inputs, ours, tolerance)
        }
        Err(error) => {
            BenchmarkResult::error("hook_functionality", format!("could not run: {error}"))
        }
    }
}

/// [`hook_functionality`] from the clean losses of the model (`clean`) and of the reference
/// (beside it), computed elsewhere ([`clean_loss`]).
pub fn hook_functionality_given(
    model: &dyn LensModel,
    reference: Option<(&dyn LensModel, f64)>,
    inputs: &Inputs,
    clean: f64,
    tolerance: f64,
) -> BenchmarkResult {
    let name = "hook_functionality";
    guarded(name, || {
        let ours = ablated_loss(model, &inputs.tokens)? - clean;
        if ours.abs() < 1e-6 {
            return Ok(BenchmarkResult::fail(
                name,
                format!(
                    "ablating head 0 of blocks.0.attn.hook_v changed the loss by only {ours:.3e}"
                ),
            ));
        }
        let Some((reference, reference_clean)) = reference else {
            return Ok(BenchmarkResult::pass(
                name,
                format!("ablation changed the loss by {ours:.6}"),
            )
            .with("effect", ours));
        };
        let theirs =
            ablated_loss(reference, &inputs.tokens).map_err(reference_error)? - reference_clean;
        let outcome = compare(&Tensor::from(ours), &Tensor::from(theirs), None);
        Ok(if outcome.within(tolerance) {
            BenchmarkResult::pass(
                name,
                format!("ablation effects match: {ours:.6} vs {theirs:.6}"),
            )
        } else {
            BenchmarkResult::fail(
                name,
                format!(
                    "ablation effects differ: {ours:.6} vs {theirs:.6} ({})",
                    outcome.describe()
                ),
            )
        }
        .with("effect", ours)
        .with("reference_effect", theirs))
    })
}

/// The loss with head 0 of block 0's values zeroed.
fn ablated_loss(model: &dyn LensModel, tokens: &Tensor) -> ModelResult<f64> {
    let _no_grad = tch::no_grad_guard();
    let options = ForwardOptions {
        return_type: ReturnType::Loss,
        ..ForwardOptions::default()
    };
    let zero_head = Hook::new(|v, _| {
        let ablated = v.copy();
        let _ = ablated.select(2, 0).fill_(0.0);
        Some(ablated)
    });
    Ok(model
        .run_with_hooks(
            tokens,
            &options,
            &[HookSpec::forward("blocks.0.attn.hook_v", zero_head)],
        )?
        .loss()?
        .double_value(&[]))
}

/// Each gating option, enabled alone, makes each of its hook points fire exactly once; the
/// options are restored afterwards. The passes run on the text's first two tokens: how often a
/// point fires does not depend on the length, and a pass over two tokens costs about half of one
/// over the text (both read every weight, the text's adds the arithmetic).
pub fn gated_hooks_fire(model: &mut dyn LensModel, inputs: &Inputs) -> BenchmarkResult {
    let name = "gated_hooks_fire";
    let original = model.hook_flags();
    let tokens = inputs.tokens.narrow(1, 0, inputs.tokens.size()[1].min(2));
    let result = guarded(name, || {
        let (mut fired, mut problems) = (0usize, Vec::new());
        for (flag, _) in &original {
            for (other, _) in &original {
                model.set_hook_flag(other, false)?;
            }
            let gated: Vec<String> = model
                .hooks()
                .names()
                .filter(|n| model.hooks().disabled_by(n) == Some(*flag))
                .map(str::to_owned)
                .collect();
            model.set_hook_flag(flag, true)?;
            let counts = firing_counts(&*model, &tokens)?;
            for hook in &gated {
                match counts.get(hook) {
                    Some(1) => fired += 1,
                    Some(n) => problems.push(format!("{hook} ({flag}) fired {n} times")),
                    None => problems.push(format!("{hook} ({flag}) never fired")),
                }
            }
            if gated.is_empty() {
                problems.push(format!("{flag} gates no hook point"));
            }
        }
        Ok(if problems.is_empty() {
            BenchmarkResult::pass(
                name,
                format!(
                    "{fired} gated hooks fired once each across {} options",
                    original.len()
                ),
            )
        } else {
            BenchmarkResult::fail(name, format!("{} gated hooks misbehaved", problems.len()))
                .with("problems", sample_of(&problems))
        }
        .with("fired", fired))
    });
    for (flag, enabled) in &original {
        if let Err(error) = model.set_hook_flag(flag, *enabled) {
            return BenchmarkResult::error(name, format!("could not restore {flag}: {error}"));
        }
    }
    result
}
