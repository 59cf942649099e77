//! Compatibility mode: TransformerLens's weight processing (fold_ln, center_writing_weights,
//! center_unembed, fold_value_biases) by lens-core's one implementation, on TransformerLens-layout
//! views of the HuggingFace parameters, then written back through the same views.

use lens_core::model::{ModelError, ModelResult};
use lens_core::processing::{applicable, process_weights, ProcessingOptions};
use lens_core::tl_params::{AttentionParams, BlockParams, LayerNormParams, MlpParams, Params};
use lens_core::weight_map;
use std::collections::BTreeMap;
use tch::Tensor;

use crate::bridge::adapter::{ArchitectureAdapter, Gpt2Adapter};
use crate::hf::{Gpt2Params, HfModel};
use crate::TransformerBridge;
use lens_core::model::LensModel;

/// The options of [`TransformerBridge::enable_compatibility_mode`](crate::TransformerBridge::enable_compatibility_mode),
/// TransformerLens's. `Default` is TransformerLens's default: full processing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompatibilityOptions {
    /// Fold each LayerNorm's weight and bias into the weights reading its output (the
    /// LayerNorms then have weight 1 and bias 0).
    pub fold_ln: bool,
    /// Remove the mean over d_model from every weight writing to the residual stream.
    pub center_writing_weights: bool,
    /// Remove the mean over the vocabulary from the unembedding (log-probs are unchanged,
    /// logits shift per position).
    pub center_unembed: bool,
    /// Move the value biases into the attention output bias.
    pub fold_value_biases: bool,
    /// Re-factor each head's `W_Q W_K^T` and `W_V W_O` by SVD into balanced factors (outputs
    /// unchanged; off by default, as in TransformerLens).
    pub refactor_factored_attn_matrices: bool,
    /// Process nothing (the other options are ignored).
    pub no_processing: bool,
}

impl Default for CompatibilityOptions {
    fn default() -> Self {
        CompatibilityOptions {
            fold_ln: true,
            center_writing_weights: true,
            center_unembed: true,
            fold_value_biases: true,
            refactor_factored_attn_matrices: false,
            no_processing: false,
        }
    }
}

/// The bridge's weights as TransformerLens-layout tensors (views of the HF parameters, detached).
fn read(adapter: &Gpt2Adapter, p: &Gpt2Params) -> ModelResult<Params> {
    let get = |name: &str| -> ModelResult<Tensor> { Ok(adapter.tl_weight(p, name)?.detach()) };
    let ln = |prefix: &str| -> ModelResult<Option<LayerNormParams>> {
        Ok(Some(LayerNormParams {
            w: get(&format!("{prefix}.w"))?,
            b: Some(get(&format!("{prefix}.b"))?),
        }))
    };
    let mut blocks = Vec::with_capacity(p.h.len());
    for l in 0..p.h.len() {
        let g = |n: &str| get(&format!("blocks.{l}.{n}"));
        blocks.push(BlockParams {
            ln1: ln(&format!("blocks.{l}.ln1"))?,
            attn: AttentionParams {
                W_Q: g("attn.W_Q")?,
                W_K: g("attn.W_K")?,
                W_V: g("attn.W_V")?,
                b_Q: g("attn.b_Q")?,
                b_K: g("attn.b_K")?,
                b_V: g("attn.b_V")?,
                W_O: g("attn.W_O")?,
                b_O: g("attn.b_O")?,
                q_norm: None,
                k_norm: None,
            },
            ln2: ln(&format!("blocks.{l}.ln2"))?,
            mlp: MlpParams {
                W_in: g("mlp.W_in")?,
                b_in: g("mlp.b_in")?,
                W_out: g("mlp.W_out")?,
                b_out: g("mlp.b_out")?,
                W_gate: None,
                b_gate: None,
            },
            ln1_post: None,
            ln2_post: None,
        });
    }
    Ok(Params {
        W_E: get("embed.W_E")?,
        W_project_in: None,
        W_pos: Some(get("pos_embed.W_pos")?),
        blocks,
        ln_final: ln("ln_final")?,
        W_project_out: None,
        W_U: get("unembed.W_U")?,
        b_U: get("unembed.b_U")?,
    })
}

/// Processes `p`'s weights in place as TransformerLens does: untie `lm_head` from `wte`, compute
/// in f32, write back (cast to the model's kind) through the adapter's views; folded LayerNorms
/// get weight 1 and bias 0.
pub(crate) fn process(
    adapter: &Gpt2Adapter,
    p: &mut Gpt2Params,
    options: &CompatibilityOptions,
) -> ModelResult<()> {
    if options.no_processing {
        return Ok(());
    }
    let _guard = tch::no_grad_guard();
    if p.is_tied() {
        p.lm_head = Some(p.wte.detach().copy().set_requires_grad(true));
    }
    if p.lm_head_bias.is_none() {
        let (v, kind, device) = (p.wte.size()[0], p.kind(), p.device());
        p.lm_head_bias = Some(Tensor::zeros([v], (kind, device)).set_requires_grad(true));
    }
    let processing = ProcessingOptions {
        fold_ln: options.fold_ln,
        center_writing_weights: options.center_writing_weights,
        center_unembed: options.center_unembed,
        fold_value_biases: options.fold_value_biases,
        refactor_factored_attn_matrices: options.refactor_factored_attn_matrices,
    };
    // The one implementation the HookedTransformer uses too, so both end with identical weights.
    let w = process_weights(&read(adapter, p)?, processing).map_err(ModelError::InvalidInput)?;
    write(adapter, p, w)
}

fn write(adapter: &Gpt2Adapter, p: &Gpt2Params, w: Params) -> ModelResult<()> {
    let set = |name: &str, value: &Tensor| -> ModelResult<()> {
        let mut view = adapter.tl_weight(p, name)?;
        view.f_copy_(&value.to_kind(view.kind()))?;
        Ok(())
    };
    // A folded LayerNorm stays in the HF model as the identity: weight 1, bias 0.
    let norm = |prefix: &str, ln: &Option<LayerNormParams>| -> ModelResult<()> {
        match ln {
            Some(ln) => {
                set(&format!("{prefix}.w"), &ln.w)?;
                match &ln.b {
                    Some(b) => set(&format!("{prefix}.b"), b),
                    None => Ok(()),
                }
            }
            None => {
                let _ = adapter.tl_weight(p, &format!("{prefix}.w"))?.f_fill_(1.0)?;
                let _ = adapter.tl_weight(p, &format!("{prefix}.b"))?.f_fill_(0.0)?;
                Ok(())
            }
        }
    };
    set("embed.W_E", &w.W_E)?;
    if let Some(w_pos) = &w.W_pos {
        set("pos_embed.W_pos", w_pos)?;
    }
    for (l, b) in w.blocks.iter().enumerate() {
        let n = |s: &str| format!("blocks.{l}.{s}");
        norm(&n("ln1"), &b.ln1)?;
        let a = &b.attn;
        for (name, t) in [
            ("W_Q", &a.W_Q),
            ("W_K", &a.W_K),
            ("W_V", &a.W_V),
            ("b_Q", &a.b_Q),
            ("b_K", &a.b_K),
            ("b_V", &a.b_V),
            ("W_O", &a.W_O),
            ("b_O", &a.b_O),
        ] {
            set(&n(&format!("attn.{name}")), t)?;
        }
        norm(&n("ln2"), &b.ln2)?;
        let m = &b.mlp;
        for (name, t) in [
            ("W_in", &m.W_in),
            ("b_in", &m.b_in),
            ("W_out", &m.W_out),
            ("b_out", &m.b_out),
        ] {
            set(&n(&format!("mlp.{name}")), t)?;
        }
    }
    norm("ln_final", &w.ln_final)?;
    set("unembed.W_U", &w.W_U)?;
    set("unembed.b_U", &w.b_U)?;
    Ok(())
}

impl TransformerBridge {
    /// Compatibility mode for the families described by their weight table (the Llama family,
    /// GPT-NeoX), as TransformerLens processes them: the unembedding untied from the embedding;
    /// every norm folded into the weights reading its output (an RMSNorm's weight; a
    /// LayerNorm's weight and bias), the norm left as the identity (weight 1, bias 0); writing
    /// weights centred for LayerNorm models only (RMSNorm does not remove the mean, so
    /// TransformerLens skips it); the unembedding centred; the value biases folded into the
    /// attention output bias (added when the checkpoint has none, as Qwen2's `o_proj`).
    pub(crate) fn process_by_table(&mut self, options: &CompatibilityOptions) -> ModelResult<()> {
        if options.no_processing {
            return Ok(());
        }
        let _guard = tch::no_grad_guard();
        self.weights = match &mut self.hf {
            HfModel::Llama(hf) => {
                let p = hf.params_mut();
                if p.lm_head.is_none() {
                    p.lm_head = Some(p.embed_tokens.detach().copy().set_requires_grad(true));
                }
                let mut untied = hf.config().clone();
                untied.tie_word_embeddings = false;
                weight_map::llama(&untied)
            }
            HfModel::GptNeox(hf) => {
                let p = hf.params_mut();
                if p.embed_out.is_none() {
                    p.embed_out = Some(p.embed_in.detach().copy().set_requires_grad(true));
                }
                let mut untied = hf.config().clone();
                untied.tie_word_embeddings = false;
                weight_map::gpt_neox(&untied)
            }
            HfModel::Opt(hf) => {
                let p = hf.params_mut();
                if p.lm_head.is_none() {
                    p.lm_head = Some(p.embed_tokens.detach().copy().set_requires_grad(true));
                }
                let mut untied = hf.config().clone();
                untied.tie_word_embeddings = false;
                weight_map::opt(&untied)
            }
            HfModel::GptNeo(hf) => {
                let p = hf.params_mut();
                if p.lm_head.is_none() {
                    p.lm_head = Some(p.wte.detach().copy().set_requires_grad(true));
                }
                let mut untied = hf.config().clone();
                untied.tie_word_embeddings = false;
                weight_map::gpt_neo(&untied)
            }
            HfModel::Parallel(hf) => {
                let p = hf.params_mut();
                if p.lm_head.is_none() {
                    p.lm_head = Some(p.embedding.detach().copy().set_requires_grad(true));
                }
                let mut untied = hf.config().clone();
                untied.tie_word_embeddings = false;
                weight_map::parallel(&untied)
            }
            HfModel::Gpt2(_) => {
                return Err(ModelError::Unsupported(
                    "GPT-2 is processed through its adapter".into(),
                ))
            }
        };
        let mut named = BTreeMap::new();
        for name in self.tl_weight_names() {
            let value = self.tl_weight(&name)?.detach();
            named.insert(name, value);
        }
        // What processing leaves as it was is not written back (a weight whose values differ
        // from its parameter's, Gemma's scaled `W_E`, would not round-trip to the last bit).
        let before: BTreeMap<String, Tensor> = named
            .iter()
            .map(|(name, t)| (name.clone(), t.shallow_clone()))
            .collect();
        let params = Params::from_named(&mut named).map_err(ModelError::InvalidInput)?;
        let requested = ProcessingOptions {
            fold_ln: options.fold_ln,
            center_writing_weights: options.center_writing_weights,
            center_unembed: options.center_unembed,
            fold_value_biases: options.fold_value_biases,
            refactor_factored_attn_matrices: options.refactor_factored_attn_matrices,
        };
        let (processing, notes) = applicable(requested, &self.hf.config().processing_traits());
        self.processing_notes = notes;
        // The one implementation the HookedTransformer uses too, so both end with identical weights.
        let w = process_weights(&params, processing).map_err(ModelError::InvalidInput)?;
        for (name, value) in w.named() {
            if before.get(&name).is_some_and(|old| old.equal(value)) {
                continue;
            }
            if self.tl_weight_is_constant(&name) {
                if self.equals_its_constant(&name, value)? {
                    continue;
                }
                self.add_bias(&name)?;
            }
            self.write_tl_weight(&name, value)?;
        }
        // A folded norm stays in the HF model as the identity: weight 1 (and bias 0), which is
        // a Gemma norm's stored 0.
        let mut folded: Vec<String> = Vec::new();
        for (l, b) in w.blocks.iter().enumerate() {
            for (ln, norm) in [("ln1", &b.ln1), ("ln2", &b.ln2)] {
                if norm.is_none() {
                    folded.push(format!("blocks.{l}.{ln}"));
                }
            }
        }
        if w.ln_final.is_none() {
            folded.push("ln_final".into());
        }
        // (A LayerNorm without parameters is the identity already.)
        let names = self.tl_weight_names();
        for norm in folded {
            let weight = format!("{norm}.w");
            let bias = format!("{norm}.b");
            let identity = [(weight, 1.0), (bias, 0.0)];
            for (name, fill) in identity {
                if !names.contains(&name) || self.tl_weight_is_constant(&name) {
                    continue;
                }
                let value = self.tl_weight(&name)?.full_like(fill);
                self.write_tl_weight(&name, &value)?;
            }
        }
        Ok(())
    }

    /// Whether `value` is what the checkpoint-less weight `name` already is (a zero bias, a
    /// parameterless LayerNorm's ones).
    fn equals_its_constant(&self, name: &str, value: &Tensor) -> ModelResult<bool> {
        Ok(self.tl_weight(name)?.equal(value))
    }

    /// Gives the parameter behind TransformerLens weight `name` a zero bias.
    fn add_bias(&mut self, name: &str) -> ModelResult<()> {
        let hf_name = self.weight_source(name)?.hf.clone();
        let added = match &mut self.hf {
            HfModel::Llama(hf) => hf.params_mut().add_zero_bias(&hf_name),
            HfModel::GptNeox(hf) => hf.params_mut().add_zero_bias(&hf_name),
            HfModel::Parallel(hf) => hf.params_mut().add_zero_bias(&hf_name),
            HfModel::GptNeo(hf) => hf.params_mut().add_zero_bias(&hf_name),
            HfModel::Opt(hf) => hf.params_mut().add_zero_bias(&hf_name),
            HfModel::Gpt2(_) => false,
        };
        if added {
            Ok(())
        } else {
            Err(ModelError::Unsupported(format!(
                "weight processing made {name} non-zero, but {hf_name} cannot be added"
            )))
        }
    }
}
