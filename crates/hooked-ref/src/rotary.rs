//! Rotary position embeddings as TransformerLens computes them (`calculate_sin_cos_rotary`,
//! `rotate_every_two`, `apply_rotary`): angles `pos / freq` in f32, the first `rotary_dim`
//! dimensions of each head rotated in half-split or adjacent pairs, the rest passed through.

use lens_core::config::LongRope;
use lens_core::RopeScaling;
use tch::{Kind, Tensor};

use crate::config::Rotary;

/// The wavelength factors `freq` `[rotary_dim / 2]` (angles are `pos / freq`), f32.
fn frequencies(rotary: &Rotary, device: tch::Device) -> Tensor {
    let rd = rotary.dim;
    match rotary.scaling {
        // NTK-by-parts, as transformers computes the inverse frequencies.
        scaling @ RopeScaling::Llama3 { .. } => scaling
            .inverse_frequencies(rotary.base, rd, device)
            .reciprocal(),
        scaling => {
            let dims = Tensor::arange(rd / 2, (Kind::Float, device)) / (rd as f64 / 2.0);
            let freq = Tensor::pow_scalar(rotary.base, &dims);
            match scaling {
                RopeScaling::Linear { factor } => freq * factor,
                _ => freq,
            }
        }
    }
}

/// `rotate_every_two`: pairs `(x_i, x_j)` to `(-x_j, x_i)`, with `j = i + d/2` (half-split)
/// or `j = i + 1` for even `i` (adjacent pairs).
fn rotate_pairs(x: &Tensor, adjacent: bool) -> Tensor {
    let d = *x.size().last().expect("a head axis");
    if adjacent {
        let even = x.slice(-1, 0, d, 2);
        let odd = x.slice(-1, 1, d, 2);
        Tensor::stack(&[-odd, even], -1).flatten(-2, -1)
    } else {
        let n = d / 2;
        Tensor::cat(&[-x.narrow(-1, n, n), x.narrow(-1, 0, n)], -1)
    }
}

/// Rotates `x` `[b, p, h, d_head]` whose first position is `offset`; with an attention mask
/// `[b, offset + p]`, positions count real tokens only (`cumsum(mask) - 1`, padding at 0).
///
/// With Phi-3's `longrope`, the frequencies are its short or long ones as the largest position
/// says (HF's choice per pass, which TransformerLens 3.9.0 does not make: it ignores the
/// scaling), and sines and cosines are scaled by its attention factor.
pub(crate) fn apply(
    rotary: &Rotary,
    longrope: Option<&LongRope>,
    x: &Tensor,
    offset: i64,
    attention_mask: Option<&Tensor>,
) -> Tensor {
    let device = x.device();
    let p = x.size()[1];
    let positions = match attention_mask {
        None => Tensor::arange_start(offset, offset + p, (Kind::Int64, device)).view([1, p]),
        Some(mask) => (mask.cumsum(1, Kind::Int64) - 1)
            .clamp_min(0)
            .narrow(1, offset, p),
    };
    let (freq, factor) = match longrope {
        Some(longrope) => {
            let long = longrope.is_long(positions.max().int64_value(&[]));
            let inv_freq = longrope.inverse_frequencies(rotary.base, rotary.dim, long, device);
            (inv_freq.reciprocal(), longrope.attention_factor)
        }
        None => (frequencies(rotary, device), 1.0),
    };
    let freq = if rotary.adjacent_pairs {
        freq.repeat_interleave_self_int(2, Some(0), None)
    } else {
        Tensor::cat(&[&freq, &freq], 0)
    };
    let angles = positions.to_kind(Kind::Float).unsqueeze(-1) / freq.view([1, 1, -1]);
    let (sin, cos) = (
        (angles.sin() * factor).to_kind(x.kind()).unsqueeze(2),
        (angles.cos() * factor).to_kind(x.kind()).unsqueeze(2),
    );
    let rd = rotary.dim;
    let x_rot = x.narrow(-1, 0, rd);
    let rotated = &x_rot * cos + rotate_pairs(&x_rot, rotary.adjacent_pairs) * sin;
    let d = x.size()[3];
    if rd == d {
        rotated
    } else {
        Tensor::cat(&[rotated, x.narrow(-1, rd, d - rd)], -1)
    }
}
