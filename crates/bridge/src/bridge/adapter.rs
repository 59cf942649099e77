//! Architecture adapters: canonical component names (`embed`, `blocks.0.attn.q`, ...) mapped to
//! HuggingFace module paths, and TransformerLens-layout views (`W_Q [h, d, dh]`, ...) of the
//! live HuggingFace parameters.

use lens_core::model::{ModelDims, ModelError, ModelResult};
use lens_core::weight_map::{self, Source, WeightMap};
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

/// The GPT-2 adapter (`GPT2LMHeadModel`): its components, and TransformerLens's weights as
/// views of the live parameters through GPT-2's weight table (`lens_core::weight_map::gpt2`,
/// the table the HookedTransformer converts with).
#[derive(Clone, Debug)]
pub struct Gpt2Adapter {
    n_layers: usize,
    weights: WeightMap,
}

impl Gpt2Adapter {
    /// The adapter for a GPT-2 config.
    pub fn new(config: &Gpt2Config) -> Self {
        let dims = ModelDims {
            n_layers: config.n_layer,
            n_heads: config.n_head,
            d_model: config.n_embd,
            d_head: config.d_head(),
            d_mlp: config.d_mlp(),
            d_vocab: config.vocab_size,
            n_ctx: config.n_ctx,
        };
        Gpt2Adapter {
            n_layers: config.n_layer as usize,
            // `W_U` always reads `lm_head.weight`, which is `wte` while the embeddings are tied
            // (`Gpt2Params::get`) and its own parameter once compatibility mode unties them.
            weights: weight_map::gpt2(&dims, false),
        }
    }

    /// GPT-2's weight table.
    pub(crate) fn weight_map(&self) -> &WeightMap {
        &self.weights
    }

    /// The HuggingFace parameter behind a TransformerLens weight name, and its view.
    fn resolve(&self, name: &str) -> ModelResult<&Source> {
        self.weights.get(name).ok_or_else(|| {
            ModelError::InvalidInput(format!(
                "'{name}' is not a TransformerLens weight of this GPT-2 (e.g. embed.W_E, \
                 blocks.0.attn.W_Q, unembed.W_U; {} blocks)",
                self.n_layers
            ))
        })
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
        self.weights.names().map(str::to_owned).collect()
    }

    fn tl_weight(&self, p: &Gpt2Params, name: &str) -> ModelResult<Tensor> {
        let source = self.resolve(name)?;
        Ok(source.view.apply(&p.get(&source.hf)?))
    }

    fn tl_weight_grad(&self, p: &Gpt2Params, name: &str) -> ModelResult<Option<Tensor>> {
        let source = self.resolve(name)?;
        let grad = p.get(&source.hf)?.grad();
        Ok(grad.defined().then(|| source.view.apply(&grad)))
    }
}
