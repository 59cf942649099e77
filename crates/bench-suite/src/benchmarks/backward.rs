//! Backward benchmarks: the gradient at every hook, and the gradients of the parameters.

use std::collections::BTreeMap;

use hookpoint::ActivationCache;
use lens_core::model::{ForwardOptions, LensModel, ModelResult};
use tch::Tensor;

use super::hooks::critical_forward_hooks_of;
use super::{
    capture_both, compare_caches, describe, guarded, reference_error, sample_of, GradientTarget,
    Inputs,
};
use crate::compare::{compare, max_abs, max_abs_difference_of_sum, Comparison};
use crate::result::BenchmarkResult;
use lens_core::weight_map::Value;

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

/// The critical hooks' gradient names ([`critical_backward_hooks`]).
pub fn critical_gradient_names(reference: &dyn LensModel) -> Vec<String> {
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
/// `None`): the verdict of [`critical_backward_hooks`] and [`backward_hooks`].
pub fn judge_gradients(
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
///
/// The model's backward pass runs first; the reference's gradients are then compared as its
/// backward pass accumulates them and freed at once ([`judge_parameter_gradients`]), so the two
/// models' full gradient sets never exist together.
pub fn gradient_computation(
    model: &dyn LensModel,
    reference: Option<&dyn LensModel>,
    inputs: &Inputs,
    target: GradientTarget,
    tolerance: f64,
) -> BenchmarkResult {
    guarded(GRADIENT_COMPUTATION, || {
        backward_once(model, inputs, target)?;
        match reference {
            Some(reference) => {
                let mut backward = || backward_once(reference, inputs, target);
                judge_parameter_gradients(model, Some((reference, &mut backward)), tolerance)
            }
            None => judge_parameter_gradients(model, None, tolerance),
        }
    })
}

/// The benchmark [`gradient_computation`] and [`judge_parameter_gradients`] report as.
pub const GRADIENT_COMPUTATION: &str = "gradient_computation";

/// Runs the reference's backward pass (whose parameter gradients are judged as they arrive).
pub type ReferenceBackward<'a> = dyn FnMut() -> ModelResult<()> + 'a;

/// [`gradient_computation`]'s judgement, once the model's backward pass has accumulated its
/// parameter gradients: checks them, runs the reference's backward pass (with a reference) and
/// compares each of its parameter gradients with the model's as libtorch accumulates it, freeing
/// it as soon as every weight that reads it is judged, then clears both models' gradients.
/// Streaming needs the reference's weights to be parameters of their own
/// ([`LensModel::tl_weight_parameter`]: the HookedTransformer's are); otherwise its gradients are read
/// after its pass, all at once.
pub fn judge_parameter_gradients(
    model: &dyn LensModel,
    reference: Option<(&dyn LensModel, &mut ReferenceBackward)>,
    tolerance: f64,
) -> ModelResult<BenchmarkResult> {
    let reference_model = reference.as_ref().map(|(r, _)| *r);
    let outcome = gradient_outcomes(model, reference);
    // Only now: the gradients compared are views of the parameters' .grad storage.
    model.zero_grad();
    if let Some(reference) = reference_model {
        reference.zero_grad();
    }
    let (constant, without, mut mismatches, outcomes) = outcome?;
    let mut scales: BTreeMap<&str, f64> = BTreeMap::new();
    for outcome in &outcomes {
        let scale = scales.entry(group_of(&outcome.weight)).or_insert(1.0);
        *scale = scale.max(outcome.reference_max);
    }
    let mut worst = 0.0f64;
    for outcome in &outcomes {
        match &outcome.comparison {
            Comparison::Compared { err } => {
                // `compare` divided by max(1, max|theirs|); the block's scale replaces it.
                let err = err * outcome.reference_max.max(1.0) / scales[group_of(&outcome.weight)];
                worst = worst.max(err);
                // NaN counts as a mismatch.
                if err.is_nan() || err > tolerance {
                    mismatches.push(format!("{}: err {err:.2e}", outcome.weight));
                }
            }
            other => mismatches.push(format!("{}: {}", outcome.weight, other.describe())),
        }
    }
    let name = GRADIENT_COMPUTATION;
    Ok(if without.is_empty() && mismatches.is_empty() {
        BenchmarkResult::pass(
            name,
            format!(
                "every parameter got a gradient; {} compared with the reference",
                outcomes.len()
            ),
        )
    } else {
        BenchmarkResult::fail(
            name,
            format!(
                "{} parameters without gradient, {} mismatches, {} compared",
                without.len(),
                mismatches.len(),
                outcomes.len()
            ),
        )
        .with("without_gradient", sample_of(&without))
        .with("mismatches", sample_of(&mismatches))
    }
    .with("constants", constant)
    .with("worst_err", worst))
}

/// What [`gradient_outcomes`] found: the constants counted, weights without a gradient,
/// mismatches so far, and one outcome per compared weight.
type Outcomes = (usize, Vec<String>, Vec<String>, Vec<WeightOutcome>);

fn gradient_outcomes(
    model: &dyn LensModel,
    reference: Option<(&dyn LensModel, &mut ReferenceBackward)>,
) -> ModelResult<Outcomes> {
    let names = model.tl_weight_names();
    // Constants (zero biases a checkpoint lacks, a parameterless LayerNorm's ones and zeros)
    // have no parameter to reach; they are counted in the result, must hold the value they are
    // declared to, and every other weight must get its gradient.
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
    let mut without = Vec::new();
    let mut ours = Vec::new();
    for weight in trainable {
        match model.tl_weight_grad(weight)? {
            Some(gradient) => ours.push((weight.clone(), gradient)),
            None => without.push(weight.clone()),
        }
    }
    let mut outcomes = Vec::new();
    if let Some((reference, run_backward)) = reference {
        let mut judging = Judging::plan(model, reference, ours)?;
        judging.run(reference, run_backward)?;
        without.extend(judging.unjudged());
        outcomes = judging.outcomes;
    }
    Ok((constant.len(), without, mismatches, outcomes))
}

/// How one weight's gradient compared with the reference's.
struct WeightOutcome {
    weight: String,
    /// Against the reference gradient's own scale, max(1, max|theirs|).
    comparison: Comparison,
    /// max|theirs|.
    reference_max: f64,
}

/// A weight of the model waiting for the reference gradients it is compared with.
struct Pending {
    weight: String,
    /// The model's gradient (a view of its parameter's .grad).
    ours: Tensor,
    /// Index into [`Judging::needed`] of the reference's gradient for the same weight.
    own: usize,
    /// Reference gradients added to it: those of weights tied to it in the model but not in the
    /// reference, each with the model's value relations of the weight and of the other.
    tied: Vec<(usize, Value, Value)>,
    /// Index into [`Judging::our_leaves`] of the model's parameter it is stored in.
    our_leaf: Option<usize>,
}

impl Pending {
    fn needs(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(self.own).chain(self.tied.iter().map(|(k, _, _)| *k))
    }
}

/// The comparison's state while the reference's backward pass runs: every pending weight, the
/// reference gradients it needs (held only until every weight needing them is judged), and the
/// outcomes so far.
struct Judging {
    /// Reference weights whose gradients are read.
    needed: Vec<String>,
    /// Their parameters, when every one is a parameter of its own (streaming), else empty.
    leaves: Vec<Tensor>,
    /// Per needed weight: how many pending weights still need it.
    users: Vec<usize>,
    /// Per needed weight: its gradient, once it arrived and while it is needed.
    available: Vec<Option<Tensor>>,
    /// The model's parameters the pending weights are stored in, and per parameter how many
    /// pending weights still read its gradient (freed once none does).
    our_leaves: Vec<Tensor>,
    our_users: Vec<usize>,
    pending: Vec<Option<Pending>>,
    outcomes: Vec<WeightOutcome>,
}

impl Judging {
    fn plan(
        model: &dyn LensModel,
        reference: &dyn LensModel,
        ours: Vec<(String, Tensor)>,
    ) -> ModelResult<Self> {
        let names = model.tl_weight_names();
        let reference_names = reference.tl_weight_names();
        let our_storage = storage_of(model, &names);
        let their_storage = storage_of(reference, &reference_names);
        let mut needed: Vec<String> = Vec::new();
        let mut index_of = |name: &str| match needed.iter().position(|n| n == name) {
            Some(k) => k,
            None => {
                needed.push(name.to_owned());
                needed.len() - 1
            }
        };
        // The model's parameters, by storage: tied weights share one.
        let (mut our_leaves, mut our_users) = (Vec::<Tensor>::new(), Vec::<usize>::new());
        let mut our_leaf_of = |weight: &str, pending: bool| -> ModelResult<Option<usize>> {
            let Some(parameter) = model.tl_weight_parameter(weight)? else {
                return Ok(None);
            };
            let place = |t: &Tensor| (t.data_ptr() as usize, t.numel());
            let k = match our_leaves
                .iter()
                .position(|l| place(l) == place(&parameter.leaf))
            {
                Some(k) => k,
                None => {
                    our_leaves.push(parameter.leaf);
                    our_users.push(0);
                    our_leaves.len() - 1
                }
            };
            our_users[k] += usize::from(pending);
            Ok(Some(k))
        };
        let mut pending = Vec::new();
        for (weight, gradient) in ours {
            // Weights the reference does not have (a processed HookedTransformer has no
            // LayerNorm weights) are only required to get a gradient, which they had.
            if !reference_names.contains(&weight) {
                our_leaf_of(&weight, false)?;
                continue;
            }
            let tied = tied_to(&our_storage, &weight)
                .filter(|other| !tied_to(&their_storage, &weight).any(|t| t == *other))
                .filter(|other| reference_names.iter().any(|n| n == other))
                .map(|other| {
                    let relations = (model.tl_weight_value(&weight), model.tl_weight_value(other));
                    (other.to_owned(), relations)
                })
                .collect::<Vec<_>>();
            pending.push(Some(Pending {
                own: index_of(&weight),
                tied: tied
                    .into_iter()
                    .map(|(other, (value, other_value))| (index_of(&other), value, other_value))
                    .collect(),
                our_leaf: our_leaf_of(&weight, true)?,
                weight,
                ours: gradient,
            }));
        }
        // Streaming needs every reference weight to be a parameter of its own.
        let leaves = needed
            .iter()
            .map(|name| {
                let parameter = reference.tl_weight_parameter(name)?;
                Ok(parameter.filter(|p| p.is_the_weight).map(|p| p.leaf))
            })
            .collect::<ModelResult<Option<Vec<Tensor>>>>()
            .map_err(reference_error)?
            .unwrap_or_default();
        let mut users = vec![0; needed.len()];
        for entry in pending.iter().flatten() {
            for k in entry.needs() {
                users[k] += 1;
            }
        }
        // The model's gradients nothing compares are not needed any more.
        for (leaf, _) in our_leaves.iter().zip(&our_users).filter(|(_, &u)| u == 0) {
            let _ = hookpoint::clear_grad(leaf);
        }
        Ok(Judging {
            available: (0..needed.len()).map(|_| None).collect(),
            needed,
            leaves,
            users,
            our_leaves,
            our_users,
            pending,
            outcomes: Vec::new(),
        })
    }

    /// Runs the reference's backward pass, judging each weight as its gradients arrive.
    fn run(
        &mut self,
        reference: &dyn LensModel,
        run_backward: &mut ReferenceBackward,
    ) -> ModelResult<()> {
        if self.leaves.is_empty() && !self.needed.is_empty() {
            run_backward().map_err(reference_error)?;
            for k in 0..self.needed.len() {
                if let Some(gradient) = reference.tl_weight_grad(&self.needed[k])? {
                    self.arrive(k, gradient);
                }
            }
            return Ok(());
        }
        let leaves: Vec<Tensor> = self.leaves.iter().map(Tensor::shallow_clone).collect();
        let mut on_gradient = |k: usize, leaf: &Tensor| self.arrive(k, leaf.grad());
        hookpoint::with_accumulated_gradient_hooks(&leaves, &mut on_gradient, run_backward)?
            .map_err(reference_error)
    }

    /// Reference gradient `k` arrived: judges every weight that now has all it needs and frees
    /// the gradients no pending weight needs any more: the reference's (its parameter's .grad
    /// too, streaming) and the model's.
    fn arrive(&mut self, k: usize, gradient: Tensor) {
        if !gradient.defined() || self.users[k] == 0 {
            return;
        }
        self.available[k] = Some(gradient);
        for slot in 0..self.pending.len() {
            let ready = self.pending[slot].as_ref().is_some_and(|entry| {
                entry.needs().any(|n| n == k) && entry.needs().all(|n| self.available[n].is_some())
            });
            if !ready {
                continue;
            }
            let Some(entry) = self.pending[slot].take() else {
                continue;
            };
            self.outcomes.push(judge_weight(&entry, &self.available));
            let (needs, our_leaf): (Vec<usize>, _) = (entry.needs().collect(), entry.our_leaf);
            // The model's gradient view goes before its parameter's gradient can be freed.
            drop(entry);
            if let Some(leaf) = our_leaf {
                self.our_users[leaf] -= 1;
                if self.our_users[leaf] == 0 {
                    // Freeing is an optimisation: a failure leaves the memory to zero_grad.
                    let _ = hookpoint::clear_grad(&self.our_leaves[leaf]);
                }
            }
            for n in needs {
                self.users[n] -= 1;
                if self.users[n] == 0 {
                    self.available[n] = None;
                    if let Some(leaf) = self.leaves.get(n) {
                        // Freeing is an optimisation: a failure leaves the memory to zero_grad.
                        let _ = hookpoint::clear_grad(leaf);
                    }
                }
            }
        }
    }

    /// The weights whose reference gradient never arrived.
    fn unjudged(&self) -> Vec<String> {
        self.pending
            .iter()
            .flatten()
            .map(|entry| format!("{} (reference)", entry.weight))
            .collect()
    }
}

/// Compares one weight's gradient with the reference's (summed over the weights tied to it in
/// the model but not in the reference, transposed into its layout and carried through the
/// model's value relations: Gemma's `W_E` is the tied embedding scaled, so the parameter's
/// gradient is `s` times W_E's plus W_U's).
fn judge_weight(entry: &Pending, available: &[Option<Tensor>]) -> WeightOutcome {
    let gradient = |k: usize| available[k].as_ref().expect("judged only once available");
    let own = gradient(entry.own);
    let device = entry.ours.device();
    let mut parts = vec![own.to_device(device)];
    for (k, value, other_value) in &entry.tied {
        let extra = gradient(*k);
        let extra = if extra.size() == own.size() {
            extra.shallow_clone()
        } else {
            extra.transpose(0, 1)
        };
        parts.push(
            value
                .grad_to_tl(&other_value.grad_to_hf(&extra))
                .to_device(device),
        );
    }
    let outcome = |comparison, reference_max| WeightOutcome {
        weight: entry.weight.clone(),
        comparison,
        reference_max,
    };
    let comparable = parts
        .iter()
        .all(|p| p.size() == entry.ours.size() && p.kind() == entry.ours.kind());
    if comparable && entry.ours.numel() > 0 {
        // The common case, with no temporary of the gradient's size.
        let (difference, reference_max) = max_abs_difference_of_sum(&entry.ours, &parts);
        if difference.is_finite() && reference_max.is_finite() {
            let err = difference / reference_max.max(1.0);
            return outcome(Comparison::Compared { err }, reference_max);
        }
    }
    // Non-finite entries or shapes that differ: the general comparison, on the summed gradient.
    let total = parts
        .iter()
        .skip(1)
        .fold(parts[0].shallow_clone(), |total, part| total + part);
    outcome(compare(&entry.ours, &total, None), max_abs(&total))
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
