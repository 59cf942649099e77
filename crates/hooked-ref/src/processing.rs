//! Weight processing of the HookedTransformer, through the one implementation in lens-core.

pub use lens_core::processing::ProcessingOptions;

use crate::config::NormType;
use crate::model::HookedTransformer;

impl HookedTransformer {
    /// Applies `options` to the weights in place (TransformerLens's `process_weights`). Folded
    /// LayerNorms become LNPre.
    ///
    /// # Errors
    /// A processing step that does not apply (none at present for GPT-2).
    pub fn process_weights(&mut self, options: ProcessingOptions) -> crate::Result<()> {
        let (params, cfg) = self.params_and_cfg_mut();
        let fold_ln = options.fold_ln && cfg.normalization_type == NormType::LayerNorm;
        let options = ProcessingOptions { fold_ln, ..options };
        *params = lens_core::processing::process_weights(params, options)
            .map_err(crate::Error::InvalidInput)?;
        if fold_ln {
            cfg.normalization_type = NormType::LayerNormPre;
        }
        Ok(())
    }
}
