//! Activation patching (TransformerLens's `patching.py`) for any [`LensModel`], and batched: the
//! patches of a sweep run `k` at a time as one batch of `k` copies of the corrupted prompt,
//! each copy with its own patch, instead of one forward pass per patch.
//!
//! A sweep takes the corrupted tokens, a cache of the clean run (at least the patched hook
//! points), what to patch ([`Activation`]) and over which axes ([`PatchAxes`]), and a
//! [`Metric`] of the logits (and, if it asks, of the patched run's activations). Its result has one entry per index, in TransformerLens's order and shape. The
//! TransformerLens functions are these calls:
//!
//! | TransformerLens | [`Activation`] | [`PatchAxes`] | result |
//! |---|---|---|---|
//! | `get_act_patch_resid_pre` / `_resid_mid` / `_attn_out` / `_mlp_out` | `ResidPre` / `ResidMid` / `AttnOut` / `MlpOut` | `LayerPos` | `[layers, pos]` |
//! | `get_act_patch_attn_head_out_by_pos` (and `q` / `k` / `v`) | `Z` (`Q`, `K`, `V`) | `LayerPosHead` | `[layers, pos, heads]` |
//! | `get_act_patch_attn_head_out_all_pos` (and `q` / `k` / `v`) | `Z` (`Q`, `K`, `V`) | `LayerHead` | `[layers, heads]` |
//! | `get_act_patch_attn_head_pattern_all_pos` | `Pattern` | `LayerHead` | `[layers, heads]` |
//! | `get_act_patch_attn_head_pattern_by_pos` | `Pattern` | `LayerHeadDestPos` | `[layers, heads, pos]` |
//! | `get_act_patch_attn_head_pattern_dest_src_pos` | `Pattern` | `LayerHeadDestSrcPos` | `[layers, heads, pos, pos]` |
//!
//! With grouped key/value heads, `K` and `V` run over the key/value heads, as in
//! TransformerLens.

use std::sync::{Arc, Mutex};

use hookpoint::{ActivationCache, CacheOptions, Hook, HookSpec, NamesFilter, Slice};
use tch::{Kind, Tensor};

use crate::model::{ForwardOptions, LensModel, ModelError, ModelResult};

/// The activation a sweep patches, at every layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `blocks.{l}.hook_resid_pre`, `[b, p, d_model]`.
    ResidPre,
    /// `blocks.{l}.hook_resid_mid`.
    ResidMid,
    /// `blocks.{l}.hook_attn_out`.
    AttnOut,
    /// `blocks.{l}.hook_mlp_out`.
    MlpOut,
    /// `blocks.{l}.attn.hook_z`, `[b, p, heads, d_head]`.
    Z,
    /// `blocks.{l}.attn.hook_q`.
    Q,
    /// `blocks.{l}.attn.hook_k` (key/value heads).
    K,
    /// `blocks.{l}.attn.hook_v` (key/value heads).
    V,
    /// `blocks.{l}.attn.hook_pattern`, `[b, heads, dest, src]`.
    Pattern,
}

impl Activation {
    /// The hook point of this activation in layer `layer`.
    pub fn hook_name(self, layer: i64) -> String {
        let site = match self {
            Activation::ResidPre => "hook_resid_pre",
            Activation::ResidMid => "hook_resid_mid",
            Activation::AttnOut => "hook_attn_out",
            Activation::MlpOut => "hook_mlp_out",
            Activation::Z => "attn.hook_z",
            Activation::Q => "attn.hook_q",
            Activation::K => "attn.hook_k",
            Activation::V => "attn.hook_v",
            Activation::Pattern => "attn.hook_pattern",
        };
        format!("blocks.{layer}.{site}")
    }

    fn is_per_head(self) -> bool {
        matches!(
            self,
            Activation::Z | Activation::Q | Activation::K | Activation::V
        )
    }
}

/// The axes a sweep runs over; every patch replaces, in every row of the batch, the slice of the
/// corrupted activation its index names by the clean one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchAxes {
    /// (layer, pos): `[:, pos]`.
    LayerPos,
    /// (layer, pos, head) of a per-head activation: `[:, pos, head]`.
    LayerPosHead,
    /// (layer, head): `[:, :, head]` of a per-head activation, `[:, head]` of the pattern.
    LayerHead,
    /// (layer, head, dest_pos) of the pattern: `[:, head, dest]`.
    LayerHeadDestPos,
    /// (layer, head, dest_pos, src_pos) of the pattern: `[:, head, dest, src]`.
    LayerHeadDestSrcPos,
}

/// How a sweep is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchOptions {
    /// Patches per forward pass. `None`: as many as fit in `memory_budget_bytes`; `Some(1)`:
    /// one forward pass per patch, as TransformerLens.
    pub batch_size: Option<usize>,
    /// What a batch's activations may take, for choosing the batch size (default 1 GiB).
    pub memory_budget_bytes: usize,
}

impl Default for PatchOptions {
    fn default() -> Self {
        PatchOptions {
            batch_size: None,
            memory_budget_bytes: 1 << 30,
        }
    }
}

/// The metric a sweep reports for each patch, a scalar of the patched run (the corrupted
/// prompt's batch, `b` rows, even when the sweep runs several patches in one batch).
pub enum Metric<'a> {
    /// A function of the logits `[b, p, d_vocab]` (TransformerLens's `patching_metric`).
    Logits(&'a dyn Fn(&Tensor) -> ModelResult<f64>),
    /// A function of the logits and of the patched run's activations at the hook points
    /// `names` selects (`[b, ...]` each; the patched activation itself as patched): to score,
    /// say, a head's attention to a position, or the residual stream's projection on a
    /// direction.
    LogitsAndCache {
        /// The hook points to record in each patched run.
        names: NamesFilter,
        /// The metric.
        metric: &'a dyn Fn(&Tensor, &ActivationCache) -> ModelResult<f64>,
    },
}

/// One patch: its index (layer first) and its place in the result.
struct Patch {
    index: Vec<i64>,
    slot: usize,
}

/// Runs a patching sweep: for every index of `axes` (row-major, the last axis fastest), the
/// corrupted run with that slice of `activation` taken from `clean`, scored by `metric`. Returns
/// the scores, f32 on the CPU, shaped by the axes' ranges.
///
/// Errors: a clean cache without the patched activations, or whose activations do not fit the
/// corrupted run; the model's and the metric's errors.
pub fn activation_patch(
    model: &dyn LensModel,
    corrupted: &Tensor,
    clean: &ActivationCache,
    activation: Activation,
    axes: PatchAxes,
    metric: &Metric<'_>,
    options: &PatchOptions,
) -> ModelResult<Tensor> {
    let _no_grad = tch::no_grad_guard();
    check_axes(activation, axes)?;
    let ranges = index_ranges(model, corrupted, clean, activation, axes)?;
    let patches = every_index(&ranges);
    let mut scores = vec![0f64; patches.len()];
    let batch = match options.batch_size {
        Some(k) => k.max(1),
        None => batch_size_for_memory(model, corrupted, options.memory_budget_bytes),
    };
    for chunk in patches.chunks(batch) {
        for (patch, score) in chunk.iter().zip(run_chunk(
            model, corrupted, clean, activation, axes, chunk, metric,
        )?) {
            scores[patch.slot] = score;
        }
    }
    Ok(Tensor::from_slice(&scores)
        .to_kind(Kind::Float)
        .reshape(ranges.as_slice()))
}

fn check_axes(activation: Activation, axes: PatchAxes) -> ModelResult<()> {
    let fits = match axes {
        PatchAxes::LayerPos => !activation.is_per_head() && activation != Activation::Pattern,
        PatchAxes::LayerPosHead => activation.is_per_head(),
        PatchAxes::LayerHead => activation.is_per_head() || activation == Activation::Pattern,
        PatchAxes::LayerHeadDestPos | PatchAxes::LayerHeadDestSrcPos => {
            activation == Activation::Pattern
        }
    };
    if fits {
        Ok(())
    } else {
        Err(ModelError::InvalidInput(format!(
            "patching {activation:?} over {axes:?} is not one of TransformerLens's sweeps \
             (positions of residual-stream activations, positions and heads of z/q/k/v, heads \
             and positions of the pattern)"
        )))
    }
}

/// The size of each axis: layers from the model, positions from the corrupted tokens, heads
/// from the clean activation (key/value heads for grouped k and v).
fn index_ranges(
    model: &dyn LensModel,
    corrupted: &Tensor,
    clean: &ActivationCache,
    activation: Activation,
    axes: PatchAxes,
) -> ModelResult<Vec<i64>> {
    let layers = model.dims().n_layers;
    let positions = corrupted.size()[corrupted.dim() - 1];
    let clean0 = clean_activation(clean, activation, 0, corrupted)?;
    let heads = match activation {
        Activation::Pattern => clean0.size()[1],
        a if a.is_per_head() => clean0.size()[2],
        _ => 0,
    };
    Ok(match axes {
        PatchAxes::LayerPos => vec![layers, positions],
        PatchAxes::LayerPosHead => vec![layers, positions, heads],
        PatchAxes::LayerHead => vec![layers, heads],
        PatchAxes::LayerHeadDestPos => vec![layers, heads, positions],
        PatchAxes::LayerHeadDestSrcPos => vec![layers, heads, positions, positions],
    })
}

fn clean_activation<'c>(
    clean: &'c ActivationCache,
    activation: Activation,
    layer: i64,
    corrupted: &Tensor,
) -> ModelResult<&'c Tensor> {
    let name = activation.hook_name(layer);
    let t = clean.get(name.as_str()).map_err(|_| {
        ModelError::InvalidInput(format!(
            "the clean cache has no {name}: cache the patched activation of every layer"
        ))
    })?;
    let (batch, positions) = (corrupted.size()[0], corrupted.size()[1]);
    let pos_axis = if activation == Activation::Pattern {
        2
    } else {
        1
    };
    if t.dim() < 3 || t.size()[0] != batch || t.size()[pos_axis] != positions {
        return Err(ModelError::InvalidInput(format!(
            "the clean {name} is {:?}; the corrupted tokens are [{batch}, {positions}] (the two \
             runs need the same batch and length)",
            t.size()
        )));
    }
    Ok(t)
}

fn every_index(ranges: &[i64]) -> Vec<Patch> {
    let total: i64 = ranges.iter().product();
    (0..total)
        .map(|flat| {
            let mut rest = flat;
            let mut index = vec![0; ranges.len()];
            for (axis, &n) in ranges.iter().enumerate().rev() {
                index[axis] = rest % n;
                rest /= n;
            }
            Patch {
                index,
                slot: flat as usize,
            }
        })
        .collect()
}

/// How many copies of the corrupted run fit in `budget`: a copy's activations during one
/// no-grad forward are about its logits, a few residual-stream and MLP-wide tensors, and one
/// layer's attention scores and pattern.
fn batch_size_for_memory(model: &dyn LensModel, corrupted: &Tensor, budget: usize) -> usize {
    let dims = model.dims();
    let (batch, positions) = (corrupted.size()[0], corrupted.size()[1]);
    let element = model.kind().elt_size_in_bytes() as i64;
    let per_position =
        dims.d_vocab + 8 * dims.d_model + 3 * dims.d_mlp + 2 * dims.n_heads * positions;
    let per_copy = (batch * positions * per_position * element).max(1) as usize;
    (budget / per_copy).max(1)
}

/// One forward pass over `chunk.len()` copies of the corrupted tokens, copy `i` patched by
/// `chunk[i]`; the metric of each copy.
fn run_chunk(
    model: &dyn LensModel,
    corrupted: &Tensor,
    clean: &ActivationCache,
    activation: Activation,
    axes: PatchAxes,
    chunk: &[Patch],
    metric: &Metric<'_>,
) -> ModelResult<Vec<f64>> {
    let copies = chunk.len() as i64;
    let batch = corrupted.size()[0];
    let tokens = corrupted.repeat([copies, 1]);
    let mut layers: Vec<i64> = chunk.iter().map(|p| p.index[0]).collect();
    layers.sort_unstable();
    layers.dedup();
    let mut hooks = Vec::new();
    for layer in layers {
        let rows: Vec<(i64, Vec<i64>)> = chunk
            .iter()
            .enumerate()
            .filter(|(_, p)| p.index[0] == layer)
            .map(|(i, p)| (i as i64, p.index[1..].to_vec()))
            .collect();
        let source =
            Mutex::new(clean_activation(clean, activation, layer, corrupted)?.shallow_clone());
        let source = Arc::new(source);
        hooks.push(HookSpec::forward(
            activation.hook_name(layer),
            Hook::new(move |act, _| {
                let source = source
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                Some(patched(act, &source, copies, &rows, activation, axes))
            }),
        ));
    }
    let no_logits = || ModelError::InvalidInput("the patched run returned no logits".into());
    match metric {
        Metric::Logits(metric) => {
            let out = model.run_with_hooks(&tokens, &ForwardOptions::default(), &hooks)?;
            let logits = out.logits.ok_or_else(no_logits)?;
            (0..copies)
                .map(|i| metric(&logits.narrow(0, i * batch, batch)))
                .collect()
        }
        Metric::LogitsAndCache { names, metric } => {
            let cache_options = CacheOptions {
                names_filter: names.clone(),
                ..CacheOptions::default()
            };
            // The patches go in first, so the cache records the patched activations.
            let (out, cache) = model.hooks().with_hooks(&hooks, || {
                model.run_with_cache(&tokens, &ForwardOptions::default(), &cache_options)
            })??;
            let logits = out.logits.ok_or_else(no_logits)?;
            (0..copies)
                .map(|i| {
                    let rows = Slice::Range {
                        start: Some(i * batch),
                        stop: Some((i + 1) * batch),
                        step: 1,
                    };
                    let copy = cache.apply_slice_to_batch_dim(&rows)?;
                    metric(&logits.narrow(0, i * batch, batch), &copy)
                })
                .collect()
        }
    }
}

/// `act` `[copies * b, ...]` with, in each copy `i` of `rows`, the indexed slice replaced by
/// `source`'s (`[b, ...]`).
fn patched(
    act: &Tensor,
    source: &Tensor,
    copies: i64,
    rows: &[(i64, Vec<i64>)],
    activation: Activation,
    axes: PatchAxes,
) -> Tensor {
    let out = act.copy();
    let mut shape = act.size();
    shape[0] /= copies;
    shape.insert(0, copies);
    let view = out.view(shape.as_slice());
    for (copy, index) in rows {
        let (target, from) = (view.get(*copy), source.shallow_clone());
        let (mut target, from) = select(target, from, index, activation, axes);
        target.copy_(&from);
    }
    out
}

/// The slice of `target` and of `from` (both `[b, ...]`) that an index names.
fn select(
    target: Tensor,
    from: Tensor,
    index: &[i64],
    activation: Activation,
    axes: PatchAxes,
) -> (Tensor, Tensor) {
    // (axis, position) pairs, axis counted in [b, ...].
    let picks: Vec<(i64, i64)> = match axes {
        PatchAxes::LayerPos => vec![(1, index[0])],
        PatchAxes::LayerPosHead => vec![(1, index[0]), (2, index[1])],
        PatchAxes::LayerHead if activation == Activation::Pattern => vec![(1, index[0])],
        PatchAxes::LayerHead => vec![(2, index[0])],
        PatchAxes::LayerHeadDestPos => vec![(1, index[0]), (2, index[1])],
        PatchAxes::LayerHeadDestSrcPos => vec![(1, index[0]), (2, index[1]), (3, index[2])],
    };
    picks
        .into_iter()
        .fold((target, from), |(t, f), (axis, at)| {
            (t.narrow(axis, at, 1), f.narrow(axis, at, 1))
        })
}

/// Attribution patching: the linear estimate of every activation patch at once, from one clean
/// forward pass and one corrupted forward and backward pass. For every hook point `names`
/// selects, `(clean - corrupted) * d metric / d activation` at the corrupted run, elementwise,
/// in the activation's shape (sum it over `d_model` or `d_head` for per-position or per-head
/// attributions, as TransformerLens's tutorials do).
///
/// `metric` maps the corrupted run's logits to a differentiable scalar (a logit difference, say).
/// The parameter gradients that backward pass leaves are dropped afterwards (the model's
/// `zero_grad`), so gradients accumulated before the call are gone too.
///
/// Errors: the two token tensors differ in shape; the model's and the metric's errors.
pub fn attribution_patch(
    model: &dyn LensModel,
    clean: &Tensor,
    corrupted: &Tensor,
    metric: &dyn Fn(&Tensor) -> ModelResult<Tensor>,
    names: hookpoint::NamesFilter,
) -> ModelResult<Vec<(String, Tensor)>> {
    if clean.size() != corrupted.size() {
        return Err(ModelError::InvalidInput(format!(
            "attribution patching needs clean and corrupted tokens of one shape; got {:?} and {:?}",
            clean.size(),
            corrupted.size()
        )));
    }
    let options = hookpoint::CacheOptions {
        names_filter: names,
        ..hookpoint::CacheOptions::default()
    };
    let (_, clean_cache) =
        tch::no_grad(|| model.run_with_cache(clean, &ForwardOptions::default(), &options))?;
    let target = |out: &crate::model::ForwardOutput| metric(out.logits()?);
    let (_, corrupted_cache) = model.run_with_cache_and_backward(
        corrupted,
        &ForwardOptions::default(),
        &options,
        &target,
    )?;
    model.zero_grad();
    let mut out = Vec::new();
    for (name, clean_act) in clean_cache.iter() {
        let grad_name = format!("{name}_grad");
        let (Ok(corrupted_act), Ok(grad)) = (
            corrupted_cache.get(name),
            corrupted_cache.get(grad_name.as_str()),
        ) else {
            continue;
        };
        if grad.size() == clean_act.size() {
            out.push((name.to_owned(), (clean_act - corrupted_act) * grad));
        }
    }
    Ok(out)
}
