//! Weight processing (TransformerLens's `process_weights`): fold_ln, center_writing_weights,
//! center_unembed, fold_value_biases — computed in f32 whatever the model's dtype, in
//! TransformerLens's order, then cast back. One implementation for every model: the
//! HookedTransformer processes its parameters with it and the bridge processes views of its HF
//! parameters with it, so both end with bit-identical weights.

use tch::{Kind, Tensor};

use crate::tl_params::{LayerNormParams, Params};

/// Which processing steps to apply. `Default` is TransformerLens's `from_pretrained`: the first
/// four on, the refactoring off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessingOptions {
    /// Fold each LayerNorm's weight and bias into the weights that read its output (LN -> LNPre).
    pub fold_ln: bool,
    /// Remove the mean over d_model from every weight writing to the residual stream.
    pub center_writing_weights: bool,
    /// Remove the mean over the vocabulary from the unembedding (log-probs are unchanged).
    pub center_unembed: bool,
    /// Move the value biases into the attention output bias.
    pub fold_value_biases: bool,
    /// Re-factor each head's `W_Q W_K^T` (biases included) and `W_V W_O` by SVD so that the
    /// two factors are balanced (TransformerLens's `refactor_factored_attn_matrices`; it also
    /// folds the value biases). Every product, hence every output, is unchanged.
    pub refactor_factored_attn_matrices: bool,
}

impl Default for ProcessingOptions {
    fn default() -> Self {
        ProcessingOptions {
            fold_ln: true,
            center_writing_weights: true,
            center_unembed: true,
            fold_value_biases: true,
            refactor_factored_attn_matrices: false,
        }
    }
}

impl ProcessingOptions {
    /// No processing at all (`from_pretrained_no_processing`).
    pub fn none() -> Self {
        ProcessingOptions {
            fold_ln: false,
            center_writing_weights: false,
            center_unembed: false,
            fold_value_biases: false,
            refactor_factored_attn_matrices: false,
        }
    }
}

/// What about a model decides which processing steps TransformerLens applies to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessingTraits<'a> {
    /// The HF class, named in the notes.
    pub architecture: &'a str,
    /// Its norms are RMSNorms (which do not centre: centring what writes to the residual
    /// would change the model).
    pub rms_norm: bool,
    /// Its only norms follow the sublayers (OLMo-2) or the residual additions (OPT-350m):
    /// there is nothing before a weight to fold.
    pub norms_after_sublayers: bool,
    /// Its logits are soft-capped (Gemma 2): a constant added to them is not a no-op.
    pub logits_soft_capped: bool,
    /// Nothing normalises the final residual stream (OPT without its final LayerNorm): a
    /// constant direction removed from what writes to it would reach the logits.
    pub no_final_norm: bool,
}

/// The steps TransformerLens 3.9.0 applies when `requested` are asked for a model with
/// `traits`, and for each step it turns off with a warning, that warning: fold_ln and
/// center_writing_weights off for post-norm architectures, center_unembed off under a logit
/// soft cap; and, which TransformerLens never meets, center_writing_weights off where no final
/// norm follows the residual stream. center_writing_weights is off for RMSNorm models without a word, as in
/// TransformerLens (it is a no-op there).
pub fn applicable(
    requested: ProcessingOptions,
    traits: &ProcessingTraits<'_>,
) -> (ProcessingOptions, Vec<String>) {
    let mut options = requested;
    let mut notes = Vec::new();
    let arch = traits.architecture;
    if traits.norms_after_sublayers {
        if options.fold_ln {
            options.fold_ln = false;
            notes.push(format!(
                "fold_ln=True is incompatible with {arch}'s post-norm architecture: fold_ln \
                 turned off (as TransformerLens does)"
            ));
        }
        if options.center_writing_weights {
            options.center_writing_weights = false;
            notes.push(format!(
                "center_writing_weights=True is incompatible with {arch}'s post-norm \
                 architecture: center_writing_weights turned off (as TransformerLens does)"
            ));
        }
    }
    if traits.rms_norm {
        options.center_writing_weights = false;
    }
    if traits.no_final_norm && options.center_writing_weights {
        options.center_writing_weights = false;
        notes.push(format!(
            "center_writing_weights=True needs a final norm, which this {arch} lacks \
             (removing each writing weight's mean would change the logits): \
             center_writing_weights turned off"
        ));
    }
    if traits.logits_soft_capped && options.center_unembed {
        options.center_unembed = false;
        notes.push(format!(
            "{arch} soft-caps its logits, which adding a constant does not commute with: \
             center_unembed turned off (as TransformerLens does)"
        ));
    }
    (options, notes)
}

fn f32(t: &Tensor) -> Tensor {
    t.to_kind(Kind::Float)
}

/// Mean over `dim`, kept for broadcasting.
fn mean(t: &Tensor, dim: i64) -> Tensor {
    t.mean_dim(dim, true, Kind::Float)
}

/// f32 copies of `p`'s weights, row-major: both models hand processing their weights in the
/// same layout (the bridge's are often transposed views), so that reductions run in the same
/// order and the two end with identical weights.
fn to_f32(p: &Params) -> Params {
    p.map(|t| f32(&t.detach()).contiguous())
}

/// Back to each weight's own dtype as it came in (`kind`, the model's, for what processing
/// added), as fresh leaves that require gradients. A weight kept in f32 in a half-precision
/// model (the HookedTransformer's Gemma norms) stays f32.
fn cast_back(p: Params, original: &Params, kind: Kind) -> Result<Params, String> {
    let kinds: std::collections::BTreeMap<String, Kind> = original
        .named()
        .into_iter()
        .map(|(name, t)| (name, t.kind()))
        .collect();
    let mut named = p
        .named()
        .into_iter()
        .map(|(name, t)| {
            let kind = kinds.get(&name).copied().unwrap_or(kind);
            let t = t
                .to_kind(kind)
                .detach()
                .contiguous()
                .set_requires_grad(true);
            (name, t)
        })
        .collect();
    Params::from_named(&mut named)
}

/// Folds `ln`'s bias into `bias` through the *unscaled* weight, then its scale into `weight`,
/// then, for a LayerNorm, centres `weight` over the d_model axis `d_axis` (an RMSNorm has no bias
/// and does not centre its input, so its fold only scales: TransformerLens's
/// `fold_layer_norm(center_weights=False)`). `weight_sum(w, b)` computes
/// `sum_d w[.., d, ..] * b[d]` in the bias's shape.
fn fold_into(
    weight: &mut Tensor,
    bias: &mut Tensor,
    ln: &LayerNormParams,
    d_axis: i64,
    scale_shape: &[i64],
    weight_sum: impl Fn(&Tensor, &Tensor) -> Tensor,
) {
    if let Some(b) = &ln.b {
        *bias = &*bias + weight_sum(weight, b);
    }
    *weight = &*weight * ln.w.reshape(scale_shape);
    if ln.b.is_some() {
        *weight = &*weight - mean(weight, d_axis);
    }
}

/// Scales a bias-free weight (a gated MLP's gate) by `ln`, centring it for a LayerNorm, as
/// [`fold_into`] does its weight.
fn fold_scale_into(weight: &mut Tensor, ln: &LayerNormParams, d_axis: i64, scale_shape: &[i64]) {
    *weight = &*weight * ln.w.reshape(scale_shape);
    if ln.b.is_some() {
        *weight = &*weight - mean(weight, d_axis);
    }
}

fn fold_ln(p: &mut Params) {
    for block in &mut p.blocks {
        if let Some(ln1) = block.ln1.take() {
            let a = &mut block.attn;
            // W [h, d, dh], b [h, dh]: b += sum_d W[h, d, :] * b_ln[d]
            let per_head =
                |w: &Tensor, b: &Tensor| Tensor::einsum("hdk,d->hk", &[w, b], None::<&[i64]>);
            fold_into(&mut a.W_Q, &mut a.b_Q, &ln1, 1, &[1, -1, 1], per_head);
            fold_into(&mut a.W_K, &mut a.b_K, &ln1, 1, &[1, -1, 1], per_head);
            fold_into(&mut a.W_V, &mut a.b_V, &ln1, 1, &[1, -1, 1], per_head);
        }
        if let Some(ln2) = block.ln2.take() {
            let m = &mut block.mlp;
            fold_into(&mut m.W_in, &mut m.b_in, &ln2, 0, &[-1, 1], |w, b| {
                b.matmul(w)
            });
            if let Some(w_gate) = m.W_gate.as_mut() {
                fold_scale_into(w_gate, &ln2, 0, &[-1, 1]);
            }
        }
    }
    if let Some(ln_final) = p.ln_final.take() {
        match p.W_project_out.as_mut() {
            // A projection reads the final norm (OPT with `word_embed_proj_dim`): the norm's
            // scale folds into it and its bias, through it, into `b_U`.
            Some(w_project_out) => {
                if let Some(b) = &ln_final.b {
                    p.b_U = &p.b_U + b.matmul(w_project_out).matmul(&p.W_U);
                }
                fold_scale_into(w_project_out, &ln_final, 0, &[-1, 1]);
            }
            None => fold_into(&mut p.W_U, &mut p.b_U, &ln_final, 0, &[-1, 1], |w, b| {
                b.matmul(w)
            }),
        }
    }
}

fn center_writing_weights(p: &mut Params) {
    // A projected embedding writes to the residual stream through its projection.
    match p.W_project_in.as_mut() {
        Some(w_project_in) => *w_project_in = &*w_project_in - mean(w_project_in, -1),
        None => p.W_E = &p.W_E - mean(&p.W_E, -1),
    }
    if let Some(w_pos) = p.W_pos.as_mut() {
        *w_pos = &*w_pos - mean(w_pos, -1);
    }
    for block in &mut p.blocks {
        let (a, m) = (&mut block.attn, &mut block.mlp);
        a.W_O = &a.W_O - mean(&a.W_O, -1);
        a.b_O = &a.b_O - mean(&a.b_O, -1);
        m.W_out = &m.W_out - mean(&m.W_out, -1);
        m.b_out = &m.b_out - mean(&m.b_out, -1);
    }
}

fn fold_value_biases(p: &mut Params) {
    for block in &mut p.blocks {
        let a = &mut block.attn;
        // Grouped values: each value head serves `groups` consecutive query heads.
        let groups = a.W_Q.size()[0] / a.b_V.size()[0];
        let b_v = a.b_V.repeat_interleave_self_int(groups, Some(0), None);
        a.b_O = &a.b_O + Tensor::einsum("hk,hkd->d", &[&b_v, &a.W_O], None::<&[i64]>);
        a.b_V = a.b_V.zeros_like();
    }
}

/// Whether `W_Q W_K^T` is the whole QK circuit, as refactoring needs: not under rotary
/// attention (no learned positions: the circuit depends on the query's and key's positions,
/// which TransformerLens refuses too) nor where q/k norms sit between the projections.
fn refactorable(p: &Params) -> Result<(), String> {
    let why = if p.W_pos.is_none() {
        Some("the model has no learned positions (rotary attention makes the QK circuit depend on the positions)")
    } else if p
        .blocks
        .iter()
        .any(|b| b.attn.q_norm.is_some() || b.attn.k_norm.is_some())
    {
        Some("the model normalises its queries and keys between the projections")
    } else {
        None
    };
    match why {
        Some(why) => Err(format!(
            "refactor_factored_attn_matrices does not apply: {why}"
        )),
        None => Ok(()),
    }
}

/// Processes `params` as `options` say and returns the result: new leaves in the original dtype
/// that require gradients. LayerNorms that were folded come back as `None` (LNPre). The caller
/// decides whether its LayerNorms are plain LN (only then does fold_ln apply).
///
/// # Errors
/// `refactor_factored_attn_matrices` on a model where `W_Q W_K^T` is not the QK circuit
/// (rotary attention, q/k norms).
pub fn process_weights(params: &Params, options: ProcessingOptions) -> Result<Params, String> {
    let kind = params.W_E.kind();
    let _guard = tch::no_grad_guard();
    let mut p = to_f32(params);
    if options.fold_ln {
        fold_ln(&mut p);
    }
    if options.center_writing_weights {
        center_writing_weights(&mut p);
    }
    if options.center_unembed {
        p.W_U = &p.W_U - mean(&p.W_U, -1);
        p.b_U = &p.b_U - mean(&p.b_U, -1);
    }
    if options.fold_value_biases {
        fold_value_biases(&mut p);
        if options.center_writing_weights {
            for block in &mut p.blocks {
                block.attn.b_O = &block.attn.b_O - mean(&block.attn.b_O, -1);
            }
        }
    }
    if options.refactor_factored_attn_matrices {
        refactorable(&p)?;
        refactor_factored_attn_matrices(&mut p);
    }
    cast_back(p, params, kind)
}

/// `A B` as `U diag(S) V^T` without forming the product: SVDs of both factors, then of the small
/// middle matrix (TransformerLens's `FactoredMatrix.svd`). Batched over leading dimensions.
fn factored_svd(a: &Tensor, b: &Tensor) -> (Tensor, Tensor, Tensor) {
    let (ua, sa, va) = a.svd(true, true);
    let (ub, sb, vb) = b.svd(true, true);
    let middle = (sa.unsqueeze(-1) * va.transpose(-1, -2)).matmul(&ub) * sb.unsqueeze(-2);
    let (um, sm, vm) = middle.svd(true, true);
    (ua.matmul(&um), sm, vb.matmul(&vm))
}

/// Per head: `[W_Q; b_Q] [W_K; b_K]^T = U S V^T` becomes `W_Q' = U sqrt(S)`, `W_K' = V sqrt(S)`
/// (the bias rows split off again); the value biases are folded into `b_O`; and
/// `W_V W_O = U S V^T` becomes `W_V = U S`, `W_O = V^T`.
fn refactor_factored_attn_matrices(p: &mut Params) {
    for block in &mut p.blocks {
        let a = &mut block.attn;
        let q_eff = Tensor::cat(&[&a.W_Q, &a.b_Q.unsqueeze(1)], 1);
        let k_eff = Tensor::cat(&[&a.W_K, &a.b_K.unsqueeze(1)], 1);
        let (u, s, v) = factored_svd(&q_eff, &k_eff.transpose(-1, -2));
        let root = s.sqrt().unsqueeze(-2);
        let (q_even, k_even) = (u * &root, v * &root);
        let d = a.W_Q.size()[1];
        a.W_Q = q_even.narrow(1, 0, d).contiguous();
        a.b_Q = q_even.select(1, d).contiguous();
        a.W_K = k_even.narrow(1, 0, d).contiguous();
        a.b_K = k_even.select(1, d).contiguous();
        a.b_O = &a.b_O + Tensor::einsum("hk,hkd->d", &[&a.b_V, &a.W_O], None::<&[i64]>);
        a.b_V = a.b_V.zeros_like();
        let (u, s, v) = factored_svd(&a.W_V, &a.W_O);
        a.W_V = (u * s.unsqueeze(-2)).contiguous();
        a.W_O = v.transpose(-1, -2).contiguous();
    }
}
