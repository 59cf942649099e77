//! How two tensors are compared: err = max|a - b| / max(1, max|b|) per tensor, in f64.
//!
//! The scale keeps the bound meaningful for quantities of any size (gradients of summed logits
//! reach hundreds) while small quantities are held to an absolute bound. Non-finite entries must
//! agree exactly (same infinity, NaN on both sides) except in attention scores, where entries the
//! mask removed are compared for being masked rather than for their value.

use lens_core::layout::{in_memory_order, in_order, memory_order};
use tch::{Device, Kind, Tensor};

/// The default bound on err in f32.
pub const F32_TOLERANCE: f64 = 1e-5;

/// The bounds on err for a model dtype.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerances {
    /// For activations, logits, losses and weights.
    pub activations: f64,
    /// For gradients: a backward pass goes through reductions whose terms largely cancel (a
    /// LayerNorm's scale gradient amplifies rounding about twentyfold), so in half precision its
    /// rounding noise is several times that of the forward pass.
    pub gradients: f64,
}

/// The bounds for a dtype: 1e-5 for everything in f32 (and f64). Half precision rounds at its
/// machine epsilon (f16 2^-10 ~ 9.8e-4, bf16 2^-7 ~ 7.8e-3) in every layer: activations are held
/// to about 10 epsilons (f16 1e-2, bf16 5e-2) and gradients to about 50 (f16 5e-2, bf16 2.5e-1).
/// Measured on tiny-gpt2, bridge vs HookedTransformer: worst activation err 4.9e-3 (f16) and
/// 4.8e-2 (bf16); worst gradient err 3.1e-2 (f16) and 2.1e-1 (bf16), both at a LayerNorm scale.
pub fn tolerances_for(kind: Kind) -> Tolerances {
    match kind {
        Kind::BFloat16 => Tolerances {
            activations: 5e-2,
            gradients: 2.5e-1,
        },
        Kind::Half => Tolerances {
            activations: 1e-2,
            gradients: 5e-2,
        },
        _ => Tolerances {
            activations: F32_TOLERANCE,
            gradients: F32_TOLERANCE,
        },
    }
}

/// The outcome of comparing one pair of tensors.
#[derive(Clone, Debug, PartialEq)]
pub enum Comparison {
    /// Same shape; `err` is the relative error over the compared entries.
    Compared {
        /// max|a - b| / max(1, max|b|).
        err: f64,
    },
    /// Shapes differ.
    ShapeMismatch {
        /// Shape of the tested tensor.
        ours: Vec<i64>,
        /// Shape of the reference.
        reference: Vec<i64>,
    },
    /// Non-finite entries differ (one side inf or NaN where the other is not, outside masks).
    NonFiniteMismatch {
        /// How many entries.
        count: i64,
    },
}

impl Comparison {
    /// Whether the comparison is within `tolerance`.
    pub fn within(&self, tolerance: f64) -> bool {
        matches!(self, Comparison::Compared { err } if *err <= tolerance)
    }

    /// A short description for reports.
    pub fn describe(&self) -> String {
        match self {
            Comparison::Compared { err } => format!("err {err:.2e}"),
            Comparison::ShapeMismatch { ours, reference } => {
                format!("shape {ours:?} vs reference {reference:?}")
            }
            Comparison::NonFiniteMismatch { count } => format!("{count} non-finite entries differ"),
        }
    }
}

/// Compares `ours` with `reference`; `keep` (same shape, bool) restricts the comparison to some
/// entries (real positions of a padded batch, unmasked attention scores).
pub fn compare(ours: &Tensor, reference: &Tensor, keep: Option<&Tensor>) -> Comparison {
    compare_at_scale(ours, reference, keep, 0.0)
}

/// [`compare`] with the error divided by `max(1, max|reference|, magnitude)`: for a quantity
/// that is a sum of cancelling terms, `magnitude` is the size of those terms, which is what the
/// rounding error of any evaluation is proportional to.
pub fn compare_at_scale(
    ours: &Tensor,
    reference: &Tensor,
    keep: Option<&Tensor>,
    magnitude: f64,
) -> Comparison {
    if ours.size() != reference.size() {
        return Comparison::ShapeMismatch {
            ours: ours.size(),
            reference: reference.size(),
        };
    }
    if let Some(err) = finite_err(ours, reference, keep, magnitude) {
        return Comparison::Compared { err };
    }
    let ours = ours.to_device(Device::Cpu).to_kind(Kind::Double);
    let reference = reference.to_device(Device::Cpu).to_kind(Kind::Double);
    let (ours, reference) = match keep {
        Some(keep) => {
            let keep = keep.to_device(Device::Cpu).expand_as(&ours);
            (ours.masked_select(&keep), reference.masked_select(&keep))
        }
        None => (ours.reshape([-1]), reference.reshape([-1])),
    };
    if reference.numel() == 0 {
        return Comparison::Compared { err: 0.0 };
    }
    let finite = reference.isfinite();
    let same_nonfinite = ours
        .eq_tensor(&reference)
        .logical_or(&ours.isnan().logical_and(&reference.isnan()));
    let nonfinite_mismatch = i64::try_from(
        finite
            .logical_not()
            .logical_and(&same_nonfinite.logical_not())
            .sum(Kind::Int64),
    )
    .unwrap_or(0)
        + i64::try_from(
            finite
                .logical_and(&ours.isfinite().logical_not())
                .sum(Kind::Int64),
        )
        .unwrap_or(0);
    if nonfinite_mismatch > 0 {
        return Comparison::NonFiniteMismatch {
            count: nonfinite_mismatch,
        };
    }
    let (ours, reference) = (
        ours.masked_select(&finite),
        reference.masked_select(&finite),
    );
    if reference.numel() == 0 {
        return Comparison::Compared { err: 0.0 };
    }
    let scale = reference
        .abs()
        .max()
        .double_value(&[])
        .max(1.0)
        .max(magnitude);
    Comparison::Compared {
        err: (ours - reference).abs().max().double_value(&[]) / scale,
    }
}

/// The common case without copies: no mask, same dtype and device, every entry finite. Every
/// figure is a streaming reduction: `max|x|` ([`max_abs`]) is finite exactly when every entry
/// of `x` is (NaN and infinities propagate through it), and `max|a - b|` is taken over chunks,
/// so no temporary of the tensors' size is allocated (for a 38.6M-entry embedding gradient that
/// is the difference between touching 150 MB of fresh pages and 16 MB of reused ones). The
/// difference is taken in the tensors' own dtype (its rounding is far below any bound used
/// here). `None` sends the caller to the general path.
fn finite_err(
    ours: &Tensor,
    reference: &Tensor,
    keep: Option<&Tensor>,
    magnitude: f64,
) -> Option<f64> {
    if keep.is_some()
        || ours.kind() != reference.kind()
        || ours.device() != reference.device()
        || reference.numel() == 0
    {
        return None;
    }
    let reference_max = max_abs(reference);
    if !reference_max.is_finite() {
        return None;
    }
    // With every reference entry finite, the difference is finite exactly when every entry of
    // `ours` is: no pass over `ours` alone is needed.
    let diff = max_abs_difference(ours, reference);
    if !diff.is_finite() {
        return None;
    }
    Some(diff / reference_max.max(1.0).max(magnitude))
}

/// Entries per chunk of [`max_abs_difference`]: 4M (16 MB in f32).
const CHUNK: i64 = 1 << 22;

/// `max|x|` as f64 (0 for an empty tensor), NaN if any entry is NaN, infinite if any is
/// infinite. One `aminmax` pass: libtorch's min/max reductions propagate NaN, and they run several
/// times faster here than the infinity norm or `abs().max()` (7-9 ms against 50-60 ms for 38.6M
/// f32 entries on 2 cores), which also allocates an |x| temporary.
pub fn max_abs(x: &Tensor) -> f64 {
    if x.numel() == 0 {
        return 0.0;
    }
    let (min, max) = in_memory_order(x).aminmax(None::<i64>, false);
    let value = |t: Tensor| t.to_kind(Kind::Double).double_value(&[]);
    let (min, max) = (value(min), value(max));
    if min.is_nan() || max.is_nan() {
        f64::NAN
    } else {
        min.abs().max(max.abs())
    }
}

/// `max|a - b|` over same-shaped tensors, a chunk at a time ([`max_abs_difference_of_sum`]).
fn max_abs_difference(a: &Tensor, b: &Tensor) -> f64 {
    max_abs_difference_of_sum(a, std::slice::from_ref(b)).0
}

/// `(max|a - sum(parts)|, max|sum(parts)|)` over same-shaped tensors, a chunk at a time: no
/// temporary of the tensors' size, even for a sum of several parts (a tied weight's two
/// gradients). Every tensor is first viewed in `a`'s memory order ([`in_memory_order`]), so
/// chunks of `a` are contiguous blocks: a transposed `a` (the bridge's `W_U`, a view of
/// `lm_head.weight`) would otherwise be strided through, several times slower. NaN wherever an
/// entry is NaN.
pub fn max_abs_difference_of_sum(a: &Tensor, parts: &[Tensor]) -> (f64, f64) {
    let order = memory_order(a);
    let a = in_order(a, &order);
    let parts: Vec<Tensor> = parts.iter().map(|p| in_order(p, &order)).collect();
    let rows = a.size()[0];
    let row_len = (a.numel() as i64 / rows.max(1)).max(1);
    let step = (CHUNK / row_len).max(1);
    let (mut difference, mut sum_max) = (0.0f64, 0.0f64);
    let mut start = 0;
    while start < rows {
        let len = step.min(rows - start);
        let mut sum = parts[0].narrow(0, start, len);
        for part in &parts[1..] {
            // A new tensor, never `+=`: the first part is a view of the reference's gradient.
            sum = &sum + part.narrow(0, start, len);
        }
        let chunk_difference = max_abs(&(a.narrow(0, start, len) - &sum));
        let chunk_sum = max_abs(&sum);
        // NaN (an overflowing difference) must win.
        if chunk_difference.is_nan() || chunk_difference > difference {
            difference = chunk_difference;
        }
        if chunk_sum.is_nan() || chunk_sum > sum_max {
            sum_max = chunk_sum;
        }
        if difference.is_nan() {
            break;
        }
        start += len;
    }
    (difference, sum_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn err_is_relative_to_the_larger_of_one_and_the_reference_scale() {
        let reference = Tensor::from_slice(&[100.0f32, -200.0]);
        let ours = Tensor::from_slice(&[100.0f32, -199.0]);
        assert_eq!(
            compare(&ours, &reference, None),
            Comparison::Compared { err: 1.0 / 200.0 }
        );
        let small = Tensor::from_slice(&[1e-3f32]);
        let off = Tensor::from_slice(&[2e-3f32]);
        match compare(&off, &small, None) {
            Comparison::Compared { err } => assert!((err - 1e-3).abs() < 1e-9),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_chunked_difference_sees_every_entry() {
        // Three chunks and a bit; the one difference sits in the last, partial chunk.
        let n = 3 * CHUNK + 5;
        let reference = Tensor::ones([n], (Kind::Float, Device::Cpu));
        let ours = reference.copy();
        let _ = ours.narrow(0, n - 2, 1).fill_(1.5);
        assert_eq!(
            compare(&ours, &reference, None),
            Comparison::Compared { err: 0.5 }
        );
        // A NaN in a middle chunk is a mismatch, not a maximum skipped over.
        let _ = ours.narrow(0, CHUNK + 7, 1).fill_(f64::NAN);
        assert_eq!(
            compare(&ours, &reference, None),
            Comparison::NonFiniteMismatch { count: 1 }
        );
        assert_eq!(
            max_abs(&Tensor::zeros([0], (Kind::Float, Device::Cpu))),
            0.0
        );
    }

    #[test]
    fn a_transposed_matrix_is_compared_entry_for_entry() {
        let rows = Tensor::arange(12, (Kind::Float, Device::Cpu)).reshape([3, 4]);
        let transposed = rows.transpose(0, 1).contiguous().transpose(0, 1);
        assert!(in_memory_order(&transposed).is_contiguous());
        assert_eq!(
            max_abs_difference_of_sum(&transposed, &[rows.copy()]),
            (0.0, 11.0)
        );
        let off = rows.copy();
        let _ = off.get(2).get(1).fill_(100.0);
        let (difference, _) = max_abs_difference_of_sum(&transposed, &[off.shallow_clone()]);
        assert_eq!(difference, 91.0);
        // Two parts, one transposed, summed before the difference.
        let half = &rows / 2.0;
        let parts = [
            half.shallow_clone(),
            half.transpose(0, 1).contiguous().transpose(0, 1),
        ];
        assert_eq!(max_abs_difference_of_sum(&rows, &parts), (0.0, 11.0));
    }

    #[test]
    fn non_finite_entries_must_agree() {
        let reference = Tensor::from_slice(&[f32::NEG_INFINITY, 1.0]);
        assert!(compare(&reference.copy(), &reference, None).within(0.0));
        let finite = Tensor::from_slice(&[-3.0e38f32, 1.0]);
        assert_eq!(
            compare(&finite, &reference, None),
            Comparison::NonFiniteMismatch { count: 1 }
        );
        assert_eq!(
            compare(&reference, &finite, None),
            Comparison::NonFiniteMismatch { count: 1 }
        );
    }

    #[test]
    fn shapes_must_agree_and_masks_restrict() {
        let a = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
        assert!(matches!(
            compare(&a, &a.reshape([3, 2]), None),
            Comparison::ShapeMismatch { .. }
        ));
        let b = a.copy();
        let _ = b.get(1).fill_(5.0);
        let keep = Tensor::from_slice(&[true, false]).unsqueeze(1);
        assert!(compare(&a, &b, Some(&keep)).within(0.0));
        assert!(!compare(&a, &b, None).within(0.5));
    }
}
