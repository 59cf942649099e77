//! Taps: how one implementation of the HuggingFace forward pass serves both the raw HF model
//! (nothing recorded, HF's fused kernels) and the TransformerBridge (every activation passed
//! through its hook point).
//!
//! The forward pass in [`crate::hf::gpt2`] calls [`Tap::at`] at every [`Site`]; the raw model's
//! [`NoTap`] returns the activation untouched (it inlines to nothing), the bridge's tap runs the
//! site's hook point.

pub use hookpoint::Passed;
use lens_core::model::ModelResult;
use tch::Tensor;

/// A place in a LayerNorm where an activation is exposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LnSite {
    /// The input (`hook_in`).
    In,
    /// `sqrt(mean(centred^2) + eps)`, `[.., 1]` (`hook_scale`).
    Scale,
    /// `centred / scale` (`hook_normalized`).
    Normalized,
    /// The output, `normalized * w + b` (`hook_out`).
    Out,
}

/// The input or output of a linear map (a `Conv1D` or one of its slices).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinSite {
    /// The input (`hook_in`).
    In,
    /// The output (`hook_out`).
    Out,
}

/// A place inside one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockSite {
    /// The block's input, the residual stream before it (`blocks.i.hook_in` = `hook_resid_pre`).
    In,
    /// The block's output (`blocks.i.hook_out` = `hook_resid_post`).
    Out,
    /// The residual stream after attention (`blocks.i.hook_resid_mid`).
    ResidMid,
    /// A copy of the residual before ln2, with `use_hook_mlp_in` (`blocks.i.hook_mlp_in`).
    MlpIn,
    /// The first LayerNorm.
    Ln1(LnSite),
    /// The second LayerNorm.
    Ln2(LnSite),
    /// Gemma 2's and 3's norm of the attention output (`ln1_post`, HF's
    /// `post_attention_layernorm`).
    Ln1Post(LnSite),
    /// Gemma 2's and 3's norm of the MLP output (`ln2_post`, `post_feedforward_layernorm`).
    Ln2Post(LnSite),
    /// The attention's input, ln1's output (`attn.hook_in`).
    AttnIn,
    /// The attention's output (`attn.hook_out` = `hook_attn_out`).
    AttnOut,
    /// Scores before softmax, `[b, h, q, k]`, masked entries `-inf` (`attn.hook_attn_scores`).
    AttnScores,
    /// Attention pattern, `[b, h, q, k]` (`attn.hook_pattern`).
    Pattern,
    /// The attention output before `hook_out` (`attn.hook_hidden_states`).
    HiddenStates,
    /// Per-head outputs `[b, p, h, d]`, with `use_attn_result` (`attn.hook_result`).
    Result,
    /// Per-head copy of the residual shared by q, k and v, with `use_attn_in`
    /// (`attn.hook_attn_in`).
    AttnInput,
    /// Per-head copy of the residual for queries, with `use_split_qkv_input`.
    QInput,
    /// Per-head copy of the residual for keys, with `use_split_qkv_input`.
    KInput,
    /// Per-head copy of the residual for values, with `use_split_qkv_input`.
    VInput,
    /// The fused projection `c_attn` (`attn.qkv.hook_in` / `hook_out`).
    Qkv(LinSite),
    /// The query slice of `c_attn` (`attn.q.hook_*`; `hook_out` = `attn.hook_q`, `[b, p, h, dh]`).
    Q(LinSite),
    /// The key slice of `c_attn` (`attn.k.hook_*`; `hook_out` = `attn.hook_k`).
    K(LinSite),
    /// The value slice of `c_attn` (`attn.v.hook_*`; `hook_out` = `attn.hook_v`).
    V(LinSite),
    /// The output projection `c_proj` (`attn.o.hook_*`; `hook_in` = `attn.hook_z`, `[b, p, h, dh]`).
    O(LinSite),
    /// The MLP's input (`mlp.hook_in`).
    MlpCompIn,
    /// The MLP's output (`mlp.hook_out` = `hook_mlp_out`).
    MlpCompOut,
    /// `c_fc` (`mlp.in.hook_*`; `hook_out` = `mlp.hook_pre`).
    MlpFc(LinSite),
    /// The MLP's `c_proj` (`mlp.out.hook_*`; `hook_in` = `mlp.hook_post`).
    MlpProj(LinSite),
    /// A gated MLP's gate projection (`mlp.gate.hook_*`; `hook_out` = `mlp.hook_pre`).
    MlpGate(LinSite),
    /// Queries after the rotary embedding, `[b, p, h, dh]` (`attn.hook_rot_q`).
    RotQ,
    /// Keys after the rotary embedding, `[b, p, h_kv, dh]` (`attn.hook_rot_k`).
    RotK,
    /// The rotary cosines this attention uses, `[b, p, dh]` (`attn.hook_cos`).
    Cos,
    /// The rotary sines, `[b, p, dh]` (`attn.hook_sin`).
    Sin,
    /// Qwen3's per-head RMSNorm of the queries (`attn.q_norm.hook_*`).
    QNorm(LnSite),
    /// The queries after that norm, `[b, p, h, dh]` (`attn.hook_q_normed`).
    QNormed,
    /// The keys after theirs, `[b, p, h_kv, dh]` (`attn.hook_k_normed`).
    KNormed,
    /// Qwen3's per-head RMSNorm of the keys (`attn.k_norm.hook_*`).
    KNorm(LnSite),
}

/// OPT's projections of a narrower token embedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Projection {
    /// `project_in`, from the embedding to the residual stream.
    In,
    /// `project_out`, from the residual stream to the unembedding.
    Out,
}

/// A place in the forward pass where an activation is exposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Site {
    /// Token ids `[b, p]` (`embed.hook_in`).
    EmbedIn,
    /// Token embeddings `[b, p, d]` (`embed.hook_out` = `hook_embed`).
    EmbedOut,
    /// Position ids `[b, p]` (`pos_embed.hook_in`).
    PosEmbedIn,
    /// Positional embeddings `[b, p, d]` (`pos_embed.hook_out` = `hook_pos_embed`).
    PosEmbedOut,
    /// A projection between a narrower embedding and the residual stream (OPT-350m's
    /// `project_in` / `project_out`): its input or output (`project_in.hook_out` =
    /// `hook_project_in`).
    Projection(Projection, LinSite),
    /// A site in block `.0`.
    Block(usize, BlockSite),
    /// The final LayerNorm.
    LnFinal(LnSite),
    /// The unembedding's input (`unembed.hook_in`).
    UnembedIn,
    /// Logits (`unembed.hook_out` = `hook_unembed`).
    UnembedOut,
    /// The rotary module's input, the token embeddings (`rotary_emb.hook_in`).
    RotaryIn,
    /// The rotary cosines `[b, p, dh]` (`rotary_emb.hook_cos`).
    RotaryCos,
    /// The rotary sines `[b, p, dh]` (`rotary_emb.hook_sin`).
    RotarySin,
}

/// How masked attention scores are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskStyle {
    /// HuggingFace's eager attention: an additive mask of `finfo(dtype).min`. A query whose keys
    /// are all masked (a left-padding position) then attends uniformly to every key.
    HfAdditiveMin,
    /// TransformerLens's: masked scores are `-inf`, and a query whose keys are all masked gets an
    /// all-zero pattern (without a NaN, in the forward or the backward pass).
    NegInf,
}

/// TransformerLens's optional attention and MLP paths (`use_attn_result` and friends).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlPaths {
    /// Materialise each head's output (`attn.hook_result`).
    pub use_attn_result: bool,
    /// Separate per-head q, k, v inputs (`hook_q_input`, `hook_k_input`, `hook_v_input`).
    pub use_split_qkv_input: bool,
    /// One per-head input shared by q, k, v (`hook_attn_in`).
    pub use_attn_in: bool,
    /// Hook a copy of the residual before ln2 (`hook_mlp_in`).
    pub use_hook_mlp_in: bool,
}

impl TlPaths {
    /// Whether attention takes per-head inputs (split q/k/v or `attn_in`).
    pub fn per_head_inputs(&self) -> bool {
        self.use_split_qkv_input || self.use_attn_in
    }
}

/// What a forward pass does at its sites.
pub trait Tap {
    /// Passes the activation at `site` through (a hook point may read or replace it).
    fn at(&self, site: Site, x: Tensor) -> ModelResult<Tensor>;

    /// [`Tap::at`], also saying whether the activation came out untouched (no replacement, no
    /// in-place edit, no backward hook on it), so the pass may go on from its own copy of the
    /// input through a fused kernel.
    fn at_noting_edits(&self, site: Site, x: Tensor) -> ModelResult<Passed>;

    /// Whether a hook is attached at `site`. The pass computes an intermediate that only the
    /// hooks need (a LayerNorm's scale) only when one is.
    fn hooked(&self, site: Site) -> bool;

    /// How masked attention scores are written.
    fn mask_style(&self) -> MaskStyle;

    /// The optional TransformerLens paths in effect.
    fn paths(&self) -> TlPaths;
}

/// The raw HF model's tap: exposes nothing, HF's semantics and kernels.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTap;

impl Tap for NoTap {
    #[inline(always)]
    fn at(&self, _site: Site, x: Tensor) -> ModelResult<Tensor> {
        Ok(x)
    }

    #[inline(always)]
    fn at_noting_edits(&self, _site: Site, x: Tensor) -> ModelResult<Passed> {
        Ok(Passed {
            activation: x,
            untouched: true,
        })
    }

    #[inline(always)]
    fn hooked(&self, _site: Site) -> bool {
        false
    }

    fn mask_style(&self) -> MaskStyle {
        MaskStyle::HfAdditiveMin
    }

    fn paths(&self) -> TlPaths {
        TlPaths::default()
    }
}
