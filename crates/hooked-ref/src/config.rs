//! `HookedTransformerConfig`: TransformerLens's model configuration, built from an HF config.

use lens_core::config::{Activation, Gpt2Config};

/// How a block normalises its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormType {
    /// LayerNorm with learned weight and bias (`LN`).
    LayerNorm,
    /// Centre and scale only; weight and bias folded into the next layer (`LNPre`).
    LayerNormPre,
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
    pub act_fn: Activation,
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

impl HookedTransformerConfig {
    /// TransformerLens's GPT-2 config conversion (tl_spec.md section 5), except that `n_inner`
    /// is honoured (TransformerLens 3.9.0 ignores it and always uses 4 * n_embd).
    pub fn from_gpt2(hf: &Gpt2Config) -> Self {
        HookedTransformerConfig {
            d_model: hf.n_embd,
            d_head: hf.d_head(),
            n_heads: hf.n_head,
            d_mlp: hf.d_mlp(),
            n_layers: hf.n_layer,
            n_ctx: hf.n_ctx,
            d_vocab: hf.vocab_size,
            act_fn: hf.activation_function,
            eps: hf.layer_norm_epsilon,
            normalization_type: NormType::LayerNorm,
            use_attn_scale: hf.scale_attn_weights,
            scale_attn_by_inverse_layer_idx: hf.scale_attn_by_inverse_layer_idx,
            default_prepend_bos: true,
            use_attn_result: false,
            use_split_qkv_input: false,
            use_attn_in: false,
            use_hook_mlp_in: false,
            use_hook_tokens: false,
            bos_token_id: hf.bos_token_id.unwrap_or(hf.vocab_size - 1),
            eos_token_id: hf.eos_token_id.unwrap_or(hf.vocab_size - 1),
        }
    }
}
