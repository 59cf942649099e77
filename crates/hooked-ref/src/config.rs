//! `HookedTransformerConfig`: TransformerLens's model configuration, built from an HF config.

use lens_core::config::{
    Activation, Gpt2Config, GptNeoConfig, GptNeoxConfig, LlamaConfig, LlamaFamily, LongRope,
    NormPlacement, OptConfig, ParallelConfig, ParallelFamily, QkNorm, RopeScaling,
};

/// How a block normalises its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormType {
    /// LayerNorm with learned weight and bias (`LN`).
    LayerNorm,
    /// Centre and scale only; weight and bias folded into the next layer (`LNPre`).
    LayerNormPre,
    /// RMSNorm with a learned weight (`RMS`).
    Rms,
    /// Scale only; the weight folded into the next layer (`RMSPre`).
    RmsPre,
}

impl NormType {
    /// Whether the norm centres its input (LayerNorm) rather than only scaling it (RMSNorm).
    pub fn centres(self) -> bool {
        matches!(self, NormType::LayerNorm | NormType::LayerNormPre)
    }
}

/// TransformerLens's rotary settings (`rotary_dim`, `rotary_base`, `rotary_adjacent_pairs`, and
/// the rope scaling of the checkpoint).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rotary {
    /// How many dimensions of each head rotate (the first `dim`).
    pub dim: i64,
    /// The base `theta` (kept as the checkpoint's float; TransformerLens 3.9.0 truncates a
    /// non-integer Qwen base to an integer).
    pub base: f64,
    /// GPT-J's adjacent pairs instead of the half-split pairs of NeoX and Llama.
    pub adjacent_pairs: bool,
    /// Scaled frequencies (`linear`, `llama3` / NTK-by-parts).
    pub scaling: RopeScaling,
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
    /// Key/value heads when fewer than `n_heads` (grouped-query attention).
    pub n_key_value_heads: Option<i64>,
    /// Rotary attention instead of a learned positional embedding (`positional_embedding_type`).
    pub rotary: Option<Rotary>,
    /// A gated MLP: `act(x W_gate) * (x W_in)`.
    pub gated_mlp: bool,
    /// Norms of queries and keys after `hook_q` / `hook_k` (`use_qk_norm`): RMSNorms per head
    /// (Qwen3, Gemma 3) or over the whole projection (OLMo-2); LayerNorms per head (Phi's
    /// `qk_layernorm`, which TransformerLens 3.9.0 ignores).
    pub qk_norm: QkNorm,
    /// Where the blocks normalise: before the sublayers; also after them
    /// (`use_normalization_before_and_after`: `ln1_post`, `ln2_post`, Gemma 2 and 3); or only
    /// after them, as `ln1` and `ln2` (TransformerLens's post-norm architectures, OLMo-2).
    pub norm_placement: NormPlacement,
    /// The LayerNorms normalise the residual stream after each sublayer's addition, `ln1`
    /// after attention and `ln2` after the MLP (OPT-350m's `do_layer_norm_before: false`; no
    /// TransformerLens architecture): `hook_resid_mid` is the sum before `ln1`,
    /// `hook_resid_post` the output of `ln2`.
    pub norms_on_residual: bool,
    /// The model normalises the final residual stream (`ln_final`); post-LN OPT does not.
    pub final_norm: bool,
    /// The width of a token embedding narrower than the residual stream, projected in and out
    /// (OPT's `word_embed_proj_dim`: `embed.W_project_in`, `hook_project_in`,
    /// `unembed.W_project_out`).
    pub d_embed: Option<i64>,
    /// The divisor of the attention scores when set (`attn_scale`: Gemma 2's and 3's
    /// `sqrt(query_pre_attn_scalar)`); else `sqrt(d_head)` with `use_attn_scale`.
    pub attn_scale: Option<f64>,
    /// Scores soft-capped as `cap * tanh(s / cap)` before the mask (`attn_scores_soft_cap`).
    pub attn_scores_soft_cap: Option<f64>,
    /// Logits soft-capped after `unembed.hook_out` (`output_logits_soft_cap`).
    pub output_logits_soft_cap: Option<f64>,
    /// Phi-3's `longrope` frequencies (short or long by the largest position), which
    /// TransformerLens 3.9.0 ignores.
    pub longrope: Option<LongRope>,
    /// Queries attend to later keys too (Gemma 3's `use_bidirectional_attention`, within the
    /// window on local layers), which TransformerLens 3.9.0 cannot express.
    pub bidirectional: bool,
    /// The rotary embedding of the local (windowed) layers when it differs from `rotary`
    /// (`rotary_base_local`, Gemma 3, whose local frequencies are not scaled).
    pub rotary_local: Option<Rotary>,
    /// Per block, its sliding attention window (`use_local_attn` / `window_size`), or `None`.
    pub windows: Vec<Option<i64>>,
    /// Attention and MLP both read the block's input (`parallel_attn_mlp`: GPT-NeoX's parallel
    /// residual); the block then has no `hook_resid_mid`.
    pub parallel_attn_mlp: bool,
    /// The HF class the model was converted from.
    pub original_architecture: String,
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

    /// Key/value heads (`n_heads` without grouping).
    pub fn n_kv_heads(&self) -> i64 {
        self.n_key_value_heads.unwrap_or(self.n_heads)
    }

    /// The divisor of block `layer`'s attention scores.
    pub fn attn_scale(&self, layer: i64) -> f64 {
        let mut scale = match (self.use_attn_scale, self.attn_scale) {
            (false, _) => 1.0,
            (true, Some(scale)) => scale,
            (true, None) => (self.d_head as f64).sqrt(),
        };
        if self.scale_attn_by_inverse_layer_idx {
            scale *= (layer + 1) as f64;
        }
        scale
    }
}

impl HookedTransformerConfig {
    /// The fields every conversion shares the value of, for `n_layers` blocks of
    /// `original_architecture`: no optional hooks, no grouping, no rotary, norms before the
    /// sublayers, no soft caps; the sizes zero until the conversion sets them.
    fn base(n_layers: i64, original_architecture: &str) -> Self {
        HookedTransformerConfig {
            d_model: 0,
            d_head: 0,
            n_heads: 0,
            d_mlp: 0,
            n_layers,
            n_ctx: 0,
            d_vocab: 0,
            act_fn: Activation::Gelu,
            eps: 1e-5,
            normalization_type: NormType::LayerNorm,
            use_attn_scale: true,
            scale_attn_by_inverse_layer_idx: false,
            default_prepend_bos: true,
            use_attn_result: false,
            use_split_qkv_input: false,
            use_attn_in: false,
            use_hook_mlp_in: false,
            use_hook_tokens: false,
            bos_token_id: 0,
            eos_token_id: 0,
            n_key_value_heads: None,
            rotary: None,
            gated_mlp: false,
            qk_norm: QkNorm::None,
            norm_placement: NormPlacement::Before,
            norms_on_residual: false,
            final_norm: true,
            d_embed: None,
            attn_scale: None,
            attn_scores_soft_cap: None,
            output_logits_soft_cap: None,
            rotary_local: None,
            longrope: None,
            bidirectional: false,
            windows: vec![None; n_layers.max(0) as usize],
            parallel_attn_mlp: false,
            original_architecture: original_architecture.to_owned(),
        }
    }

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
            bos_token_id: hf.bos_token_id.unwrap_or(hf.vocab_size - 1),
            eos_token_id: hf.eos_token_id.unwrap_or(hf.vocab_size - 1),
            ..Self::base(hf.n_layer, "GPT2LMHeadModel")
        }
    }

    /// TransformerLens's configuration of a checkpoint of any architecture this crate converts
    /// (GPT-2, the Llama family, GPT-NeoX); `None` for another.
    pub fn from_hf(hf: &lens_core::HfConfig) -> Option<Self> {
        match hf {
            lens_core::HfConfig::Gpt2(c) => Some(Self::from_gpt2(c)),
            lens_core::HfConfig::Llama(c) => Some(Self::from_llama(c)),
            lens_core::HfConfig::GptNeox(c) => Some(Self::from_gpt_neox(c)),
            lens_core::HfConfig::Parallel(c) => Some(Self::from_parallel(c)),
            lens_core::HfConfig::GptNeo(c) => Some(Self::from_gpt_neo(c)),
            lens_core::HfConfig::Opt(c) => Some(Self::from_opt(c)),
            _ => None,
        }
    }

    /// TransformerLens's Llama-family conversion (Llama, Mistral, Qwen2, Qwen3, Gemma 1-3,
    /// Phi-3, OLMo-2), with HF's numbers where TransformerLens 3.9.0 departs from them: `d_head`
    /// is the checkpoint's `head_dim` (TransformerLens uses `d_model / n_heads` for Llama and
    /// Qwen2), the rotary base keeps its fraction, the checkpoint's linear and llama3 rope
    /// scaling apply, Gemma's activation is the config's (TransformerLens's tables use exact
    /// GELU for Gemma 1), Phi-3 rotates `partial_rotary_factor` of each head (TransformerLens
    /// rotates all of it), and Gemma 2's and 3's scores are divided by
    /// `sqrt(query_pre_attn_scalar)` (TransformerLens's tables: `sqrt(d_head)` but for
    /// gemma-2-27b). TransformerLens builds Gemma and OLMo-2 configurations from tables keyed
    /// by model name; this reads the checkpoint's `config.json`.
    pub fn from_llama(hf: &LlamaConfig) -> Self {
        let grouped = hf.num_key_value_heads != hf.num_attention_heads;
        HookedTransformerConfig {
            d_model: hf.hidden_size,
            d_head: hf.head_dim,
            n_heads: hf.num_attention_heads,
            d_mlp: hf.intermediate_size,
            n_layers: hf.num_hidden_layers,
            n_ctx: hf.max_position_embeddings,
            d_vocab: hf.vocab_size,
            act_fn: hf.hidden_act,
            eps: hf.rms_norm_eps,
            normalization_type: NormType::Rms,
            default_prepend_bos: hf.family.default_prepend_bos(),
            bos_token_id: hf.bos_token_id.unwrap_or(hf.vocab_size - 1),
            eos_token_id: hf
                .eos_token_ids
                .first()
                .copied()
                .unwrap_or(hf.vocab_size - 1),
            n_key_value_heads: grouped.then_some(hf.num_key_value_heads),
            rotary: Some(Rotary {
                dim: hf.rotary_dim,
                base: hf.rope.theta,
                adjacent_pairs: false,
                scaling: hf.rope.scaling,
            }),
            rotary_local: hf.local_rope.map(|rope| Rotary {
                dim: hf.rotary_dim,
                base: rope.theta,
                adjacent_pairs: false,
                scaling: rope.scaling,
            }),
            longrope: hf.longrope.clone(),
            bidirectional: hf.bidirectional,
            gated_mlp: true,
            qk_norm: hf.qk_norm,
            norm_placement: hf.norm_placement,
            attn_scale: matches!(hf.family, LlamaFamily::Gemma2 | LlamaFamily::Gemma3)
                .then(|| hf.query_scale.recip()),
            attn_scores_soft_cap: hf.attn_logit_softcapping,
            output_logits_soft_cap: hf.final_logit_softcapping,
            windows: hf.layer_windows.clone(),
            ..Self::base(hf.num_hidden_layers, hf.family.architecture())
        }
    }

    /// TransformerLens's GPT-Neo conversion: learned positions, unscaled attention scores, the
    /// local layers' windows, with HF's MLP width (TransformerLens 3.9.0 uses `4 * d_model`
    /// whatever `intermediate_size` says).
    pub fn from_gpt_neo(hf: &GptNeoConfig) -> Self {
        HookedTransformerConfig {
            d_model: hf.hidden_size,
            d_head: hf.head_dim(),
            n_heads: hf.num_heads,
            d_mlp: hf.intermediate_size,
            n_layers: hf.num_layers,
            n_ctx: hf.max_position_embeddings,
            d_vocab: hf.vocab_size,
            act_fn: hf.activation_function,
            eps: hf.layer_norm_epsilon,
            normalization_type: NormType::LayerNorm,
            use_attn_scale: false,
            bos_token_id: hf.bos_token_id.unwrap_or(hf.vocab_size - 1),
            eos_token_id: hf.eos_token_id.unwrap_or(hf.vocab_size - 1),
            windows: hf.layer_windows.clone(),
            ..Self::base(hf.num_layers, "GPTNeoForCausalLM")
        }
    }

    /// TransformerLens's OPT conversion: learned positions (the table after its offset of 2),
    /// LayerNorm epsilon 1e-5 (HF's OPT has no other), ReLU. Beyond what TransformerLens 3.9.0
    /// converts (pre-LN, unprojected): OPT-350m's LayerNorms on the residual stream after each
    /// sublayer, its missing final LayerNorm and its projected embeddings.
    pub fn from_opt(hf: &OptConfig) -> Self {
        HookedTransformerConfig {
            d_model: hf.hidden_size,
            d_head: hf.head_dim(),
            n_heads: hf.num_attention_heads,
            d_mlp: hf.ffn_dim,
            n_layers: hf.num_hidden_layers,
            n_ctx: hf.max_position_embeddings,
            d_vocab: hf.vocab_size,
            act_fn: hf.activation_function,
            eps: 1e-5,
            normalization_type: NormType::LayerNorm,
            bos_token_id: hf.bos_token_id.unwrap_or(hf.vocab_size - 1),
            eos_token_id: hf.eos_token_id.unwrap_or(hf.vocab_size - 1),
            norms_on_residual: !hf.do_layer_norm_before,
            final_norm: hf.has_final_layer_norm(),
            d_embed: hf.projects().then_some(hf.word_embed_proj_dim),
            ..Self::base(hf.num_hidden_layers, "OPTForCausalLM")
        }
    }

    /// TransformerLens's GPT-J and Phi conversions: a parallel block whose one LayerNorm is
    /// TransformerLens's `ln1` and `ln2` alike; GPT-J's adjacent rotary pairs, Phi's halves.
    /// With HF's numbers where TransformerLens 3.9.0 departs from them: GPT-J's `n_inner` and
    /// `layer_norm_epsilon` (TransformerLens uses `4 * n_embd` and 1e-5), Phi's rotary width
    /// from its `rope_parameters` truncated as HF does (TransformerLens rounds the top-level
    /// `partial_rotary_factor`), Phi's grouped key/value heads (which TransformerLens's
    /// converter cannot load) and Phi's `qk_layernorm` (which it drops).
    pub fn from_parallel(hf: &ParallelConfig) -> Self {
        let grouped = hf.num_key_value_heads != hf.num_attention_heads;
        HookedTransformerConfig {
            d_model: hf.hidden_size,
            d_head: hf.head_dim,
            n_heads: hf.num_attention_heads,
            d_mlp: hf.intermediate_size,
            n_layers: hf.num_hidden_layers,
            n_ctx: hf.max_position_embeddings,
            d_vocab: hf.vocab_size,
            act_fn: hf.hidden_act,
            eps: hf.layer_norm_eps,
            normalization_type: NormType::LayerNorm,
            default_prepend_bos: hf.family.default_prepend_bos(),
            bos_token_id: hf.bos_token_id.unwrap_or(hf.vocab_size - 1),
            eos_token_id: hf.eos_token_id.unwrap_or(hf.vocab_size - 1),
            n_key_value_heads: grouped.then_some(hf.num_key_value_heads),
            rotary: Some(Rotary {
                dim: hf.rotary_dim,
                base: hf.rope.theta,
                adjacent_pairs: hf.family == ParallelFamily::GptJ,
                scaling: hf.rope.scaling,
            }),
            parallel_attn_mlp: true,
            qk_norm: if hf.qk_layernorm {
                QkNorm::PerHead
            } else {
                QkNorm::None
            },
            ..Self::base(hf.num_hidden_layers, hf.family.architecture())
        }
    }

    /// TransformerLens's GPT-NeoX conversion (Pythia), with HF's numbers where TransformerLens
    /// 3.9.0 departs from them: the rotary base is the checkpoint's (TransformerLens never reads
    /// `rope_theta` / `rotary_emb_base` for this family and uses 10000), the rotated width is
    /// HF's `int(d_head * partial_rotary_factor)` rounded up to pairs (TransformerLens rounds
    /// to the nearest integer, and fails on an odd one), and linear or llama3 rope scaling
    /// applies (TransformerLens drops it).
    pub fn from_gpt_neox(hf: &GptNeoxConfig) -> Self {
        HookedTransformerConfig {
            d_model: hf.hidden_size,
            d_head: hf.head_dim(),
            n_heads: hf.num_attention_heads,
            d_mlp: hf.intermediate_size,
            n_layers: hf.num_hidden_layers,
            n_ctx: hf.max_position_embeddings,
            d_vocab: hf.vocab_size,
            act_fn: hf.hidden_act,
            eps: hf.layer_norm_eps,
            normalization_type: NormType::LayerNorm,
            default_prepend_bos: false,
            bos_token_id: hf.bos_token_id.unwrap_or(hf.vocab_size - 1),
            eos_token_id: hf.eos_token_id.unwrap_or(hf.vocab_size - 1),
            rotary: Some(Rotary {
                dim: hf.rotary_dim(),
                base: hf.rope.theta,
                adjacent_pairs: false,
                scaling: hf.rope.scaling,
            }),
            parallel_attn_mlp: hf.use_parallel_residual,
            ..Self::base(hf.num_hidden_layers, "GPTNeoXForCausalLM")
        }
    }
}
