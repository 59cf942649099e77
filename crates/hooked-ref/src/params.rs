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

/// Converts HF Llama-family weights (Llama, Mistral, Qwen2, Qwen3; `nn.Linear` `[out, in]`
/// layouts) into TransformerLens's layout, as TransformerLens's `convert_llama_weights` does,
/// keeping every bias the checkpoint has (`attention_bias`, Qwen2's q/k/v biases, `mlp_bias`;
/// zeros where it has none) and Qwen3's q/k norm weights. `get(name, shape)` fetches one HF
/// tensor, checking its shape; `has(name)` says whether the checkpoint has it.
pub fn convert_llama<E>(
    cfg: &HookedTransformerConfig,
    tie_word_embeddings: bool,
    has: impl Fn(&str) -> bool,
    mut get: impl FnMut(&str, &[i64]) -> Result<Tensor, E>,
) -> Result<Params, E> {
    let (d, h, dh, m, v) = (cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab);
    let h_kv = cfg.n_kv_heads();
    let w_e = get("model.embed_tokens.weight", &[v, d])?;
    let zeros = |shape: &[i64]| Tensor::zeros(shape, (w_e.kind(), w_e.device()));
    let mut blocks = Vec::with_capacity(cfg.n_layers as usize);
    for l in 0..cfg.n_layers {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        let mut bias = |name: &str, shape: &[i64]| -> Result<Tensor, E> {
            let n: i64 = shape.iter().product();
            if has(&p(name)) {
                Ok(get(&p(name), &[n])?.reshape(shape))
            } else {
                Ok(zeros(shape))
            }
        };
        let b_q = bias("self_attn.q_proj.bias", &[h, dh])?;
        let b_k = bias("self_attn.k_proj.bias", &[h_kv, dh])?;
        let b_v = bias("self_attn.v_proj.bias", &[h_kv, dh])?;
        let b_o = bias("self_attn.o_proj.bias", &[d])?;
        let b_in = bias("mlp.up_proj.bias", &[m])?;
        let b_out = bias("mlp.down_proj.bias", &[d])?;
        let b_gate = if has(&p("mlp.gate_proj.bias")) {
            Some(get(&p("mlp.gate_proj.bias"), &[m])?)
        } else {
            None
        };
        // [heads * dh, d] -> [heads, d, dh]
        let mut heads = |name: &str, n: i64| -> Result<Tensor, E> {
            Ok(get(&p(name), &[n * dh, d])?
                .reshape([n, dh, d])
                .permute([0, 2, 1])
                .contiguous())
        };
        let w_q = heads("self_attn.q_proj.weight", h)?;
        let w_k = heads("self_attn.k_proj.weight", h_kv)?;
        let w_v = heads("self_attn.v_proj.weight", h_kv)?;
        let mut t = |name: &str, rows: i64, cols: i64| -> Result<Tensor, E> {
            Ok(get(&p(name), &[rows, cols])?.transpose(0, 1).contiguous())
        };
        // [d, heads * dh] -> [heads * dh, d] -> [heads, dh, d]
        let w_o = t("self_attn.o_proj.weight", d, h * dh)?.reshape([h, dh, d]);
        let w_gate = t("mlp.gate_proj.weight", m, d)?;
        let w_in = t("mlp.up_proj.weight", m, d)?;
        let w_out = t("mlp.down_proj.weight", d, m)?;
        let (q_norm, k_norm) = if cfg.use_qk_norm {
            (
                Some(get(&p("self_attn.q_norm.weight"), &[dh])?),
                Some(get(&p("self_attn.k_norm.weight"), &[dh])?),
            )
        } else {
            (None, None)
        };
        blocks.push(BlockParams {
            ln1: Some(LayerNormParams {
                w: get(&p("input_layernorm.weight"), &[d])?,
                b: None,
            }),
            attn: AttentionParams {
                W_Q: w_q,
                W_K: w_k,
                W_V: w_v,
                b_Q: b_q,
                b_K: b_k,
                b_V: b_v,
                W_O: w_o,
                b_O: b_o,
                q_norm,
                k_norm,
            },
            ln2: Some(LayerNormParams {
                w: get(&p("post_attention_layernorm.weight"), &[d])?,
                b: None,
            }),
            mlp: MlpParams {
                W_in: w_in,
                b_in,
                W_out: w_out,
                b_out,
                W_gate: Some(w_gate),
                b_gate,
            },
        });
    }
    let ln_final = LayerNormParams {
        w: get("model.norm.weight", &[d])?,
        b: None,
    };
    let w_u = if tie_word_embeddings {
        w_e.copy()
    } else {
        get("lm_head.weight", &[v, d])?
    }
    .transpose(0, 1)
    .contiguous();
    let b_u = zeros(&[v]);
    Ok(Params {
        W_E: w_e,
        W_pos: None,
        blocks,
        ln_final: Some(ln_final),
        W_U: w_u,
        b_U: b_u,
    })
}
