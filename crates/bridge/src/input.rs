//! Checks of user input: token batches, masks, position ids, devices and dtypes. Every error
//! names what was wrong and what was expected.

use lens_core::model::{ModelError, ModelResult};
use tch::{Device, Kind, Tensor};

fn is_integer(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8
    )
}

pub(crate) use lens_core::model::check_device;

/// Checks that `kind` is a floating-point kind a model can hold (f32, f16, bf16, f64).
pub(crate) fn check_float_kind(kind: Kind) -> ModelResult<()> {
    match kind {
        Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double => Ok(()),
        other => Err(ModelError::InvalidInput(format!(
            "model dtype must be f32, f16, bf16 or f64, got {other:?}"
        ))),
    }
}

/// A checkpoint loaded for a model on `device` in `kind`, both checked first.
pub(crate) fn load_checked(
    model: &str,
    device: Device,
    kind: Kind,
) -> ModelResult<lens_core::LoadedModel> {
    check_device(device)?;
    check_float_kind(kind)?;
    let options = lens_core::LoadOptions {
        kind: Some(kind),
        device,
        ..lens_core::LoadOptions::default()
    };
    Ok(lens_core::load(model, &options)?)
}

/// Checks a token batch `[b, p]` (or `[p]`) against the vocabulary and context; returns it as
/// `[b, p]` int64 on `device`. `past_len` positions are already cached.
pub(crate) fn tokens(
    tokens: &Tensor,
    vocab: i64,
    n_ctx: i64,
    past_len: i64,
    device: Device,
) -> ModelResult<Tensor> {
    let tokens = match tokens.dim() {
        1 => tokens.unsqueeze(0),
        2 => tokens.shallow_clone(),
        rank => {
            return Err(ModelError::InvalidInput(format!(
                "tokens must be [batch, pos] or [pos], got shape {:?} (rank {rank})",
                tokens.size()
            )))
        }
    };
    if tokens.numel() == 0 {
        return Err(ModelError::EmptyInput);
    }
    if !is_integer(tokens.kind()) {
        return Err(ModelError::InvalidInput(format!(
            "tokens must be integers, got {:?}",
            tokens.kind()
        )));
    }
    let len = past_len + tokens.size()[1];
    if len > n_ctx {
        return Err(ModelError::TooLong { len, n_ctx });
    }
    let (min, max) = (tokens.min().int64_value(&[]), tokens.max().int64_value(&[]));
    if min < 0 || max >= vocab {
        return Err(ModelError::InvalidInput(format!(
            "token ids must be in [0, {vocab}), got values in {min}..={max}"
        )));
    }
    Ok(tokens.to_kind(Kind::Int64).to_device(device))
}

/// Checks an attention mask against the batch and the total length (cached positions
/// included); returns it as int64 on `device`.
pub(crate) fn attention_mask(
    mask: Option<&Tensor>,
    batch: i64,
    total_len: i64,
    device: Device,
) -> ModelResult<Option<Tensor>> {
    let Some(mask) = mask else { return Ok(None) };
    let mask = if mask.dim() == 1 {
        mask.unsqueeze(0)
    } else {
        mask.shallow_clone()
    };
    if mask.size() != [batch, total_len] {
        return Err(ModelError::InvalidInput(format!(
            "attention_mask has shape {:?}, expected [{batch}, {total_len}] (batch, positions incl. cached ones)",
            mask.size()
        )));
    }
    if !(is_integer(mask.kind()) || mask.kind() == Kind::Bool) {
        return Err(ModelError::InvalidInput(format!(
            "attention_mask must be integer or bool (1/true = real token), got {:?}",
            mask.kind()
        )));
    }
    Ok(Some(mask.to_kind(Kind::Int64).to_device(device)))
}

/// Checks explicit position ids `[b | 1, q]` against the positional embedding.
pub(crate) fn position_ids(
    positions: &Tensor,
    batch: i64,
    q_len: i64,
    n_positions: i64,
    device: Device,
) -> ModelResult<Tensor> {
    let positions = if positions.dim() == 1 {
        positions.unsqueeze(0)
    } else {
        positions.shallow_clone()
    };
    let shape = positions.size();
    if shape.len() != 2 || shape[1] != q_len || !(shape[0] == batch || shape[0] == 1) {
        return Err(ModelError::InvalidInput(format!(
            "position_ids has shape {shape:?}, expected [{batch}, {q_len}] or [1, {q_len}]"
        )));
    }
    if !is_integer(positions.kind()) {
        return Err(ModelError::InvalidInput(format!(
            "position_ids must be integers, got {:?}",
            positions.kind()
        )));
    }
    let (min, max) = (
        positions.min().int64_value(&[]),
        positions.max().int64_value(&[]),
    );
    if min < 0 || max >= n_positions {
        return Err(ModelError::InvalidInput(format!(
            "position ids must be in [0, {n_positions}), got values in {min}..={max}"
        )));
    }
    Ok(positions
        .to_kind(Kind::Int64)
        .to_device(device)
        .expand([batch, q_len], false))
}
