//! Per-layer parameters kept in one tensor per weight, stacked over layers, so that
//! TransformerLens's stacked weights (`model.W_Q`, `[n_layers, ...]`) can alias the live
//! parameters instead of copying them.
//!
//! [`LayerStacks::get_or_stack`] moves the storage of every layer's copy of a parameter into one
//! `[n_layers, ...]` tensor. Each parameter stays the same tensor — the same autograd leaf, with
//! its own gradient — only its data now lives in a row of the stack (PyTorch's
//! `param.data = stack[l]`), so the forward pass is unchanged and a write into the stack is a
//! write into the model.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tch::Tensor;

/// The stacks of one model's per-layer parameters, by name pattern (the layer index replaced by
/// `*`: `transformer.h.*.attn.c_attn.weight`, `blocks.*.attn.W_Q`), built the first time a
/// stacked weight is asked for, so that a model no one asks costs no memory: moving the storage
/// copies every per-layer parameter once. Do not run the model on another thread while that
/// first request re-points its parameters.
#[derive(Debug, Default)]
pub struct LayerStacks {
    stacks: Mutex<Option<BTreeMap<String, Tensor>>>,
}

impl LayerStacks {
    /// The stack of `pattern`, shared by `layers` (the parameters of layers `0..n` in order),
    /// building the stacks from `named` (every parameter with its name) if they are not built
    /// yet or the parameters were replaced since; `None` when the parameters of `pattern`
    /// cannot be stacked (different shapes, a layer missing).
    pub fn get_or_stack(
        &self,
        pattern: &str,
        layers: &[Tensor],
        named: impl Fn() -> Vec<(String, Tensor)>,
    ) -> Option<Tensor> {
        let mut stacks = self
            .stacks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(stack) = stacks.as_ref().and_then(|s| aliased(s, pattern, layers)) {
            return Some(stack);
        }
        let built = alias(named());
        let stack = aliased(&built, pattern, layers);
        *stacks = Some(built);
        stack
    }

    /// Forgets the stacks (after weight processing replaced parameters); the next request
    /// builds them again.
    pub fn reset(&self) {
        *self
            .stacks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
    }
}

/// Stacks the per-layer parameters among `named` (parameters whose name has one numeric
/// segment, the layer): for each pattern present in every layer `0..n` with one shape, dtype
/// and device, one `[n, ...]` tensor holding all of them, each parameter re-pointed into its
/// row. Other parameters are left as they are. Values, gradients and autograd identity are
/// unchanged; memory grows by one pattern's worth while it is copied.
fn alias(named: Vec<(String, Tensor)>) -> BTreeMap<String, Tensor> {
    let mut groups: BTreeMap<String, Vec<(i64, Tensor)>> = BTreeMap::new();
    for (name, tensor) in named {
        if let Some((pattern, layer)) = layer_pattern(&name) {
            groups.entry(pattern).or_default().push((layer, tensor));
        }
    }
    let mut stacks = BTreeMap::new();
    for (pattern, mut layers) in groups {
        layers.sort_by_key(|(layer, _)| *layer);
        let in_order = layers.iter().enumerate().all(|(i, (l, _))| *l == i as i64);
        let first = &layers[0].1;
        let uniform = layers.iter().all(|(_, t)| {
            t.size() == first.size() && t.kind() == first.kind() && t.device() == first.device()
        });
        if !in_order || !uniform {
            continue;
        }
        let stack = tch::no_grad(|| {
            let rows: Vec<Tensor> = layers.iter().map(|(_, t)| t.detach()).collect();
            Tensor::stack(&rows, 0)
        });
        for (layer, tensor) in &mut layers {
            tensor.set_data(&stack.get(*layer));
        }
        stacks.insert(pattern, stack);
    }
    stacks
}

/// The stack of `pattern` in `stacks` when `layers` still live in it.
fn aliased(stacks: &BTreeMap<String, Tensor>, pattern: &str, layers: &[Tensor]) -> Option<Tensor> {
    let stack = stacks.get(pattern)?;
    let aliased = stack.size()[0] == layers.len() as i64
        && layers.iter().enumerate().all(|(l, t)| {
            let row = stack.get(l as i64);
            t.size() == row.size() && t.data_ptr() == row.data_ptr()
        });
    aliased.then(|| stack.shallow_clone())
}

/// A per-layer name's pattern and layer: `transformer.h.3.ln_1.weight` is
/// (`transformer.h.*.ln_1.weight`, 3). `None` for names with no numeric segment or several.
pub fn layer_pattern(name: &str) -> Option<(String, i64)> {
    let segments: Vec<&str> = name.split('.').collect();
    let numeric: Vec<usize> = (0..segments.len())
        .filter(|&i| !segments[i].is_empty() && segments[i].bytes().all(|b| b.is_ascii_digit()))
        .collect();
    let [at] = numeric.as_slice() else {
        return None;
    };
    let layer = segments[*at].parse().ok()?;
    let pattern = segments
        .iter()
        .enumerate()
        .map(|(i, s)| if i == *at { "*" } else { s })
        .collect::<Vec<_>>()
        .join(".");
    Some((pattern, layer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_replace_the_one_layer_index() {
        assert_eq!(
            layer_pattern("model.layers.12.self_attn.q_proj.weight"),
            Some(("model.layers.*.self_attn.q_proj.weight".into(), 12))
        );
        assert_eq!(layer_pattern("lm_head.weight"), None);
        assert_eq!(layer_pattern("a.1.b.2"), None);
    }
}
