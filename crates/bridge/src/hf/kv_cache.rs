//! The key/value cache of GPT-2's attention (HuggingFace's `DynamicCache`, one entry per layer).

use tch::Tensor;

/// Keys and values of the positions already processed, per layer, in HuggingFace's layout
/// `[batch, n_heads, positions, d_head]`.
///
/// A forward pass given a cache appends the keys and values of its new positions to it (after
/// any hook on `attn.hook_k` / `attn.hook_v` ran), and attends over everything it holds.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        KvCache::default()
    }

    /// Number of positions cached (0 when empty).
    pub fn len(&self) -> i64 {
        match self.layers.first() {
            Some(Some((k, _))) => k.size()[2],
            _ => 0,
        }
    }

    /// Whether no position is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `k`, `v` `[b, h, new, dh]` to layer `layer` and returns all of its keys and
    /// values.
    pub(crate) fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        if self.layers.len() <= layer {
            self.layers.resize_with(layer + 1, || None);
        }
        let (k_all, v_all) = match self.layers[layer].take() {
            Some((past_k, past_v)) => (Tensor::cat(&[past_k, k], 2), Tensor::cat(&[past_v, v], 2)),
            None => (k, v),
        };
        self.layers[layer] = Some((k_all.shallow_clone(), v_all.shallow_clone()));
        (k_all, v_all)
    }

    /// The cached keys and values of `layer`, `[b, h, positions, dh]` each.
    pub fn layer(&self, layer: usize) -> Option<(&Tensor, &Tensor)> {
        self.layers.get(layer)?.as_ref().map(|(k, v)| (k, v))
    }
}
