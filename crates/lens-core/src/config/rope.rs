//! Rotary embeddings as the Llama-family configs describe them: the frequency scalings of
//! transformers' `ROPE_INIT_FUNCTIONS` this workspace implements (`default`, `linear`,
//! `llama3`; Phi-3's `longrope`), and the helpers that read them from a config's JSON.

use serde_json::Value;

use super::llama::invalid;
use crate::error::Result;

/// How rotary frequencies are scaled (`rope_type` of transformers' `ROPE_INIT_FUNCTIONS`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// `default`: `theta^(-2i/d)`.
    None,
    /// `linear`: every frequency divided by `factor` (positions interpolated).
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// `llama3`: low frequencies divided by `factor`, high ones kept, a smooth blend between.
    Llama3 {
        /// The divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context length the model was pretrained with.
        original_max_position_embeddings: f64,
    },
}

impl RopeScaling {
    /// The inverse frequencies `[dim / 2]` of transformers' `ROPE_INIT_FUNCTIONS`, in f32:
    /// `1 / theta^(2i/dim)`, then divided by the factor (`linear`) or blended by wavelength
    /// (`llama3`, NTK-by-parts).
    pub fn inverse_frequencies(&self, theta: f64, dim: i64, device: tch::Device) -> tch::Tensor {
        use tch::{Kind, Tensor};
        let exponents = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, device))
            .to_kind(Kind::Float)
            / dim as f64;
        let inv_freq = Tensor::pow_scalar(theta, &exponents).reciprocal();
        match *self {
            RopeScaling::None => inv_freq,
            RopeScaling::Linear { factor } => inv_freq / factor,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_context,
            } => {
                let low_freq_wavelen = old_context / low_freq_factor;
                let high_freq_wavelen = old_context / high_freq_factor;
                let wavelen = inv_freq.reciprocal() * (2.0 * std::f64::consts::PI);
                let long = wavelen.gt(low_freq_wavelen);
                let scaled = (&inv_freq / factor).where_self(&long, &inv_freq);
                let smooth = (wavelen.reciprocal() * old_context - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                let smoothed =
                    (smooth.ones_like() - &smooth) * &scaled / factor + &smooth * &scaled;
                let medium = wavelen
                    .lt(high_freq_wavelen)
                    .logical_not()
                    .logical_and(&long.logical_not());
                smoothed.where_self(&medium, &scaled)
            }
        }
    }
}

/// The rotary embedding of the attention.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    /// The base `theta` (`rope_theta`, default 10000).
    pub theta: f64,
    /// Its scaling.
    pub scaling: RopeScaling,
}

/// Phi-3's `longrope` frequencies (transformers' `_compute_longrope_parameters`): the default
/// inverse frequencies divided per dimension by `short_factor`, or by `long_factor` once a pass
/// reaches past `original_max_position_embeddings` (`max(position_ids) + 1` longer), and sines
/// and cosines times `attention_factor`.
#[derive(Clone, Debug, PartialEq)]
pub struct LongRope {
    /// Per rotated pair, the divisor up to `original_max_position_embeddings` positions.
    pub short_factor: Vec<f64>,
    /// Per rotated pair, the divisor beyond.
    pub long_factor: Vec<f64>,
    /// The context length the model was pretrained with.
    pub original_max_position_embeddings: i64,
    /// The factor of the sines and cosines (`attention_factor`, by default
    /// `sqrt(1 + ln(factor) / ln(original_max_position_embeddings))` with `factor` the context
    /// extension `max_position_embeddings / original_max_position_embeddings`, or 1 without one).
    pub attention_factor: f64,
}

impl LongRope {
    /// Whether a pass whose largest position id is `max_position` uses the long factors.
    pub fn is_long(&self, max_position: i64) -> bool {
        max_position + 1 > self.original_max_position_embeddings
    }

    /// The inverse frequencies `[dim / 2]` in f32: `1 / (factor_i * theta^(2i / dim))`.
    pub fn inverse_frequencies(
        &self,
        theta: f64,
        dim: i64,
        long: bool,
        device: tch::Device,
    ) -> tch::Tensor {
        use tch::{Kind, Tensor};
        let factors = if long {
            &self.long_factor
        } else {
            &self.short_factor
        };
        let factors = Tensor::from_slice(factors)
            .to_kind(Kind::Float)
            .to_device(device);
        let exponents = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, device))
            .to_kind(Kind::Float)
            / dim as f64;
        (factors * Tensor::pow_scalar(theta, &exponents)).reciprocal()
    }
}

pub(crate) fn number(
    object: &serde_json::Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<f64> {
    object
        .get(key)
        .and_then(Value::as_f64)
        .ok_or_else(|| invalid(format!("{what} needs a number '{key}'")))
}

/// The frequency scaling a `rope_parameters` / `rope_scaling` object names (`rope_type`, or
/// `type` in earlier files; `default` when absent).
pub(crate) fn rope_scaling(
    scaling: Option<&serde_json::Map<String, Value>>,
) -> Result<RopeScaling> {
    let kind = scaling
        .and_then(|s| s.get("rope_type").or_else(|| s.get("type")))
        .and_then(Value::as_str)
        .unwrap_or("default");
    Ok(match (kind, scaling) {
        ("default", _) | (_, None) => RopeScaling::None,
        ("linear", Some(s)) => RopeScaling::Linear {
            factor: number(s, "factor", "linear rope scaling")?,
        },
        ("llama3", Some(s)) => RopeScaling::Llama3 {
            factor: number(s, "factor", "llama3 rope scaling")?,
            low_freq_factor: number(s, "low_freq_factor", "llama3 rope scaling")?,
            high_freq_factor: number(s, "high_freq_factor", "llama3 rope scaling")?,
            original_max_position_embeddings: number(
                s,
                "original_max_position_embeddings",
                "llama3 rope scaling",
            )?,
        },
        (other, Some(_)) => {
            return Err(invalid(format!(
                "rope type '{other}' is not supported (supported: default, linear, llama3)"
            )))
        }
    })
}

/// A rotary base from an optional number, positive and finite.
pub(crate) fn theta(value: Option<f64>, default: f64, key: &str) -> Result<f64> {
    let theta = value.unwrap_or(default);
    if theta.is_finite() && theta > 0.0 {
        Ok(theta)
    } else {
        Err(invalid(format!(
            "{key} must be positive and finite, got {theta}"
        )))
    }
}

/// An object-valued key, or `None` when absent or `null`.
pub(crate) fn object<'a>(
    value: &'a Option<Value>,
    key: &str,
) -> Result<Option<&'a serde_json::Map<String, Value>>> {
    match value {
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(Value::Null) | None => Ok(None),
        Some(other) => Err(invalid(format!("{key} must be an object, got {other}"))),
    }
}
