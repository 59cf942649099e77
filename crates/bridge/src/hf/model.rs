//! `Gpt2LMHeadModel`: HuggingFace's GPT-2 with its own parameter names, layouts, masks, position
//! ids, loss, KV cache and generation. No hooks: the HF tier the bridge is checked against.

use lens_core::generation::generate_with;
use lens_core::model::{GenerateOptions, ModelError, ModelResult};
use lens_core::{Gpt2Config, HfConfig, Weights};
use tch::{Device, Kind, Tensor};

use crate::hf::forward::{self, PassInput};
use crate::hf::kv_cache::KvCache;
use crate::hf::mask;
use crate::hf::params::Gpt2Params;
use crate::input;
use crate::loss;
use crate::tap::{NoTap, Tap};

/// The arguments of [`Gpt2LMHeadModel::forward`], named as HuggingFace names them.
#[derive(Debug, Default)]
pub struct HfForward<'a> {
    /// `[b, q]` (or `[q]`) token ids.
    pub input_ids: Option<&'a Tensor>,
    /// `[b, past + q]`: 1 for real tokens, 0 for padding. `None`: all real.
    pub attention_mask: Option<&'a Tensor>,
    /// `[b | 1, q]`. `None`: `past..past + q` for every row, as `GPT2Model` does (it does not
    /// look at the mask; [`hf_position_ids`](crate::hf_position_ids) gives what `generate`
    /// passes for left-padded batches).
    pub position_ids: Option<&'a Tensor>,
    /// `[b, q]` labels for the loss (`-100` = ignored); HuggingFace shifts them itself.
    pub labels: Option<&'a Tensor>,
    /// Keys and values of earlier positions; the new ones are appended.
    pub past_key_values: Option<&'a mut KvCache>,
    /// Return `hidden_states`.
    pub output_hidden_states: bool,
}

/// What [`Gpt2LMHeadModel::forward`] returns.
#[derive(Debug)]
pub struct HfOutput {
    /// `[b, q, vocab]`.
    pub logits: Tensor,
    /// The mean shifted cross-entropy, when labels were given.
    pub loss: Option<Tensor>,
    /// With `output_hidden_states`: `n_layer + 1` tensors `[b, q, d]`, the input of every block
    /// (entry 0 is `wte + wpe`), then `ln_f` of the last block's output.
    pub hidden_states: Vec<Tensor>,
}

/// HuggingFace's `GPT2LMHeadModel` (eager attention, eval mode).
pub struct Gpt2LMHeadModel {
    config: Gpt2Config,
    params: Gpt2Params,
}

impl std::fmt::Debug for Gpt2LMHeadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpt2LMHeadModel")
            .field("n_layer", &self.config.n_layer)
            .field("n_embd", &self.config.n_embd)
            .field("vocab_size", &self.config.vocab_size)
            .field("kind", &self.params.kind())
            .field("device", &self.params.device())
            .finish()
    }
}

impl Gpt2LMHeadModel {
    /// Loads a model by name (a local directory, an embedded model such as `tiny-gpt2`, or a
    /// HuggingFace hub id; see [`lens_core::ModelSource`]) on `device` in `kind`.
    ///
    /// Errors: [`ModelError::DeviceUnavailable`] for a device this machine lacks,
    /// [`ModelError::Load`] for anything about the files, [`ModelError::Unsupported`] for a
    /// config that is not GPT-2.
    pub fn from_pretrained(model: &str, device: Device, kind: Kind) -> ModelResult<Self> {
        let loaded = input::load_checked(model, device, kind)?;
        let config = gpt2_config(&loaded.config)?;
        Self::from_weights(config, loaded.weights, device, kind)
    }

    /// A model from a parsed config and its checkpoint's tensors (HuggingFace names).
    pub fn from_weights(
        config: Gpt2Config,
        mut weights: Weights,
        device: Device,
        kind: Kind,
    ) -> ModelResult<Self> {
        input::check_device(device)?;
        input::check_float_kind(kind)?;
        let params = Gpt2Params::from_weights(&config, &mut weights, device, kind)?;
        Ok(Gpt2LMHeadModel { config, params })
    }

    /// The HuggingFace config.
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// The parameters, under their HuggingFace names.
    pub fn params(&self) -> &Gpt2Params {
        &self.params
    }

    pub(crate) fn params_mut(&mut self) -> &mut Gpt2Params {
        &mut self.params
    }

    /// A parameter by its HuggingFace name (`transformer.h.0.attn.c_attn.weight`, ...), sharing
    /// storage with the model's (`lm_head.weight` is `wte` while tied).
    pub fn parameter(&self, name: &str) -> ModelResult<Tensor> {
        self.params.get(name)
    }

    /// Where the parameters live.
    pub fn device(&self) -> Device {
        self.params.device()
    }

    /// The parameters' dtype.
    pub fn kind(&self) -> Kind {
        self.params.kind()
    }

    /// HuggingFace's `forward`: logits, and the loss when `labels` are given, and hidden states
    /// on request.
    pub fn forward(&self, args: HfForward<'_>) -> ModelResult<HfOutput> {
        let ids = args
            .input_ids
            .ok_or_else(|| ModelError::InvalidInput("input_ids are required".into()))?;
        let labels = args.labels;
        let output_hidden_states = args.output_hidden_states;
        let pass = self.pass(
            &NoTap,
            ids,
            args.attention_mask,
            args.position_ids,
            args.past_key_values,
            output_hidden_states,
        )?;
        let logits = pass
            .logits
            .ok_or_else(|| ModelError::InvalidInput("the pass did not reach the logits".into()))?;
        let loss = match labels {
            Some(labels) => {
                if labels.size()[..] != logits.size()[..2] {
                    return Err(ModelError::InvalidInput(format!(
                        "labels have shape {:?}, expected {:?}",
                        labels.size(),
                        &logits.size()[..2]
                    )));
                }
                Some(loss::hf_causal_lm_loss(&logits, labels))
            }
            None => None,
        };
        Ok(HfOutput {
            logits,
            loss,
            hidden_states: pass.hidden_states,
        })
    }

    /// Checks the inputs and runs one pass with `tap` (shared with the bridge).
    pub(crate) fn pass<T: Tap>(
        &self,
        tap: &T,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        cache: Option<&mut KvCache>,
        output_hidden_states: bool,
    ) -> ModelResult<forward::PassOutput> {
        let past_len = cache.as_ref().map_or(0, |c| c.len());
        let inputs = self.check_inputs(input_ids, attention_mask, position_ids, past_len)?;
        self.pass_checked(tap, &inputs, cache, output_hidden_states, None)
    }

    /// The names [`Gpt2LMHeadModel::run_component`] accepts.
    pub fn component_names(&self) -> Vec<String> {
        forward::component_names(self.params.h.len(), true)
    }

    /// Runs one component alone on `input`, HuggingFace's way (see
    /// [`Gpt2LMHeadModel::component_names`]): token ids for `embed`, position ids for
    /// `pos_embed`, hidden states `[b, p, d]` for the others (`blocks.{l}.attn` starts at the
    /// residual: ln_1, then attention with a causal mask).
    pub fn run_component(&self, name: &str, input: &Tensor) -> ModelResult<Tensor> {
        self.run_component_with(&NoTap, name, input)
    }

    pub(crate) fn run_component_with<T: Tap>(
        &self,
        tap: &T,
        name: &str,
        input: &Tensor,
    ) -> ModelResult<Tensor> {
        forward::component(&self.config, &self.params, tap, name, input)
    }

    /// Checks a pass's inputs and brings them to the model's device: token ids (range, length
    /// with `past_len` cached positions), the attention mask over cached and new positions, and
    /// position ids (HuggingFace's default without them: `past_len..`).
    pub(crate) fn check_inputs(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        past_len: i64,
    ) -> ModelResult<CheckedInputs> {
        let device = self.device();
        let ids = input::tokens(
            input_ids,
            self.config.vocab_size,
            self.config.n_ctx,
            past_len,
            device,
        )?;
        let (batch, q_len) = (ids.size()[0], ids.size()[1]);
        let mask = input::attention_mask(attention_mask, batch, past_len + q_len, device)?;
        let positions = match position_ids {
            Some(p) => input::position_ids(p, batch, q_len, self.config.n_positions, device)?,
            None => mask::arange_positions(batch, q_len, past_len, device),
        };
        Ok(CheckedInputs {
            ids,
            mask,
            positions,
        })
    }

    /// One pass over inputs from [`Gpt2LMHeadModel::check_inputs`], stopping before block
    /// `stop_at_layer`.
    pub(crate) fn pass_checked<T: Tap>(
        &self,
        tap: &T,
        inputs: &CheckedInputs,
        cache: Option<&mut KvCache>,
        output_hidden_states: bool,
        stop_at_layer: Option<usize>,
    ) -> ModelResult<forward::PassOutput> {
        let batch = inputs.ids.size()[0];
        if let Some(cache) = cache.as_ref() {
            if let Some((k, _)) = cache.layer(0) {
                if k.size()[0] != batch {
                    return Err(ModelError::InvalidInput(format!(
                        "the KV cache holds a batch of {}, the input has {batch}",
                        k.size()[0]
                    )));
                }
            }
        }
        forward::forward(
            &self.config,
            &self.params,
            tap,
            PassInput {
                input_ids: &inputs.ids,
                position_ids: &inputs.positions,
                attention_mask: inputs.mask.as_ref(),
                cache,
                stop_at_layer,
                output_hidden_states,
            },
        )
    }

    /// HuggingFace's `generate`: greedy (or sampled, see [`GenerateOptions`]) continuation of
    /// `input_ids` `[b, p]`, with `attention_mask` for left-padded batches. Position ids are
    /// `cumsum(mask) - 1` with padding at 1; finished rows are padded with EOS. Returns prompt
    /// and continuation.
    pub fn generate(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        options: &GenerateOptions,
    ) -> ModelResult<Tensor> {
        generate_hf_style(
            |ids, mask, positions, cache| {
                let pass = self.pass(&NoTap, ids, mask, Some(positions), cache, false)?;
                pass.logits
                    .ok_or_else(|| ModelError::InvalidInput("no logits".into()))
            },
            input_ids,
            attention_mask,
            options,
            self.config.eos_token_id,
            self.device(),
            None,
        )
    }
}

/// A pass's inputs, checked and on the model's device (see
/// [`Gpt2LMHeadModel::check_inputs`]).
pub(crate) struct CheckedInputs {
    /// `[b, q]` int64 token ids.
    pub ids: Tensor,
    /// `[b, past + q]` int64, 1 for real tokens; `None`: every token is real.
    pub mask: Option<Tensor>,
    /// `[b | 1, q]` int64 position ids.
    pub positions: Tensor,
}

/// The GPT-2 config of `config`, or [`ModelError::Unsupported`].
pub(crate) fn gpt2_config(config: &HfConfig) -> ModelResult<Gpt2Config> {
    config.as_gpt2().cloned().ok_or_else(|| {
        ModelError::Unsupported(format!(
            "architecture {} (only GPT2LMHeadModel is implemented)",
            config.architecture()
        ))
    })
}

/// The generation loop with HuggingFace's inputs at each step: the new tokens only (with a KV
/// cache) or everything (without), the full attention mask, and position ids
/// `cumsum(mask) - 1` (padding at 1) for the positions fed. `step(ids, mask, positions, cache)`
/// returns logits `[b, q, vocab]`. `restart_cache_past`: a sequence length past which a cache
/// filled no further is dropped and everything recomputed (Phi-3's `longrope` switch).
#[allow(clippy::too_many_arguments)]
pub(crate) fn generate_hf_style(
    mut step: impl FnMut(&Tensor, Option<&Tensor>, &Tensor, Option<&mut KvCache>) -> ModelResult<Tensor>,
    input_ids: &Tensor,
    attention_mask: Option<&Tensor>,
    options: &GenerateOptions,
    default_eos: Option<i64>,
    device: Device,
    restart_cache_past: Option<i64>,
) -> ModelResult<Tensor> {
    let eos = options.eos_token_id.or(default_eos).ok_or_else(|| {
        ModelError::InvalidInput(
            "no EOS token id: the config has none and GenerateOptions::eos_token_id is unset"
                .into(),
        )
    })?;
    let ids = if input_ids.dim() == 1 {
        input_ids.unsqueeze(0)
    } else {
        input_ids.shallow_clone()
    };
    let ids = ids.to_device(device);
    let mask = attention_mask.map(|m| {
        if m.dim() == 1 {
            m.unsqueeze(0)
        } else {
            m.shallow_clone()
        }
        .to_device(device)
    });
    let mut cache = options.use_past_kv_cache.then(KvCache::new);
    let _guard = tch::no_grad_guard();
    generate_with(&ids, mask.as_ref(), options, eos, |all, mask, n_new| {
        let total = all.size()[1];
        // Phi-3's `prepare_inputs_for_generation`: when the sequence first reaches past the
        // pretraining context, the cache (rotated with the short `longrope` factors) is dropped
        // and everything recomputed with the long ones.
        if let (Some(limit), Some(c)) = (restart_cache_past, cache.as_ref()) {
            if total > limit && c.len() <= limit {
                cache = Some(KvCache::new());
            }
        }
        // An empty cache (the first step, or after the restart) takes the whole sequence.
        let fed = match &cache {
            Some(c) if !c.is_empty() => n_new,
            _ => total,
        };
        let input = all.narrow(1, total - fed, fed);
        let positions = match mask {
            Some(m) => mask::hf_position_ids(m).narrow(1, total - fed, fed),
            None => mask::arange_positions(all.size()[0], fed, total - fed, all.device()),
        };
        let logits = step(&input, mask, &positions, cache.as_mut())?;
        Ok(logits.select(1, -1))
    })
}
