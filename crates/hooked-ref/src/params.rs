//! The HF GPT-2 -> TransformerLens weight conversion (the layout itself lives in lens-core,
//! shared with the bridge and with weight processing).

use tch::Tensor;

pub use lens_core::tl_params::{AttentionParams, BlockParams, LayerNormParams, MlpParams, Params};

use crate::config::HookedTransformerConfig;

/// Converts HF GPT-2 weights (HF names, Conv1D `[in, out]` layouts) into TransformerLens's
/// layout. `get(name, shape)` fetches one HF tensor, checking its shape.
pub fn convert_gpt2<E>(
    cfg: &HookedTransformerConfig,
    tie_word_embeddings: bool,
    mut get: impl FnMut(&str, &[i64]) -> Result<Tensor, E>,
) -> Result<Params, E> {
    let (d, h, dh, m, v) = (cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab);
    let w_e = get("transformer.wte.weight", &[v, d])?;
    let wpe = get_wpe(&mut get, cfg)?;
    let mut blocks = Vec::with_capacity(cfg.n_layers as usize);
    for l in 0..cfg.n_layers {
        let p = |s: &str| format!("transformer.h.{l}.{s}");
        let ln1 = LayerNormParams {
            w: get(&p("ln_1.weight"), &[d])?,
            b: Some(get(&p("ln_1.bias"), &[d])?),
        };
        let c_attn = get(&p("attn.c_attn.weight"), &[d, 3 * h * dh])?;
        let c_attn_bias = get(&p("attn.c_attn.bias"), &[3 * h * dh])?;
        // [d, 3 * h * dh] -> three [d, h, dh] -> [h, d, dh]
        let split_w: Vec<Tensor> = c_attn
            .split(h * dh, 1)
            .into_iter()
            .map(|w| w.reshape([d, h, dh]).permute([1, 0, 2]).contiguous())
            .collect();
        let split_b: Vec<Tensor> = c_attn_bias
            .reshape([3, h, dh])
            .unbind(0)
            .into_iter()
            .map(|b| b.contiguous())
            .collect();
        let [w_q, w_k, w_v]: [Tensor; 3] = split_w.try_into().expect("split into three");
        let [b_q, b_k, b_v]: [Tensor; 3] = split_b.try_into().expect("unbind into three");
        let attn = AttentionParams {
            W_Q: w_q,
            W_K: w_k,
            W_V: w_v,
            b_Q: b_q,
            b_K: b_k,
            b_V: b_v,
            W_O: get(&p("attn.c_proj.weight"), &[h * dh, d])?.reshape([h, dh, d]),
            b_O: get(&p("attn.c_proj.bias"), &[d])?,
            q_norm: None,
            k_norm: None,
        };
        let ln2 = LayerNormParams {
            w: get(&p("ln_2.weight"), &[d])?,
            b: Some(get(&p("ln_2.bias"), &[d])?),
        };
        let mlp = MlpParams {
            W_in: get(&p("mlp.c_fc.weight"), &[d, m])?,
            b_in: get(&p("mlp.c_fc.bias"), &[m])?,
            W_out: get(&p("mlp.c_proj.weight"), &[m, d])?,
            b_out: get(&p("mlp.c_proj.bias"), &[d])?,
            W_gate: None,
            b_gate: None,
        };
        blocks.push(BlockParams {
            ln1: Some(ln1),
            attn,
            ln2: Some(ln2),
            mlp,
        });
    }
    let ln_final = LayerNormParams {
        w: get("transformer.ln_f.weight", &[d])?,
        b: Some(get("transformer.ln_f.bias", &[d])?),
    };
    let w_u = if tie_word_embeddings {
        w_e.copy()
    } else {
        get("lm_head.weight", &[v, d])?
    }
    .transpose(0, 1)
    .contiguous();
    let b_u = Tensor::zeros([v], (w_u.kind(), w_u.device()));
    Ok(Params {
        W_E: w_e,
        W_pos: Some(wpe),
        blocks,
        ln_final: Some(ln_final),
        W_U: w_u,
        b_U: b_u,
    })
}

/// `wpe` truncated to `n_ctx` rows (HF checkpoints may carry more positions than used).
fn get_wpe<E>(
    get: &mut impl FnMut(&str, &[i64]) -> Result<Tensor, E>,
    cfg: &HookedTransformerConfig,
) -> Result<Tensor, E> {
    let wpe = get("transformer.wpe.weight", &[-1, cfg.d_model])?;
    Ok(wpe.narrow(0, 0, cfg.n_ctx.min(wpe.size()[0])).contiguous())
}
