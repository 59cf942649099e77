//! `ActivationCache`: activations (and optionally gradients) recorded by cache hooks during one
//! run, addressable by full hook name or TransformerLens shorthand.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tch::{Device, Tensor};

use crate::error::{HookError, Result};
use crate::names::ActKey;
use crate::native;
use crate::point::Hook;
use crate::registry::{HookRegistry, HookSpec, NamesFilter};

/// A selection along one dimension, with TransformerLens's `Slice` semantics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Slice {
    /// Everything (identity).
    #[default]
    All,
    /// One index; the dimension is dropped. Negative counts from the end.
    Index(i64),
    /// Python's `slice(start, stop, step)`; the dimension is kept.
    Range {
        /// First index (negative counts from the end); `None` = 0.
        start: Option<i64>,
        /// One past the last index; `None` = the end.
        stop: Option<i64>,
        /// Positive step.
        step: i64,
    },
    /// These indices, in this order; the dimension is kept.
    Indices(Vec<i64>),
}

impl Slice {
    /// Applies the slice to dimension `dim` (negative counts from the end).
    pub fn apply(&self, tensor: &Tensor, dim: i64) -> Result<Tensor> {
        let rank = tensor.dim() as i64;
        let axis = if dim < 0 { dim + rank } else { dim };
        if !(0..rank).contains(&axis) {
            return Err(HookError::Cache(format!(
                "slice dimension {dim} out of range for shape {:?}",
                tensor.size()
            )));
        }
        let size = tensor.size()[axis as usize];
        let wrap = |i: i64| if i < 0 { i + size } else { i };
        Ok(match self {
            Slice::All => tensor.shallow_clone(),
            Slice::Index(i) => {
                let i = wrap(*i);
                if !(0..size).contains(&i) {
                    return Err(HookError::Cache(format!(
                        "index {i} out of range for dimension of size {size}"
                    )));
                }
                tensor.f_select(axis, i)?
            }
            Slice::Range { start, stop, step } => {
                if *step < 1 {
                    return Err(HookError::Cache(format!(
                        "slice step must be positive, got {step}"
                    )));
                }
                let start = start.map(wrap).unwrap_or(0).clamp(0, size);
                let stop = stop.map(wrap).unwrap_or(size).clamp(start, size);
                tensor.f_slice(axis, start, stop, *step)?
            }
            Slice::Indices(indices) => {
                let indices: Vec<i64> = indices.iter().map(|&i| wrap(i)).collect();
                if let Some(bad) = indices.iter().find(|i| !(0..size).contains(*i)) {
                    return Err(HookError::Cache(format!(
                        "index {bad} out of range for dimension of size {size}"
                    )));
                }
                let index = Tensor::from_slice(&indices).to_device(tensor.device());
                tensor.f_index_select(axis, &index)?
            }
        })
    }
}

/// Options of `run_with_cache`.
#[derive(Clone, Debug, Default)]
pub struct CacheOptions {
    /// Which hook points to record.
    pub names_filter: NamesFilter,
    /// Drop the leading batch dimension of every entry (the batch must have size 1).
    pub remove_batch_dim: bool,
    /// Also record the gradient at every selected point, as `<name>_grad`; the forward output
    /// must then be a scalar (e.g. the loss).
    pub incl_bwd: bool,
    /// Where the cached tensors go (default: where they were computed).
    pub device: Option<Device>,
    /// Positions to keep: applied to dimension -3 of per-head activations (q, k, v, z, result...)
    /// and -2 of everything else, when the tensor has that many dimensions.
    pub pos_slice: Slice,
}

/// Recorded activations in firing order.
#[derive(Debug)]
pub struct ActivationCache {
    entries: Vec<(String, Tensor)>,
    index: HashMap<String, usize>,
    has_batch_dim: bool,
    n_layers: Option<usize>,
    /// Alias -> canonical name, so a cache of a model with aliases answers to both.
    aliases: Arc<HashMap<String, String>>,
}

impl ActivationCache {
    /// An empty cache for a model with `n_layers` layers (used to resolve negative layers).
    pub fn new(n_layers: Option<usize>) -> Self {
        ActivationCache {
            entries: Vec::new(),
            index: HashMap::new(),
            has_batch_dim: true,
            n_layers,
            aliases: Arc::default(),
        }
    }

    /// Lets lookups by alias find the entry stored under the canonical name.
    pub fn with_aliases(mut self, aliases: Arc<HashMap<String, String>>) -> Self {
        self.aliases = aliases;
        self
    }

    /// Inserts or replaces an entry (a replaced entry keeps its position).
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        let name = name.into();
        match self.index.get(&name) {
            Some(&i) => self.entries[i].1 = tensor,
            None => {
                self.index.insert(name.clone(), self.entries.len());
                self.entries.push((name, tensor));
            }
        }
    }

    /// Keeps only the entries whose name `keep` accepts (in their order), freeing the others:
    /// for example only the gradients (`name.ends_with("_grad")`) of a cache whose activations
    /// are already kept elsewhere.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.entries.retain(|(name, _)| keep(name));
        self.index = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, (name, _))| (name.clone(), i))
            .collect();
    }

    /// The full name `key` resolves to in this cache, or the error naming it.
    pub fn resolve(&self, key: impl Into<ActKey>) -> Result<String> {
        let key = key.into();
        if let ActKey::Name(name) = &key {
            if self.index.contains_key(name) {
                return Ok(name.clone());
            }
        }
        let name = key
            .resolve(self.n_layers)
            .ok_or_else(|| HookError::BadActName(key.to_string()))?;
        if self.index.contains_key(&name) {
            return Ok(name);
        }
        // An alias, or the gradient entry of an alias (`hook_embed_grad` -> `embed.hook_out_grad`).
        let (stem, suffix) = match name.strip_suffix("_grad") {
            Some(stem) => (stem, "_grad"),
            None => (name.as_str(), ""),
        };
        match self
            .aliases
            .get(stem)
            .map(|target| format!("{target}{suffix}"))
        {
            Some(target) if self.index.contains_key(&target) => Ok(target),
            _ => Err(HookError::NotCached {
                suggestions: self.suggestions(&name),
                name,
            }),
        }
    }

    /// The tensor for `key`: a full name, an alias, or a TransformerLens shorthand such as
    /// `("resid_pre", 3)`, `("scale", 4, "ln1")` or `"k6"`.
    pub fn get(&self, key: impl Into<ActKey>) -> Result<&Tensor> {
        let name = self.resolve(key)?;
        Ok(&self.entries[self.index[&name]].1)
    }

    /// Whether `key` resolves to an entry.
    pub fn contains(&self, key: impl Into<ActKey>) -> bool {
        self.resolve(key).is_ok()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entry names in firing order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(name, _)| name.as_str())
    }

    /// `(name, tensor)` pairs in firing order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.entries
            .iter()
            .map(|(name, tensor)| (name.as_str(), tensor))
    }

    /// Whether entries still have their batch dimension.
    pub fn has_batch_dim(&self) -> bool {
        self.has_batch_dim
    }

    /// The number of layers used to resolve negative layer indices.
    pub fn n_layers(&self) -> Option<usize> {
        self.n_layers
    }

    /// Moves every entry to `device`.
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        for (_, tensor) in &mut self.entries {
            *tensor = tensor.f_to_device(device)?;
        }
        Ok(())
    }

    /// Drops the batch dimension of every entry. Every entry must have batch size 1; otherwise
    /// nothing changes and the error names the first entry that does not.
    pub fn remove_batch_dim(&mut self) -> Result<()> {
        if !self.has_batch_dim {
            return Err(HookError::Cache(
                "the batch dimension was already removed".to_owned(),
            ));
        }
        if let Some((name, tensor)) = self
            .entries
            .iter()
            .find(|(_, t)| t.dim() == 0 || t.size()[0] != 1)
        {
            return Err(HookError::Cache(format!(
                "cannot remove the batch dimension: '{name}' has shape {:?} (batch size must be 1)",
                tensor.size()
            )));
        }
        for (_, tensor) in &mut self.entries {
            *tensor = tensor.f_select(0, 0)?;
        }
        self.has_batch_dim = false;
        Ok(())
    }

    /// A new cache with `slice` applied to the batch dimension of every entry.
    pub fn apply_slice_to_batch_dim(&self, slice: &Slice) -> Result<ActivationCache> {
        if !self.has_batch_dim {
            return Err(HookError::Cache(
                "the cache has no batch dimension".to_owned(),
            ));
        }
        let mut sliced = ActivationCache::new(self.n_layers).with_aliases(self.aliases.clone());
        for (name, tensor) in &self.entries {
            sliced.insert(name.clone(), slice.apply(tensor, 0)?);
        }
        sliced.has_batch_dim = !matches!(slice, Slice::Index(_));
        Ok(sliced)
    }

    fn suggestions(&self, name: &str) -> Vec<String> {
        let mut names: Vec<&str> = self
            .keys()
            .filter(|k| k.ends_with(name.rsplit('.').next().unwrap_or(name)))
            .collect();
        names.truncate(3);
        names.into_iter().map(str::to_owned).collect()
    }
}

/// Whether a hook's position axis is -3 (per-head activations `[.., pos, head, d]`) rather than -2.
fn has_head_axis(name: &str) -> bool {
    [
        "hook_q",
        "hook_k",
        "hook_v",
        "hook_z",
        "hook_result",
        "hook_rot_q",
        "hook_rot_k",
    ]
    .iter()
    .any(|suffix| name.ends_with(suffix))
}

/// Recorded tensors, shared with the cache hooks.
type Recorded = Arc<Mutex<Vec<(String, Tensor)>>>;

fn lock(recorded: &Recorded) -> std::sync::MutexGuard<'_, Vec<(String, Tensor)>> {
    recorded
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn prepare(tensor: &Tensor, name: &str, options: &CacheOptions) -> Tensor {
    let mut out = tensor.detach();
    if !matches!(options.pos_slice, Slice::All) {
        let dim = if has_head_axis(name) { -3 } else { -2 };
        if out.dim() as i64 >= -dim {
            // A slice that does not fit this tensor leaves it whole, as TransformerLens does.
            out = options.pos_slice.apply(&out, dim).unwrap_or(out);
        }
    }
    match options.device {
        Some(device) => out.to_device(device),
        None => out,
    }
}

/// Runs `forward` with cache hooks on the points `options` selects, and (with `incl_bwd`)
/// the backward pass of its scalar output; returns the output and the cache. The hooks are gone
/// when this returns, whatever happened.
///
/// A point that fires more than once keeps its last activation and the sum of the gradients
/// of its firings of that activation's shape (with TransformerLens's `use_split_qkv_input` and
/// grouped key/value heads, `ln1`'s query firing has more heads than its key and value firings,
/// which are kept).
pub fn run_with_cache<E: From<HookError>>(
    registry: &HookRegistry,
    options: &CacheOptions,
    n_layers: Option<usize>,
    forward: impl FnOnce() -> Result<Tensor, E>,
) -> Result<(Tensor, ActivationCache), E> {
    let activations: Recorded = Arc::default();
    let gradients: Recorded = Arc::default();
    let output = {
        let scope = registry.scope();
        let opts = Arc::new(options.clone());
        let (sink, o) = (activations.clone(), opts.clone());
        scope.add(&HookSpec::forward(
            options.names_filter.clone(),
            Hook::new(move |tensor, ctx| {
                lock(&sink).push((ctx.name().to_owned(), prepare(tensor, ctx.name(), &o)));
                None
            }),
        ))?;
        if options.incl_bwd {
            let (sink, o) = (gradients.clone(), opts);
            scope.add(&HookSpec::backward(
                options.names_filter.clone(),
                Hook::new(move |gradient, ctx| {
                    lock(&sink).push((
                        format!("{}_grad", ctx.name()),
                        prepare(gradient, ctx.name(), &o),
                    ));
                    None
                }),
            ))?;
        }
        let output = forward()?;
        if options.incl_bwd {
            if output.numel() != 1 {
                return Err(HookError::Cache(format!(
                    "incl_bwd needs a scalar output (e.g. the loss) to run backward from, got shape {:?}",
                    output.size()
                ))
                .into());
            }
            native::backward(&output)?;
        }
        output
    };
    let mut cache = ActivationCache::new(n_layers).with_aliases(alias_map(registry));
    for (name, tensor) in lock(&activations).drain(..) {
        cache.insert(name, tensor);
    }
    for (name, gradient) in lock(&gradients).drain(..) {
        // Firings of another shape than the kept activation (ln1 on a query input with more
        // heads than the key/value inputs) have no place in its gradient.
        let activation = name.strip_suffix("_grad").unwrap_or(&name);
        if let Some(&i) = cache.index.get(activation) {
            if cache.entries[i].1.size() != gradient.size() {
                continue;
            }
        }
        let summed = match cache.index.get(&name) {
            Some(&i) => cache.entries[i]
                .1
                .f_add(&gradient)
                .map_err(HookError::from)?,
            None => gradient,
        };
        cache.insert(name, summed);
    }
    if options.remove_batch_dim {
        cache.remove_batch_dim()?;
    }
    Ok((output, cache))
}

fn alias_map(registry: &HookRegistry) -> Arc<HashMap<String, String>> {
    Arc::new(
        registry
            .aliases()
            .map(|(alias, target)| (alias.to_owned(), target.to_owned()))
            .collect(),
    )
}

/// Normalization a model applies before its residual-stream readers (TransformerLens's
/// `normalization_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Normalization {
    /// LayerNorm with learned weight and bias.
    LayerNorm,
    /// LayerNorm with its weight and bias folded into the following weights.
    LayerNormPre,
    /// RMSNorm with a learned weight.
    Rms,
    /// RMSNorm with its weight folded.
    RmsPre,
    /// None.
    None,
}

/// What the model-aware cache helpers (accumulated_resid, decompose_resid, stack_head_results,
/// apply_ln_to_stack, logit_attrs, get_full_resid_decomposition) need to know about a model.
/// Both `hooked-ref` and `bridge` implement it, so the helpers are written once.
pub trait ResidualModel {
    /// Number of transformer blocks.
    fn n_layers(&self) -> usize;
    /// Attention heads per block.
    fn n_heads(&self) -> usize;
    /// The normalization before each reader of the residual stream.
    fn normalization(&self) -> Normalization;
    /// Whether `ln1` / `ln2` normalise the residual stream each sublayer reads, so their cached
    /// scales are the residual's (not where the norms follow the sublayers, OLMo-2, or the
    /// residual additions, OPT-350m). `true` by default.
    fn sublayer_norms_read_residual(&self) -> bool {
        true
    }
    /// Whether a final norm reads the last residual stream (post-LN OPT has none). `true` by
    /// default.
    fn has_final_norm(&self) -> bool {
        true
    }
    /// Whether the residual stream is the sum of what the embeddings and sublayers wrote (not
    /// where LayerNorms renormalise it after each addition, post-LN OPT). `true` by default.
    fn residual_is_a_sum(&self) -> bool {
        true
    }
    /// `W_O` of block `layer`, `[n_heads, d_head, d_model]`.
    fn w_o(&self, layer: usize) -> Tensor;
    /// `W_out` of block `layer`'s MLP, `[d_mlp, d_model]`.
    fn w_out(&self, layer: usize) -> Tensor;
    /// The map from the final residual stream (after `ln_final`) to the logits, `[d_model,
    /// d_vocab]`: `W_U`, through the projection out of the residual stream where the model has
    /// one (OPT-350m).
    fn w_u(&self) -> Tensor;
    /// Sum of the output biases written to the residual stream before block `layer` (plus
    /// `b_O[layer]` with `mlp_input`; MLP biases only with `include_mlp_biases`), `[d_model]`.
    fn accumulated_bias(&self, layer: usize, mlp_input: bool, include_mlp_biases: bool) -> Tensor;
    /// Applies the final normalization to `residual` (recomputing its scale).
    fn apply_ln_final(&self, residual: &Tensor) -> Result<Tensor>;
    /// The id of `text` when it is exactly one token.
    fn to_single_token(&self, text: &str) -> Result<i64>;
}
