//! Weight processing of the HookedTransformer, through the one implementation in lens-core.

pub use lens_core::processing::ProcessingOptions;

use lens_core::config::NormPlacement;
use lens_core::processing::{applicable, ProcessingTraits};

use crate::config::NormType;
use crate::model::HookedTransformer;

impl HookedTransformer {
    /// Applies `options` to the weights in place (TransformerLens's `process_weights`), with
    /// TransformerLens's rules for what applies: fold_ln folds a LayerNorm's weight and bias (and
    /// centres the weights it folds into) but only an RMSNorm's weight, turning LN into LNPre and
    /// RMS into RMSPre; center_writing_weights applies to LayerNorm models only (an RMSNorm does not
    /// remove the mean, so centring what writes to the residual would change the model); and
    /// TransformerLens's refusals ([`lens_core::processing::applicable`]): no fold_ln or
    /// centring for post-norm architectures (OLMo-2, OPT-350m), no center_unembed under a logit soft cap
    /// (Gemma 2), each said in [`HookedTransformer::processing_notes`].
    ///
    /// # Errors
    /// `refactor_factored_attn_matrices` where it does not apply (rotary attention, q/k norms).
    pub fn process_weights(&mut self, options: ProcessingOptions) -> crate::Result<()> {
        let notes = {
            let cfg = self.cfg();
            let traits = ProcessingTraits {
                architecture: &cfg.original_architecture,
                rms_norm: !cfg.normalization_type.centres(),
                norms_after_sublayers: cfg.norm_placement == NormPlacement::After
                    || cfg.norms_on_residual,
                logits_soft_capped: cfg.output_logits_soft_cap.is_some(),
                no_final_norm: !cfg.final_norm,
            };
            let (applied, notes) = applicable(options, &traits);
            (applied, notes)
        };
        let (options, notes) = notes;
        self.processing_notes = notes;
        let (params, cfg) = self.params_and_cfg_mut();
        let fold_ln = options.fold_ln
            && matches!(cfg.normalization_type, NormType::LayerNorm | NormType::Rms);
        let options = ProcessingOptions { fold_ln, ..options };
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

    /// What the last [`HookedTransformer::process_weights`] turned off and why.
    pub fn processing_notes(&self) -> &[String] {
        &self.processing_notes
    }
}
