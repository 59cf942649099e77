//! Architecture adapters: canonical component names (`embed`, `blocks.0.attn.q`, ...) mapped to
//! HuggingFace module paths, and TransformerLens-layout views (`W_Q [h, d, dh]`, ...) of the
//! live HuggingFace parameters.

use lens_core::model::{ModelError, ModelResult};
use lens_core::Gpt2Config;
use tch::Tensor;

use crate::hf::Gpt2Params;

/// What a component is (TransformerLens's generalized components).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComponentKind {
    /// Token embedding.
    Embedding,
    /// Learned positional embedding.
    PosEmbedding,
    /// A transformer block.
    Block,
    /// A LayerNorm.
    Normalization,
    /// Attention with a fused q/k/v projection.
    JointQkvAttention,
    /// A linear map (or a slice of one).
    Linear,
    /// The MLP.
    Mlp,
    /// The unembedding.
    Unembedding,
}

/// One component: its canonical name, the HuggingFace module it stands for, and its kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Component {
    /// Canonical (TransformerLens bridge) name, e.g. `blocks.0.attn.q`.
    pub name: String,
    /// HuggingFace module path, e.g. `transformer.h.0.attn.c_attn` (q is its first third).
    pub hf_path: String,
    /// What it is.
    pub kind: ComponentKind,
}

/// Maps an architecture's HuggingFace modules to canonical components and its parameters to
/// TransformerLens's layout.
pub trait ArchitectureAdapter {
    /// The parameters of the HuggingFace model this adapter reads.
    type Params;

    /// The HuggingFace class, e.g. `GPT2LMHeadModel`.
    fn architecture(&self) -> &'static str;

    /// Every component, in module order.
    fn components(&self) -> Vec<Component>;

    /// The names [`ArchitectureAdapter::tl_weight`] accepts, in TransformerLens's state-dict
    /// order.
    fn tl_weight_names(&self) -> Vec<String>;

    /// A TransformerLens-layout view of a live parameter: writing to it (under
    /// `tch::no_grad`) writes the HuggingFace parameter.
    fn tl_weight(&self, params: &Self::Params, name: &str) -> ModelResult<Tensor>;

    /// The gradient accumulated on a weight, in TransformerLens's layout (`None` before a
    /// backward pass reached it).
    fn tl_weight_grad(&self, params: &Self::Params, name: &str) -> ModelResult<Option<Tensor>>;
}

/// How a TransformerLens weight is laid out on its HuggingFace parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum View {
    /// The parameter itself.
    Same,
    /// The first `n` rows (`W_pos` is `wpe[:n_ctx]`).
    Rows(i64),
    /// The transpose (`W_U` is `lm_head.weight.T`).
    Transpose,
    /// Third `i` of `c_attn.weight` `[d, 3d]` as `[h, d, dh]`.
    QkvWeight(i64),
    /// Third `i` of `c_attn.bias` `[3d]` as `[h, dh]`.
    QkvBias(i64),
    /// `c_proj.weight` `[d, d]` as `[h, dh, d]`.
    HeadsIn,
}

/// The GPT-2 adapter (`GPT2LMHeadModel`).
#[derive(Clone, Debug)]
pub struct Gpt2Adapter {
    n_layers: usize,
    n_heads: i64,
    d_model: i64,
    n_ctx: i64,
}

/// The per-block weights, in TransformerLens's state-dict order.
const BLOCK_WEIGHTS: [&str; 16] = [
    "ln1.w",
    "ln1.b",
    "attn.W_Q",
    "attn.W_K",
    "attn.W_V",
    "attn.W_O",
    "attn.b_Q",
    "attn.b_K",
    "attn.b_V",
    "attn.b_O",
    "ln2.w",
    "ln2.b",
    "mlp.W_in",
    "mlp.b_in",
    "mlp.W_out",
    "mlp.b_out",
];

impl Gpt2Adapter {
    /// The adapter for a GPT-2 config.
    pub fn new(config: &Gpt2Config) -> Self {
        Gpt2Adapter {
            n_layers: config.n_layer as usize,
            n_heads: config.n_head,
            d_model: config.n_embd,
            n_ctx: config.n_ctx,
        }
    }

    /// The HuggingFace parameter behind a TransformerLens weight name, and its view.
    fn resolve(&self, name: &str) -> ModelResult<(String, View)> {
        let global = match name {
            "embed.W_E" => Some(("transformer.wte.weight", View::Same)),
            "pos_embed.W_pos" => Some(("transformer.wpe.weight", View::Rows(self.n_ctx))),
            "ln_final.w" => Some(("transformer.ln_f.weight", View::Same)),
            "ln_final.b" => Some(("transformer.ln_f.bias", View::Same)),
            "unembed.W_U" => Some(("lm_head.weight", View::Transpose)),
            "unembed.b_U" => Some(("lm_head.bias", View::Same)),
            _ => None,
        };
        if let Some((hf, view)) = global {
            return Ok((hf.to_string(), view));
        }
        let rest = name
            .strip_prefix("blocks.")
            .ok_or_else(|| self.unknown(name))?;
        let (layer, param) = rest.split_once('.').ok_or_else(|| self.unknown(name))?;
        let layer: usize = layer.parse().map_err(|_| self.unknown(name))?;
        if layer >= self.n_layers {
            return Err(self.unknown(name));
        }
        let (hf, view) = match param {
            "ln1.w" => ("ln_1.weight", View::Same),
            "ln1.b" => ("ln_1.bias", View::Same),
            "attn.W_Q" => ("attn.c_attn.weight", View::QkvWeight(0)),
            "attn.W_K" => ("attn.c_attn.weight", View::QkvWeight(1)),
            "attn.W_V" => ("attn.c_attn.weight", View::QkvWeight(2)),
            "attn.W_O" => ("attn.c_proj.weight", View::HeadsIn),
            "attn.b_Q" => ("attn.c_attn.bias", View::QkvBias(0)),
            "attn.b_K" => ("attn.c_attn.bias", View::QkvBias(1)),
            "attn.b_V" => ("attn.c_attn.bias", View::QkvBias(2)),
            "attn.b_O" => ("attn.c_proj.bias", View::Same),
            "ln2.w" => ("ln_2.weight", View::Same),
            "ln2.b" => ("ln_2.bias", View::Same),
            "mlp.W_in" => ("mlp.c_fc.weight", View::Same),
            "mlp.b_in" => ("mlp.c_fc.bias", View::Same),
            "mlp.W_out" => ("mlp.c_proj.weight", View::Same),
            "mlp.b_out" => ("mlp.c_proj.bias", View::Same),
            _ => return Err(self.unknown(name)),
        };
        Ok((format!("transformer.h.{layer}.{hf}"), view))
    }

    /// Applies `view` to a HuggingFace parameter (or its gradient).
    fn view(&self, t: &Tensor, view: View) -> Tensor {
        let (d, h) = (self.d_model, self.n_heads);
        let dh = d / h;
        match view {
            View::Same => t.shallow_clone(),
            View::Rows(n) => t.narrow(0, 0, n.min(t.size()[0])),
            View::Transpose => t.transpose(0, 1),
            View::QkvWeight(i) => t.narrow(1, i * d, d).view([d, h, dh]).permute([1, 0, 2]),
            View::QkvBias(i) => t.narrow(0, i * d, d).view([h, dh]),
            View::HeadsIn => t.view([h, dh, d]),
        }
    }

    fn unknown(&self, name: &str) -> ModelError {
        ModelError::InvalidInput(format!(
            "'{name}' is not a TransformerLens weight of this GPT-2 (e.g. embed.W_E, \
             blocks.0.attn.W_Q, unembed.W_U; {} blocks)",
            self.n_layers
        ))
    }
}

impl ArchitectureAdapter for Gpt2Adapter {
    type Params = Gpt2Params;

    fn architecture(&self) -> &'static str {
        "GPT2LMHeadModel"
    }

    fn components(&self) -> Vec<Component> {
        use ComponentKind as K;
        let c = |name: String, hf_path: String, kind| Component {
            name,
            hf_path,
            kind,
        };
        let mut out = vec![
            c("embed".into(), "transformer.wte".into(), K::Embedding),
            c(
                "pos_embed".into(),
                "transformer.wpe".into(),
                K::PosEmbedding,
            ),
        ];
        for l in 0..self.n_layers {
            let (b, h) = (format!("blocks.{l}"), format!("transformer.h.{l}"));
            out.extend([
                c(b.clone(), h.clone(), K::Block),
                c(format!("{b}.ln1"), format!("{h}.ln_1"), K::Normalization),
                c(
                    format!("{b}.attn"),
                    format!("{h}.attn"),
                    K::JointQkvAttention,
                ),
                c(format!("{b}.attn.q"), format!("{h}.attn.c_attn"), K::Linear),
                c(format!("{b}.attn.k"), format!("{h}.attn.c_attn"), K::Linear),
                c(format!("{b}.attn.v"), format!("{h}.attn.c_attn"), K::Linear),
                c(
                    format!("{b}.attn.qkv"),
                    format!("{h}.attn.c_attn"),
                    K::Linear,
                ),
                c(format!("{b}.attn.o"), format!("{h}.attn.c_proj"), K::Linear),
                c(format!("{b}.ln2"), format!("{h}.ln_2"), K::Normalization),
                c(format!("{b}.mlp"), format!("{h}.mlp"), K::Mlp),
                c(format!("{b}.mlp.in"), format!("{h}.mlp.c_fc"), K::Linear),
                c(format!("{b}.mlp.out"), format!("{h}.mlp.c_proj"), K::Linear),
            ]);
        }
        out.extend([
            c(
                "ln_final".into(),
                "transformer.ln_f".into(),
                K::Normalization,
            ),
            c("unembed".into(), "lm_head".into(), K::Unembedding),
        ]);
        out
    }

    fn tl_weight_names(&self) -> Vec<String> {
        let mut out = vec!["embed.W_E".to_string(), "pos_embed.W_pos".to_string()];
        for l in 0..self.n_layers {
            out.extend(BLOCK_WEIGHTS.iter().map(|n| format!("blocks.{l}.{n}")));
        }
        out.extend(["ln_final.w", "ln_final.b", "unembed.W_U", "unembed.b_U"].map(str::to_string));
        out
    }

    fn tl_weight(&self, p: &Gpt2Params, name: &str) -> ModelResult<Tensor> {
        let (hf_name, view) = self.resolve(name)?;
        Ok(self.view(&p.get(&hf_name)?, view))
    }

    fn tl_weight_grad(&self, p: &Gpt2Params, name: &str) -> ModelResult<Option<Tensor>> {
        let (hf_name, view) = self.resolve(name)?;
        let grad = p.get(&hf_name)?.grad();
        Ok(grad.defined().then(|| self.view(&grad, view)))
    }
}
