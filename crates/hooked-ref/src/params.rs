//! Parameters in TransformerLens's layout, and the HF GPT-2 -> TransformerLens conversion.

use tch::Tensor;

use crate::config::HookedTransformerConfig;

/// LayerNorm weight and bias `[d_model]` (absent after fold_ln turned it into LNPre).
#[derive(Debug)]
pub struct LayerNormParams {
    /// Scale `w`.
    pub w: Tensor,
    /// Bias `b`.
    pub b: Tensor,
}

/// One block's attention: `W_Q/W_K/W_V [h, d, dh]`, `b_Q/b_K/b_V [h, dh]`, `W_O [h, dh, d]`, `b_O [d]`.
#[derive(Debug)]
#[allow(non_snake_case)]
pub struct AttentionParams {
    pub W_Q: Tensor,
    pub W_K: Tensor,
    pub W_V: Tensor,
    pub b_Q: Tensor,
    pub b_K: Tensor,
    pub b_V: Tensor,
    pub W_O: Tensor,
    pub b_O: Tensor,
}

/// One block's MLP: `W_in [d, m]`, `b_in [m]`, `W_out [m, d]`, `b_out [d]`.
#[derive(Debug)]
#[allow(non_snake_case)]
pub struct MlpParams {
    pub W_in: Tensor,
    pub b_in: Tensor,
    pub W_out: Tensor,
    pub b_out: Tensor,
}

/// One transformer block.
#[derive(Debug)]
pub struct BlockParams {
    /// Before attention (`None` once folded).
    pub ln1: Option<LayerNormParams>,
    /// Attention.
    pub attn: AttentionParams,
    /// Before the MLP (`None` once folded).
    pub ln2: Option<LayerNormParams>,
    /// MLP.
    pub mlp: MlpParams,
}

/// All parameters of a GPT-2-style HookedTransformer.
#[derive(Debug)]
#[allow(non_snake_case)]
pub struct Params {
    /// Token embedding `[d_vocab, d_model]`.
    pub W_E: Tensor,
    /// Positional embedding `[n_ctx, d_model]`.
    pub W_pos: Tensor,
    /// The blocks.
    pub blocks: Vec<BlockParams>,
    /// Final LayerNorm (`None` once folded).
    pub ln_final: Option<LayerNormParams>,
    /// Unembedding `[d_model, d_vocab]`.
    pub W_U: Tensor,
    /// Unembedding bias `[d_vocab]`.
    pub b_U: Tensor,
}

impl Params {
    /// Every parameter with its TransformerLens state-dict name, in a stable order.
    pub fn named(&self) -> Vec<(String, &Tensor)> {
        let mut out: Vec<(String, &Tensor)> = vec![
            ("embed.W_E".into(), &self.W_E),
            ("pos_embed.W_pos".into(), &self.W_pos),
        ];
        for (l, block) in self.blocks.iter().enumerate() {
            if let Some(ln) = &block.ln1 {
                out.push((format!("blocks.{l}.ln1.w"), &ln.w));
                out.push((format!("blocks.{l}.ln1.b"), &ln.b));
            }
            let a = &block.attn;
            for (name, t) in [
                ("W_Q", &a.W_Q),
                ("W_K", &a.W_K),
                ("W_V", &a.W_V),
                ("W_O", &a.W_O),
            ] {
                out.push((format!("blocks.{l}.attn.{name}"), t));
            }
            for (name, t) in [
                ("b_Q", &a.b_Q),
                ("b_K", &a.b_K),
                ("b_V", &a.b_V),
                ("b_O", &a.b_O),
            ] {
                out.push((format!("blocks.{l}.attn.{name}"), t));
            }
            if let Some(ln) = &block.ln2 {
                out.push((format!("blocks.{l}.ln2.w"), &ln.w));
                out.push((format!("blocks.{l}.ln2.b"), &ln.b));
            }
            let m = &block.mlp;
            for (name, t) in [
                ("W_in", &m.W_in),
                ("b_in", &m.b_in),
                ("W_out", &m.W_out),
                ("b_out", &m.b_out),
            ] {
                out.push((format!("blocks.{l}.mlp.{name}"), t));
            }
        }
        if let Some(ln) = &self.ln_final {
            out.push(("ln_final.w".into(), &ln.w));
            out.push(("ln_final.b".into(), &ln.b));
        }
        out.push(("unembed.W_U".into(), &self.W_U));
        out.push(("unembed.b_U".into(), &self.b_U));
        out
    }

    /// Marks every parameter as requiring gradients (TransformerLens's default).
    pub fn requires_grad(self, on: bool) -> Self {
        for (_, t) in self.named() {
            let _ = t.shallow_clone().set_requires_grad(on);
        }
        self
    }
}

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
            b: get(&p("ln_1.bias"), &[d])?,
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
        };
        let ln2 = LayerNormParams {
            w: get(&p("ln_2.weight"), &[d])?,
            b: get(&p("ln_2.bias"), &[d])?,
        };
        let mlp = MlpParams {
            W_in: get(&p("mlp.c_fc.weight"), &[d, m])?,
            b_in: get(&p("mlp.c_fc.bias"), &[m])?,
            W_out: get(&p("mlp.c_proj.weight"), &[m, d])?,
            b_out: get(&p("mlp.c_proj.bias"), &[d])?,
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
        b: get("transformer.ln_f.bias", &[d])?,
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
        W_pos: wpe,
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
