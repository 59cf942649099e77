//! `HookedTransformerConfig`: TransformerLens's model configuration, built from an HF config.

/// How a block normalises its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormType {
    /// LayerNorm with learned weight and bias (`LN`).
    LayerNorm,
    /// Centre and scale only; weight and bias folded into the next layer (`LNPre`).
    LayerNormPre,
}

/// Activation functions of the MLP (the values HF's `activation_function` takes for GPT-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActFn {
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, GPT-2's default.
    GeluNew,
    /// Exact (erf) GELU.
    Gelu,
    /// `0.5 x (1 + tanh(x * 0.7978845608 * (1 + 0.044715 x^2)))`.
    GeluFast,
    /// PyTorch's tanh-approximated GELU.
    GeluPytorchTanh,
    /// `x * sigmoid(1.702 x)`.
    QuickGelu,
    /// max(0, x).
    Relu,
    /// `x * sigmoid(x)`.
    Silu,
    /// tanh.
    Tanh,
}

impl ActFn {
    /// Parses HF's `activation_function` string.
    pub fn from_hf(name: &str) -> Option<Self> {
        Some(match name {
            "gelu_new" => ActFn::GeluNew,
            "gelu" => ActFn::Gelu,
            "gelu_fast" => ActFn::GeluFast,
            "gelu_pytorch_tanh" => ActFn::GeluPytorchTanh,
            "quick_gelu" => ActFn::QuickGelu,
            "relu" => ActFn::Relu,
            "silu" | "swish" => ActFn::Silu,
            "tanh" => ActFn::Tanh,
            _ => return None,
        })
    }
}

/// TransformerLens's `HookedTransformerConfig`, restricted to what GPT-2-style models use.
#[derive(Clone, Debug, PartialEq)]
pub struct HookedTransformerConfig {
    /// Residual stream width.
    pub d_model: i64,
    /// Width of one attention head.
    pub d_head: i64,
    /// Attention heads per block.
    pub n_heads: i64,
    /// MLP hidden width.
    pub d_mlp: i64,
    /// Number of blocks.
    pub n_layers: i64,
    /// Context length.
    pub n_ctx: i64,
    /// Vocabulary size.
    pub d_vocab: i64,
    /// MLP activation.
    pub act_fn: ActFn,
    /// LayerNorm epsilon.
    pub eps: f64,
    /// LN before weight processing, LNPre after fold_ln.
    pub normalization_type: NormType,
    /// Divide attention scores by sqrt(d_head).
    pub use_attn_scale: bool,
    /// Also divide attention scores of block `l` by `l + 1`.
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Prepend BOS when tokenizing text.
    pub default_prepend_bos: bool,
    /// Materialise and hook each head's output (`attn.hook_result`).
    pub use_attn_result: bool,
    /// Hook separate per-head q/k/v inputs (`hook_q_input`, ...).
    pub use_split_qkv_input: bool,
    /// Hook one per-head attention input (`hook_attn_in`).
    pub use_attn_in: bool,
    /// Hook the MLP input (`hook_mlp_in`).
    pub use_hook_mlp_in: bool,
    /// Create and hook `hook_tokens`.
    pub use_hook_tokens: bool,
    /// Beginning-of-sequence token.
    pub bos_token_id: i64,
    /// End-of-sequence token.
    pub eos_token_id: i64,
}

impl HookedTransformerConfig {
    /// The options that gate optional hook points, with their state.
    pub fn hook_flags(&self) -> [(&'static str, bool); 4] {
        [
            ("use_attn_result", self.use_attn_result),
            ("use_split_qkv_input", self.use_split_qkv_input),
            ("use_attn_in", self.use_attn_in),
            ("use_hook_mlp_in", self.use_hook_mlp_in),
        ]
    }

    /// The divisor of block `layer`'s attention scores.
    pub fn attn_scale(&self, layer: i64) -> f64 {
        let mut scale = if self.use_attn_scale {
            (self.d_head as f64).sqrt()
        } else {
            1.0
        };
        if self.scale_attn_by_inverse_layer_idx {
            scale *= (layer + 1) as f64;
        }
        scale
    }
}
