//! The parts of eager attention the decoders with separate projections share (the Llama family,
//! GPT-NeoX, GPT-J, Phi, GPT-Neo), each activation at its site: q, k and v from separate projections (with
//! TransformerLens's per-head inputs), and everything after the rotation, from the KV cache to
//! the output projection.

use lens_core::model::{ModelError, ModelResult};
use tch::{Kind, Tensor};

use crate::hf::forward;
use crate::hf::kv_cache::KvCache;
use crate::hf::llama::LinearParams;
use crate::hf::mask::{self, AttentionMask};
use crate::tap::{BlockSite, LinSite, MaskStyle, Site, Tap};

/// How a family turns queries and keys into scores.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Scores {
    /// `(q @ kᵀ) * d_head^-0.5` in the model's dtype (GPT-NeoX, Phi).
    Scaled,
    /// `(q @ kᵀ) * scale` in the model's dtype, then soft-capped as `cap * tanh(s / cap)`
    /// when a cap is set (the Llama family: Gemma 2's `query_pre_attn_scalar^-0.5` and
    /// `attn_logit_softcapping`).
    ScaledCapped {
        /// The factor.
        scale: f64,
        /// The soft cap.
        softcap: Option<f64>,
    },
    /// `(q.f32 @ k.f32ᵀ) / sqrt(d_head)`, in f32 whatever the model's dtype (GPT-J).
    UpcastDivided,
    /// `q.f32 @ k.f32ᵀ`, unscaled, in f32 (GPT-Neo).
    UpcastUnscaled,
    /// `(q * d_head^-0.5) @ kᵀ`: the queries scaled before the product, in the model's dtype
    /// (OPT, whose projection output is scaled).
    QueryScaled,
}

/// A projection's pair of sites (`BlockSite::Q` and the like).
type LinearSites = fn(LinSite) -> BlockSite;

/// q, k and v `[b, p, heads, dh]` from the residual `resid_pre` through three projections
/// (`[heads * dh, d]` each, with their head counts), after their sites; `ln1` normalises the
/// input. With TransformerLens's `use_split_qkv_input` each has its own per-head copy of the
/// residual (`hook_q_input` with a query-head axis, `hook_k_input` / `hook_v_input` with a
/// key/value-head axis), normalised per head (so `ln1`'s sites see each of the three) and
/// projected per head; `use_attn_in` shares one copy.
pub(crate) fn separate_qkv<T: Tap>(
    tap: &T,
    l: usize,
    resid_pre: &Tensor,
    ln1: impl Fn(Tensor) -> ModelResult<Tensor>,
    projections: [(&LinearParams, i64); 3],
    head_dim: i64,
) -> ModelResult<[Tensor; 3]> {
    let s = |site: BlockSite| Site::Block(l, site);
    let (batch, q_len) = (resid_pre.size()[0], resid_pre.size()[1]);
    let sites: [(LinearSites, BlockSite); 3] = [
        (BlockSite::Q, BlockSite::QInput),
        (BlockSite::K, BlockSite::KInput),
        (BlockSite::V, BlockSite::VInput),
    ];
    let paths = tap.paths();
    let mut out = Vec::with_capacity(3);
    if paths.per_head_inputs() {
        let per_head = |n: i64| resid_pre.unsqueeze(2).repeat([1, 1, n, 1]);
        // `use_attn_in` shares one copy (one per query head; the bridge refuses it for
        // grouped key/value heads), `use_split_qkv_input` gives each its own.
        let shared = if paths.use_attn_in {
            Some(tap.at(s(BlockSite::AttnInput), per_head(projections[0].1))?)
        } else {
            None
        };
        for ((lin, input_site), (proj, n)) in sites.into_iter().zip(projections) {
            let src = match &shared {
                Some(shared) => shared.shallow_clone(),
                None => tap.at(s(input_site), per_head(n))?,
            };
            let x = tap.at(s(lin(LinSite::In)), ln1(src)?)?;
            out.push(tap.at(
                s(lin(LinSite::Out)),
                project_linear_per_head(&x, proj, n, head_dim),
            )?);
        }
    } else {
        let x = tap.at(s(BlockSite::AttnIn), ln1(resid_pre.shallow_clone())?)?;
        for ((lin, _), (proj, n)) in sites.into_iter().zip(projections) {
            let input = tap.at(s(lin(LinSite::In)), x.shallow_clone())?;
            let h = proj.apply(&input).view([batch, q_len, n, head_dim]);
            out.push(tap.at(s(lin(LinSite::Out)), h)?);
        }
    }
    out.try_into()
        .map_err(|_| ModelError::InvalidInput("three projections".into()))
}

/// [`separate_qkv`] for a fused projection whose rows are q's, k's and v's (`parts`, views of
/// `fused`), with the fused layer's sites (`attn.qkv`) around it: one product of `fused`,
/// split, while nothing edits the three inputs (HF's computation); else each part's own
/// product.
pub(crate) fn fused_qkv<T: Tap>(
    tap: &T,
    l: usize,
    resid_pre: &Tensor,
    ln1: impl Fn(Tensor) -> ModelResult<Tensor>,
    fused: &LinearParams,
    parts: [(&LinearParams, i64); 3],
    head_dim: i64,
) -> ModelResult<[Tensor; 3]> {
    if tap.paths().per_head_inputs() {
        return separate_qkv(tap, l, resid_pre, ln1, parts, head_dim);
    }
    let s = |site: BlockSite| Site::Block(l, site);
    let (batch, q_len) = (resid_pre.size()[0], resid_pre.size()[1]);
    let x = tap.at(s(BlockSite::AttnIn), ln1(resid_pre.shallow_clone())?)?;
    let x = tap.at(s(BlockSite::Qkv(LinSite::In)), x)?;
    let sites: [LinearSites; 3] = [BlockSite::Q, BlockSite::K, BlockSite::V];
    let inputs = sites
        .iter()
        .map(|lin| tap.at_noting_edits(s(lin(LinSite::In)), x.shallow_clone()))
        .collect::<ModelResult<Vec<_>>>()?;
    let all = if inputs.iter().all(|i| i.untouched) {
        fused.apply(&x)
    } else {
        let parts: Vec<Tensor> = inputs
            .iter()
            .zip(parts)
            .map(|(input, (proj, _))| proj.apply(&input.activation))
            .collect();
        Tensor::cat(&parts, -1)
    };
    let all = tap.at(s(BlockSite::Qkv(LinSite::Out)), all)?;
    let mut offset = 0;
    let outputs: Vec<Tensor> = parts
        .iter()
        .map(|(_, n)| {
            let part = all.narrow(-1, offset, n * head_dim);
            offset += n * head_dim;
            part
        })
        .collect();
    let mut out = Vec::with_capacity(3);
    for ((lin, (_, n)), h) in sites.into_iter().zip(parts).zip(outputs) {
        let h = h.reshape([batch, q_len, n, head_dim]);
        out.push(tap.at(s(lin(LinSite::Out)), h)?);
    }
    out.try_into()
        .map_err(|_| ModelError::InvalidInput("three projections".into()))
}

/// `proj` applied per head: `x` `[b, p, n, d]` (one input per head) through each head's rows
/// of the weight, to `[b, p, n, head_dim]`.
fn project_linear_per_head(x: &Tensor, proj: &LinearParams, n: i64, head_dim: i64) -> Tensor {
    let d = proj.weight.size()[1];
    let w = proj.weight.view([n, head_dim, d]).permute([0, 2, 1]);
    let b = proj.bias.as_ref().map(|b| b.view([n, head_dim]));
    forward::project_per_head(x, &w, b.as_ref())
}

/// Attention after the rotation, from rotated queries and keys and the values, `[b, heads, p,
/// dh]` (`[b, kv heads, p, dh]` for k and v): the KV cache, the grouped heads repeated, the
/// scores (`hook_attn_scores`, masked as the tap says), the pattern, `z` and the output
/// projection `o_proj` (per head with `use_attn_result`), each at its site.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend<T: Tap>(
    tap: &T,
    l: usize,
    (q, k, v): (Tensor, Tensor, Tensor),
    cache: Option<&mut KvCache>,
    mask: &AttentionMask,
    scores: Scores,
    mask_kind: Kind,
    o_proj: &LinearParams,
) -> ModelResult<Tensor> {
    let s = |site: BlockSite| Site::Block(l, site);
    let (batch, h, q_len, dh) = q.size4()?;
    let (k, v) = match cache {
        Some(cache) => cache.append(l, k, v),
        None => (k, v),
    };
    let groups = h / k.size()[1];
    let (k, v) = (repeat_kv(&k, groups), repeat_kv(&v, groups));
    let style = tap.mask_style();
    let raw = match scores {
        Scores::Scaled => q.matmul(&k.transpose(2, 3)) * (dh as f64).powf(-0.5),
        Scores::ScaledCapped { scale, softcap } => {
            let scores = q.matmul(&k.transpose(2, 3)) * scale;
            match softcap {
                Some(cap) => (scores / cap).tanh() * cap,
                None => scores,
            }
        }
        Scores::UpcastDivided => {
            q.to_kind(Kind::Float)
                .matmul(&k.to_kind(Kind::Float).transpose(2, 3))
                / (dh as f64).sqrt()
        }
        Scores::UpcastUnscaled => q
            .to_kind(Kind::Float)
            .matmul(&k.to_kind(Kind::Float).transpose(2, 3)),
        Scores::QueryScaled => (&q * (dh as f64).powf(-0.5)).matmul(&k.transpose(2, 3)),
    };
    let scores = tap.at(
        s(BlockSite::AttnScores),
        mask::apply(raw, mask, style, mask_kind),
    )?;
    let pattern = match style {
        MaskStyle::HfAdditiveMin => scores.softmax(-1, Kind::Float).to_kind(v.kind()),
        MaskStyle::NegInf => {
            mask::softmax(&scores.to_kind(Kind::Float), mask, style).to_kind(v.kind())
        }
    };
    let pattern = tap.at(s(BlockSite::Pattern), pattern)?;
    let z = pattern.matmul(&v).transpose(1, 2).contiguous();
    let z = tap.at(s(BlockSite::O(LinSite::In)), z)?;
    let out = if tap.paths().use_attn_result {
        // TransformerLens's per-head results: z [b, p, h, dh] . W_O [h, dh, d].
        let d = o_proj.weight.size()[0];
        let w_o = o_proj.weight.view([d, h, dh]).permute([1, 2, 0]);
        let result = Tensor::einsum("bphk,hkd->bphd", &[&z, &w_o], None::<&[i64]>);
        let result = tap.at(s(BlockSite::Result), result)?;
        let summed = result.sum_dim_intlist([2i64].as_slice(), false, result.kind());
        match &o_proj.bias {
            Some(b) => summed + b,
            None => summed,
        }
    } else {
        o_proj.apply(&z.reshape([batch, q_len, h * dh]))
    };
    let out = tap.at(s(BlockSite::O(LinSite::Out)), out)?;
    let out = tap.at(s(BlockSite::HiddenStates), out)?;
    tap.at(s(BlockSite::AttnOut), out)
}

/// `repeat_kv`: each key/value head repeated for the `groups` query heads that share it.
fn repeat_kv(x: &Tensor, groups: i64) -> Tensor {
    if groups == 1 {
        return x.shallow_clone();
    }
    let (b, h, s, d) = x.size4().expect("[b, h, s, d]");
    x.unsqueeze(2)
        .expand([b, h, groups, s, d], false)
        .reshape([b, h * groups, s, d])
}
