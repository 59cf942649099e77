//! The checks every family's config runs, each error naming the key and its value.

use super::llama::invalid;
use crate::error::Result;

/// Every size named in `sizes` is positive.
pub(crate) fn positive(sizes: &[(&str, i64)]) -> Result<()> {
    match sizes.iter().find(|(_, value)| *value <= 0) {
        Some((name, value)) => Err(invalid(format!("{name} must be positive, got {value}"))),
        None => Ok(()),
    }
}

/// `value` (key `name`) is a whole multiple of `of` (key `of_name`).
pub(crate) fn multiple_of(name: &str, value: i64, of_name: &str, of: i64) -> Result<()> {
    if value % of == 0 {
        Ok(())
    } else {
        Err(invalid(format!(
            "{name} ({value}) must be a multiple of {of_name} ({of})"
        )))
    }
}

/// `value` (key `name`, an epsilon or a base) is positive and finite.
pub(crate) fn positive_finite(name: &str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(invalid(format!(
            "{name} must be positive and finite, got {value}"
        )))
    }
}

/// Every special token id named in `ids` is inside a vocabulary of `vocab_size`.
pub(crate) fn ids_in_vocabulary(vocab_size: i64, ids: &[(&str, Option<i64>)]) -> Result<()> {
    for (name, id) in ids {
        if let Some(id) = id.filter(|&id| id < 0 || id >= vocab_size) {
            return Err(invalid(format!(
                "{name} ({id}) is outside the vocabulary (vocab_size {vocab_size})"
            )));
        }
    }
    Ok(())
}
