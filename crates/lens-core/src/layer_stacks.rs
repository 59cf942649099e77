//! Per-layer parameters kept in one tensor per weight, stacked over layers, so that
//! TransformerLens's stacked weights (`model.W_Q`, `[n_layers, ...]`) can alias the live
//! parameters instead of copying them.
//!
//! [`LayerStacks::alias`] moves the storage of every layer's copy of a parameter into one
//! `[n_layers, ...]` tensor. Each parameter stays the same tensor — the same autograd leaf, with
//! its own gradient — only its data now lives in a row of the stack (PyTorch's
//! `param.data = stack[l]`), so the forward pass is unchanged and a write into the stack is a
//! write into the model.

use std::collections::BTreeMap;

use tch::Tensor;

/// The stacks of one model's per-layer parameters, by name pattern (the layer index replaced by
/// `*`: `transformer.h.*.attn.c_attn.weight`, `blocks.*.attn.W_Q`).
#[derive(Debug, Default)]
pub struct LayerStacks {
    stacks: BTreeMap<String, Tensor>,
}

impl LayerStacks {
    /// Stacks the per-layer parameters among `named` (parameters whose name has one numeric
    /// segment, the layer): for each pattern present in every layer `0..n` with one shape,
    /// dtype and device, one `[n, ...]` tensor holding all of them, each parameter re-pointed
    /// into its row. Other parameters are left as they are. Values, gradients and autograd
    /// identity are unchanged; memory grows by one pattern's worth while it is copied.
    pub fn alias(named: Vec<(String, Tensor)>) -> LayerStacks {
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
        LayerStacks { stacks }
    }

    /// The stack of `pattern` when `layers` (the parameters of layers `0..n` in order) still
    /// live in it; `None` when there is no such stack or a parameter has since been replaced.
    pub fn get(&self, pattern: &str, layers: &[Tensor]) -> Option<Tensor> {
        let stack = self.stacks.get(pattern)?;
        let aliased = stack.size()[0] == layers.len() as i64
            && layers.iter().enumerate().all(|(l, t)| {
                let row = stack.get(l as i64);
                t.size() == row.size() && t.data_ptr() == row.data_ptr()
            });
        aliased.then(|| stack.shallow_clone())
    }
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
