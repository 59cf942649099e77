//! Parameters in TransformerLens's layout (`W_Q [h, d, dh]`, `W_O [h, dh, d]`, `W_U [d, V]`...),
//! shared by every model of the workspace: the HookedTransformer holds them, the bridge presents
//! views of its HF parameters in this shape, and weight processing works on them.

use tch::Tensor;

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

impl Params {
    /// A new parameter set with `f` applied to every tensor (LayerNorms stay present or absent).
    pub fn map(&self, f: impl Fn(&Tensor) -> Tensor) -> Params {
        let ln = |l: &Option<LayerNormParams>| {
            l.as_ref().map(|l| LayerNormParams {
                w: f(&l.w),
                b: f(&l.b),
            })
        };
        Params {
            W_E: f(&self.W_E),
            W_pos: f(&self.W_pos),
            blocks: self
                .blocks
                .iter()
                .map(|b| BlockParams {
                    ln1: ln(&b.ln1),
                    attn: AttentionParams {
                        W_Q: f(&b.attn.W_Q),
                        W_K: f(&b.attn.W_K),
                        W_V: f(&b.attn.W_V),
                        b_Q: f(&b.attn.b_Q),
                        b_K: f(&b.attn.b_K),
                        b_V: f(&b.attn.b_V),
                        W_O: f(&b.attn.W_O),
                        b_O: f(&b.attn.b_O),
                    },
                    ln2: ln(&b.ln2),
                    mlp: MlpParams {
                        W_in: f(&b.mlp.W_in),
                        b_in: f(&b.mlp.b_in),
                        W_out: f(&b.mlp.W_out),
                        b_out: f(&b.mlp.b_out),
                    },
                })
                .collect(),
            ln_final: ln(&self.ln_final),
            W_U: f(&self.W_U),
            b_U: f(&self.b_U),
        }
    }
}
