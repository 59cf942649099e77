//! HF -> TransformerLens weight conversion, through each architecture's weight table
//! (`lens_core::weight_map`, the one the bridge's TransformerLens weights use too). The layout
//! itself lives in lens-core, shared with the bridge and with weight processing.

use std::collections::BTreeMap;

use lens_core::model::ModelDims;
use lens_core::weight_map::{self, WeightMap};
use lens_core::{GptNeoConfig, GptNeoxConfig, LlamaConfig, OptConfig, ParallelConfig};
use tch::{Kind, Tensor};

pub use lens_core::tl_params::{AttentionParams, BlockParams, LayerNormParams, MlpParams, Params};

use crate::config::HookedTransformerConfig;
use crate::error::{Error, Result};

/// Converts a checkpoint's weights into TransformerLens's layout: each weight of `map` is its
/// view of the HF parameter, copied out; an optional parameter the checkpoint lacks is zeros.
/// `has(name)` says whether the checkpoint has a parameter; `get(name, shape)` fetches it,
/// checking its shape (`take` is asked for the last use of each parameter, so a caller can move
/// it out rather than keep it).
pub fn convert(
    map: &WeightMap,
    has: impl Fn(&str) -> bool,
    mut get: impl FnMut(&str, &[i64], bool) -> Result<Tensor>,
) -> Result<Params> {
    let mut uses = map.uses();
    let mut named = BTreeMap::new();
    let mut like: Option<(Kind, tch::Device)> = None;
    for (tl, source) in map.iter() {
        let tensor = match (&source.if_absent, has(&source.hf)) {
            (Some(constant), false) => {
                let (kind, device) = like.unwrap_or((Kind::Float, tch::Device::Cpu));
                constant.tensor(kind, device)
            }
            _ => {
                let left = uses.get_mut(source.hf.as_str()).map_or(0, |n| {
                    *n -= 1;
                    *n
                });
                let hf = get(&source.hf, &source.shape, left == 0)?;
                like.get_or_insert((hf.kind(), hf.device()));
                // A parameter read again later (GPT-J's and Phi's one LayerNorm, as `ln1` and
                // `ln2`; a tied embedding) gets storage of its own here, as TransformerLens
                // copies it: an edit of one must not reach the other.
                // (Gemma's `1 + w` comes in f32: the norm multiplies by it in f32, as HF does.)
                let view = source.tl_of(&hf);
                if left > 0 {
                    view.copy()
                } else {
                    view.contiguous()
                }
            }
        };
        named.insert(tl.to_owned(), tensor);
    }
    Params::from_named(&mut named).map_err(Error::InvalidInput)
}

/// The sizes a GPT-2 weight table needs, from a HookedTransformer config.
fn dims(cfg: &HookedTransformerConfig) -> ModelDims {
    ModelDims {
        n_layers: cfg.n_layers,
        n_heads: cfg.n_heads,
        d_model: cfg.d_model,
        d_head: cfg.d_head,
        d_mlp: cfg.d_mlp,
        d_vocab: cfg.d_vocab,
        n_ctx: cfg.n_ctx,
    }
}

/// Converts HF GPT-2 weights (`Conv1D` `[in, out]` layouts, the fused `c_attn`) into
/// TransformerLens's layout. `get(name, shape, last)` fetches one HF tensor, checking its shape
/// (`-1`: any size), `last` on its last use (a tied `wte` is read for `W_E` and `W_U`).
pub fn convert_gpt2(
    cfg: &HookedTransformerConfig,
    tie_word_embeddings: bool,
    get: impl FnMut(&str, &[i64], bool) -> Result<Tensor>,
) -> Result<Params> {
    let map = weight_map::gpt2(&dims(cfg), tie_word_embeddings);
    // GPT-2 checkpoints have every parameter but the unembedding bias.
    convert(&map, |name| name != "lm_head.bias", get)
}

/// Converts HF Llama-family weights (Llama, Mistral, Qwen2, Qwen3; `nn.Linear` `[out, in]`)
/// into TransformerLens's layout, keeping every bias the checkpoint has (`attention_bias`,
/// Qwen2's q/k/v biases, `mlp_bias`; zeros where it has none) and Qwen3's q/k norm weights.
pub fn convert_llama(
    hf: &LlamaConfig,
    has: impl Fn(&str) -> bool,
    get: impl FnMut(&str, &[i64], bool) -> Result<Tensor>,
) -> Result<Params> {
    convert(&weight_map::llama(hf), has, get)
}

/// Converts HF GPT-NeoX weights (q, k and v interleaved per head in `query_key_value`,
/// `nn.Linear` `[out, in]`) into TransformerLens's layout, zero attention biases where the
/// checkpoint has none (`attention_bias: false`).
pub fn convert_gpt_neox(
    hf: &GptNeoxConfig,
    has: impl Fn(&str) -> bool,
    get: impl FnMut(&str, &[i64], bool) -> Result<Tensor>,
) -> Result<Params> {
    convert(&weight_map::gpt_neox(hf), has, get)
}

/// Converts HF GPT-J or Phi weights (`nn.Linear` `[out, in]`) into TransformerLens's layout:
/// the block's one LayerNorm copied into `ln1` and `ln2`, as TransformerLens's converters do,
/// zero attention biases for GPT-J (which has none), the unembedding's own bias.
pub fn convert_parallel(
    hf: &ParallelConfig,
    has: impl Fn(&str) -> bool,
    get: impl FnMut(&str, &[i64], bool) -> Result<Tensor>,
) -> Result<Params> {
    convert(&weight_map::parallel(hf), has, get)
}

/// Converts HF GPT-Neo weights (`nn.Linear` `[out, in]`, q/k/v without biases, which are zero
/// here as in TransformerLens) into TransformerLens's layout.
pub fn convert_gpt_neo(
    hf: &GptNeoConfig,
    has: impl Fn(&str) -> bool,
    get: impl FnMut(&str, &[i64], bool) -> Result<Tensor>,
) -> Result<Params> {
    convert(&weight_map::gpt_neo(hf), has, get)
}

/// Converts HF OPT weights (`W_pos` the table after its offset of 2, zero biases where
/// `enable_bias` is off) into TransformerLens's layout.
pub fn convert_opt(
    hf: &OptConfig,
    has: impl Fn(&str) -> bool,
    get: impl FnMut(&str, &[i64], bool) -> Result<Tensor>,
) -> Result<Params> {
    convert(&weight_map::opt(hf), has, get)
}
