//! Weight processing of the HookedTransformer, through the one implementation in lens-core.

pub use lens_core::processing::ProcessingOptions;

use crate::config::NormType;
use crate::model::HookedTransformer;

impl HookedTransformer {
    /// Applies `options` to the weights in place (TransformerLens's `process_weights`), with
    /// TransformerLens's rules for what applies: fold_ln folds a LayerNorm's weight and bias (and
    /// centres the weights it folds into) but only an RMSNorm's weight, turning LN into LNPre and
    /// RMS into RMSPre; center_writing_weights applies to LayerNorm models only (an RMSNorm does not
    /// remove the mean, so centring what writes to the residual would change the model).
    ///
    /// # Errors
    /// None at present; the `Result` leaves room for steps that do not apply to a model.
    pub fn process_weights(&mut self, options: ProcessingOptions) -> crate::Result<()> {
        let (params, cfg) = self.params_and_cfg_mut();
        let fold_ln = options.fold_ln
            && matches!(cfg.normalization_type, NormType::LayerNorm | NormType::Rms);
        let center_writing_weights =
            options.center_writing_weights && cfg.normalization_type.centres();
        let options = ProcessingOptions {
            fold_ln,
            center_writing_weights,
            ..options
        };
        *params = lens_core::processing::process_weights(params, options)
            .map_err(crate::Error::InvalidInput)?;
        if fold_ln {
            cfg.normalization_type = match cfg.normalization_type {
                NormType::Rms => NormType::RmsPre,
                _ => NormType::LayerNormPre,
            };
        }
        self.restack();
        Ok(())
    }
}
