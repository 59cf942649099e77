//! Parameters in TransformerLens's layout (`W_Q [h, d, dh]`, `W_O [h, dh, d]`, `W_U [d, V]`...),
//! shared by every model of the workspace: the HookedTransformer holds them, the bridge presents
//! views of its HF parameters in this shape, and weight processing works on them.
//!
//! What an architecture lacks is `None`: no positional embedding under rotary attention, no
//! norm bias for RMSNorm, no gate for a plain MLP, no q/k norms where the model has none, no
//! embedding projections outside OPT-350m.

use std::collections::BTreeMap;

use tch::Tensor;

/// A LayerNorm's or RMSNorm's weight `[d]` and, for LayerNorm, bias `[d]` (the whole norm is
/// absent once fold_ln turned it into LNPre / RMSPre).
#[derive(Debug)]
pub struct LayerNormParams {
    /// Scale `w`.
    pub w: Tensor,
    /// Bias `b`; `None` for RMSNorm.
    pub b: Option<Tensor>,
}

/// One block's attention: `W_Q [h, d, dh]`, `W_K/W_V [h_kv, d, dh]` (`h_kv < h` with grouped
/// keys and values), `b_Q [h, dh]`, `b_K/b_V [h_kv, dh]`, `W_O [h, dh, d]`, `b_O [d]`, and the
/// q/k norms of Qwen3, Gemma 3 and OLMo-2 (RMSNorm weights) and Phi (LayerNorm weights and
/// biases).
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
    /// `attn.q_norm.w` (and, for a LayerNorm, `.b`), `[dh]` per head or `[h * dh]` over the
    /// whole projection.
    pub q_norm: Option<LayerNormParams>,
    /// `attn.k_norm.w` (`.b`), `[dh]` or `[h_kv * dh]`.
    pub k_norm: Option<LayerNormParams>,
}

impl AttentionParams {
    /// Whether keys and values have fewer heads than queries.
    pub fn grouped(&self) -> bool {
        self.W_K.size()[0] != self.W_Q.size()[0]
    }
}

/// One block's MLP: `W_in [d, m]`, `b_in [m]`, `W_out [m, d]`, `b_out [d]`; a gated MLP also
/// has `W_gate [d, m]` (and, where the checkpoint biases its gate, `b_gate [m]`).
#[derive(Debug)]
#[allow(non_snake_case)]
pub struct MlpParams {
    pub W_in: Tensor,
    pub b_in: Tensor,
    pub W_out: Tensor,
    pub b_out: Tensor,
    /// The gate projection of a gated MLP.
    pub W_gate: Option<Tensor>,
    /// The gate's bias (Llama's `mlp_bias`; TransformerLens has none).
    pub b_gate: Option<Tensor>,
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
    /// Gemma 2's and 3's norm of the attention output (never folded: nothing reads it but the
    /// residual stream).
    pub ln1_post: Option<LayerNormParams>,
    /// Gemma 2's and 3's norm of the MLP output.
    pub ln2_post: Option<LayerNormParams>,
}

/// All parameters of a HookedTransformer.
#[derive(Debug)]
#[allow(non_snake_case)]
pub struct Params {
    /// Token embedding `[d_vocab, d_model]` (`[d_vocab, d_embed]` when projected).
    pub W_E: Tensor,
    /// The projection of a narrower token embedding into the residual stream, `[d_embed,
    /// d_model]` (OPT's `project_in`, with `word_embed_proj_dim`); `embed.W_project_in`.
    pub W_project_in: Option<Tensor>,
    /// Positional embedding `[n_ctx, d_model]`; `None` for rotary attention.
    pub W_pos: Option<Tensor>,
    /// The blocks.
    pub blocks: Vec<BlockParams>,
    /// Final norm (`None` once folded).
    pub ln_final: Option<LayerNormParams>,
    /// The projection of the final residual stream before the unembedding, `[d_model,
    /// d_embed]` (OPT's `project_out`); `unembed.W_project_out`.
    pub W_project_out: Option<Tensor>,
    /// Unembedding `[d_model, d_vocab]` (`[d_embed, d_vocab]` when projected).
    pub W_U: Tensor,
    /// Unembedding bias `[d_vocab]`.
    pub b_U: Tensor,
}

fn push_norm<'a>(out: &mut Vec<(String, &'a Tensor)>, prefix: &str, ln: &'a LayerNormParams) {
    out.push((format!("{prefix}.w"), &ln.w));
    if let Some(b) = &ln.b {
        out.push((format!("{prefix}.b"), b));
    }
}

impl Params {
    /// Every parameter with its TransformerLens state-dict name, in a stable order (grouped
    /// keys and values under TransformerLens's `_W_K`, `_W_V`, `_b_K`, `_b_V`).
    pub fn named(&self) -> Vec<(String, &Tensor)> {
        let mut out: Vec<(String, &Tensor)> = vec![("embed.W_E".into(), &self.W_E)];
        if let Some(w) = &self.W_project_in {
            out.push(("embed.W_project_in".into(), w));
        }
        if let Some(w_pos) = &self.W_pos {
            out.push(("pos_embed.W_pos".into(), w_pos));
        }
        for (l, block) in self.blocks.iter().enumerate() {
            if let Some(ln) = &block.ln1 {
                push_norm(&mut out, &format!("blocks.{l}.ln1"), ln);
            }
            let a = &block.attn;
            let kv = if a.grouped() { "_" } else { "" };
            for (name, t) in [
                ("W_Q".to_string(), &a.W_Q),
                (format!("{kv}W_K"), &a.W_K),
                (format!("{kv}W_V"), &a.W_V),
                ("W_O".to_string(), &a.W_O),
                ("b_Q".to_string(), &a.b_Q),
                (format!("{kv}b_K"), &a.b_K),
                (format!("{kv}b_V"), &a.b_V),
                ("b_O".to_string(), &a.b_O),
            ] {
                out.push((format!("blocks.{l}.attn.{name}"), t));
            }
            for (name, norm) in [("q_norm", &a.q_norm), ("k_norm", &a.k_norm)] {
                if let Some(norm) = norm {
                    push_norm(&mut out, &format!("blocks.{l}.attn.{name}"), norm);
                }
            }
            if let Some(ln) = &block.ln1_post {
                push_norm(&mut out, &format!("blocks.{l}.ln1_post"), ln);
            }
            if let Some(ln) = &block.ln2 {
                push_norm(&mut out, &format!("blocks.{l}.ln2"), ln);
            }
            let m = &block.mlp;
            if let Some(w_gate) = &m.W_gate {
                out.push((format!("blocks.{l}.mlp.W_gate"), w_gate));
            }
            if let Some(b_gate) = &m.b_gate {
                out.push((format!("blocks.{l}.mlp.b_gate"), b_gate));
            }
            for (name, t) in [
                ("W_in", &m.W_in),
                ("b_in", &m.b_in),
                ("W_out", &m.W_out),
                ("b_out", &m.b_out),
            ] {
                out.push((format!("blocks.{l}.mlp.{name}"), t));
            }
            if let Some(ln) = &block.ln2_post {
                push_norm(&mut out, &format!("blocks.{l}.ln2_post"), ln);
            }
        }
        if let Some(ln) = &self.ln_final {
            push_norm(&mut out, "ln_final", ln);
        }
        if let Some(w) = &self.W_project_out {
            out.push(("unembed.W_project_out".into(), w));
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
    /// A new parameter set with `f` applied to every tensor (what is absent stays absent).
    pub fn map(&self, f: impl Fn(&Tensor) -> Tensor) -> Params {
        let opt = |t: &Option<Tensor>| t.as_ref().map(&f);
        let ln = |l: &Option<LayerNormParams>| {
            l.as_ref().map(|l| LayerNormParams {
                w: f(&l.w),
                b: opt(&l.b),
            })
        };
        Params {
            W_E: f(&self.W_E),
            W_project_in: opt(&self.W_project_in),
            W_pos: opt(&self.W_pos),
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
                        q_norm: ln(&b.attn.q_norm),
                        k_norm: ln(&b.attn.k_norm),
                    },
                    ln2: ln(&b.ln2),
                    mlp: MlpParams {
                        W_in: f(&b.mlp.W_in),
                        b_in: f(&b.mlp.b_in),
                        W_out: f(&b.mlp.W_out),
                        b_out: f(&b.mlp.b_out),
                        W_gate: opt(&b.mlp.W_gate),
                        b_gate: opt(&b.mlp.b_gate),
                    },
                    ln1_post: ln(&b.ln1_post),
                    ln2_post: ln(&b.ln2_post),
                })
                .collect(),
            ln_final: ln(&self.ln_final),
            W_project_out: opt(&self.W_project_out),
            W_U: f(&self.W_U),
            b_U: f(&self.b_U),
        }
    }
}

type Named = BTreeMap<String, Tensor>;

fn need(tensors: &mut Named, name: &str) -> Result<Tensor, String> {
    tensors
        .remove(name)
        .ok_or_else(|| format!("no TransformerLens weight '{name}'"))
}

/// TransformerLens's grouped name (`_W_K`) or the plain one (`W_K`).
fn either(tensors: &mut Named, grouped: &str, plain: &str) -> Result<Tensor, String> {
    match tensors.remove(grouped) {
        Some(t) => Ok(t),
        None => need(tensors, plain),
    }
}

fn norm(tensors: &mut Named, prefix: &str) -> Option<LayerNormParams> {
    let w = tensors.remove(&format!("{prefix}.w"))?;
    Some(LayerNormParams {
        w,
        b: tensors.remove(&format!("{prefix}.b")),
    })
}

impl Params {
    /// The parameters named as [`Params::named`] names them (`blocks.0.attn.W_Q`, grouped keys
    /// and values under `_W_K` or `W_K`, ...), taken out of `tensors`. What an architecture
    /// lacks is absent from `tensors` and `None` here; a weight every architecture has (`W_Q`,
    /// `b_O`, `W_U`, ...) missing is an error naming it.
    pub fn from_named(tensors: &mut Named) -> Result<Params, String> {
        let w_e = need(tensors, "embed.W_E")?;
        let n_layers = (0..)
            .take_while(|l| tensors.contains_key(&format!("blocks.{l}.attn.W_Q")))
            .count();
        let mut blocks = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let p = |s: &str| format!("blocks.{l}.{s}");
            let attn = AttentionParams {
                W_Q: need(tensors, &p("attn.W_Q"))?,
                W_K: either(tensors, &p("attn._W_K"), &p("attn.W_K"))?,
                W_V: either(tensors, &p("attn._W_V"), &p("attn.W_V"))?,
                b_Q: need(tensors, &p("attn.b_Q"))?,
                b_K: either(tensors, &p("attn._b_K"), &p("attn.b_K"))?,
                b_V: either(tensors, &p("attn._b_V"), &p("attn.b_V"))?,
                W_O: need(tensors, &p("attn.W_O"))?,
                b_O: need(tensors, &p("attn.b_O"))?,
                q_norm: norm(tensors, &p("attn.q_norm")),
                k_norm: norm(tensors, &p("attn.k_norm")),
            };
            let mlp = MlpParams {
                W_in: need(tensors, &p("mlp.W_in"))?,
                b_in: need(tensors, &p("mlp.b_in"))?,
                W_out: need(tensors, &p("mlp.W_out"))?,
                b_out: need(tensors, &p("mlp.b_out"))?,
                W_gate: tensors.remove(&p("mlp.W_gate")),
                b_gate: tensors.remove(&p("mlp.b_gate")),
            };
            blocks.push(BlockParams {
                ln1: norm(tensors, &p("ln1")),
                attn,
                ln2: norm(tensors, &p("ln2")),
                mlp,
                ln1_post: norm(tensors, &p("ln1_post")),
                ln2_post: norm(tensors, &p("ln2_post")),
            });
        }
        Ok(Params {
            W_E: w_e,
            W_project_in: tensors.remove("embed.W_project_in"),
            W_pos: tensors.remove("pos_embed.W_pos"),
            blocks,
            ln_final: norm(tensors, "ln_final"),
            W_project_out: tensors.remove("unembed.W_project_out"),
            W_U: need(tensors, "unembed.W_U")?,
            b_U: need(tensors, "unembed.b_U")?,
        })
    }
}
