//! What HuggingFace's rotary decoders (the Llama family, GPT-NeoX) do the same way around their
//! own pass: checking inputs (no position table, so no length limit), `forward` with its loss
//! and hidden states, and `generate`. A family implements [`RotaryDecoder`] with its pass and
//! gets the rest.

use lens_core::model::{GenerateOptions, ModelError, ModelResult};
use tch::{Device, Tensor};

use crate::hf::forward::PassOutput;
use crate::hf::kv_cache::KvCache;
use crate::hf::mask;
use crate::hf::model::{generate_hf_style, CheckedInputs, HfForward, HfOutput};
use crate::input;
use crate::loss;
use crate::tap::{NoTap, Site, Tap};

/// One component of a decoder, as [`RotaryDecoder::run_component_with`] names it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Part<'a> {
    /// `ln_final`.
    LnFinal,
    /// `blocks.{l}` (`""`) or one of its parts (`ln1`, `attn`, `ln2`, `mlp`).
    Block(usize, &'a str),
}

/// A rotary decoder: its vocabulary, device, EOS, its components and one pass over checked
/// inputs.
pub(crate) trait RotaryDecoder {
    /// The vocabulary size (token ids are checked against it).
    fn vocab_size(&self) -> i64;
    /// Where the parameters live.
    fn device(&self) -> Device;
    /// The end-of-sequence token generation stops at by default.
    fn eos_token_id(&self) -> Option<i64>;
    /// One pass with `tap` at every site, stopping before block `stop_at_layer`.
    fn pass<T: Tap>(
        &self,
        tap: &T,
        inputs: &CheckedInputs,
        cache: Option<&mut KvCache>,
        output_hidden_states: bool,
        stop_at_layer: Option<usize>,
    ) -> ModelResult<PassOutput>;

    /// A sequence length past which generation drops a cache filled no further and recomputes
    /// (Phi-3's `longrope` switch from short to long factors); none by default.
    fn cache_restart_length(&self) -> Option<i64> {
        None
    }

    /// The longest input (cached positions included) and the largest position id: no limit for
    /// a rotary decoder, unless a table bounds it (GPT-J's).
    fn max_positions(&self) -> i64 {
        i64::MAX
    }
    /// Blocks.
    fn n_layers(&self) -> usize;
    /// The token embedding matrix `[vocab, d]`.
    fn embedding(&self) -> &Tensor;
    /// The embeddings of token ids, as the model's embedding module computes them (Gemma's
    /// scales them): a lookup by default.
    fn embed_ids(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(self.embedding(), ids, -1, false, false)
    }
    /// The unembedding, with the bridge's bias where it added one: logits of `x`.
    fn unembed(&self, x: &Tensor) -> Tensor;
    /// A narrower token embedding projected into the residual stream, at its sites (OPT's
    /// `project_in`); the embedding itself by default.
    fn project_in<T: Tap>(&self, _tap: &T, embeds: Tensor) -> ModelResult<Tensor> {
        Ok(embeds)
    }
    /// The final residual stream projected to the unembedding's width, at its sites (OPT's
    /// `project_out`); the residual itself by default.
    fn project_out<T: Tap>(&self, _tap: &T, x: Tensor) -> ModelResult<Tensor> {
        Ok(x)
    }
    /// The learned position table `[n_positions, d]`, for a family that has one (its
    /// `pos_embed` component).
    fn learned_positions(&self) -> Option<&Tensor> {
        None
    }
    /// The row of the position table that position 0 is at (OPT's 2).
    fn position_offset(&self) -> i64 {
        0
    }
    /// Runs `part` alone on `x` with `tap` at its sites; `None` for a block part the family
    /// does not have.
    fn run_part<T: Tap>(&self, tap: &T, part: Part<'_>, x: &Tensor) -> Option<ModelResult<Tensor>>;

    /// The components [`RotaryDecoder::run_component_with`] runs: `embed` (and `pos_embed`
    /// where positions are learned), for each layer `blocks.{l}` and its `ln1`, `attn`, `ln2`
    /// and `mlp`, then `ln_final` (where the model has one) and `unembed`.
    fn component_names(&self) -> Vec<String> {
        let mut names = crate::hf::forward::component_names(
            self.n_layers(),
            self.learned_positions().is_some(),
        );
        if !self.has_final_norm() {
            names.retain(|name| name != "ln_final");
        }
        names
    }

    /// Whether the decoder normalises its final residual stream (post-LN OPT does not).
    fn has_final_norm(&self) -> bool {
        true
    }

    /// Runs one component alone on `x`, HuggingFace's way: token ids for `embed`, hidden
    /// states `[b, p, d]` for the others (a block or its attention from the residual, positions
    /// `0..p`, a causal mask).
    fn run_component_with<T: Tap>(&self, tap: &T, name: &str, x: &Tensor) -> ModelResult<Tensor> {
        let unknown = || {
            ModelError::InvalidInput(format!(
                "unknown component '{name}'; components are {:?}",
                self.component_names()
            ))
        };
        let part = match name {
            // The embedding and the unembedding with their projections, where a model has
            // them (the residual stream's width on both sides).
            "embed" => {
                let ids = tap.at(Site::EmbedIn, x.shallow_clone())?;
                let embeds = tap.at(Site::EmbedOut, self.embed_ids(&ids))?;
                return self.project_in(tap, embeds);
            }
            "pos_embed" => {
                let Some(table) = self.learned_positions() else {
                    return Err(unknown());
                };
                let positions = tap.at(Site::PosEmbedIn, x.shallow_clone())?;
                let rows = &positions + self.position_offset();
                let embedded = Tensor::embedding(table, &rows, -1, false, false);
                return tap.at(Site::PosEmbedOut, embedded);
            }
            "ln_final" => Part::LnFinal,
            "unembed" => {
                let x = self.project_out(tap, x.shallow_clone())?;
                let x = tap.at(Site::UnembedIn, x)?;
                return tap.at(Site::UnembedOut, self.unembed(&x));
            }
            _ => match crate::hf::forward::block_component(name) {
                Some((l, part)) if l < self.n_layers() => Part::Block(l, part),
                _ => return Err(unknown()),
            },
        };
        self.run_part(tap, part, x)
            .unwrap_or_else(|| Err(unknown()))
    }

    /// The inputs of a pass, checked and on the model's device: token ids, the attention mask
    /// over cached and new positions, position ids (HuggingFace's default: `past_len..`).
    fn checked_inputs(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        past_len: i64,
    ) -> ModelResult<CheckedInputs> {
        let device = self.device();
        let limit = self.max_positions();
        let ids = input::tokens(input_ids, self.vocab_size(), limit, past_len, device)?;
        let (batch, q_len) = (ids.size()[0], ids.size()[1]);
        let mask = input::attention_mask(attention_mask, batch, past_len + q_len, device)?;
        let positions = match position_ids {
            Some(p) => input::position_ids(p, batch, q_len, limit, device)?,
            None => mask::arange_positions(batch, q_len, past_len, device),
        };
        Ok(CheckedInputs {
            ids,
            mask,
            positions,
        })
    }

    /// HuggingFace's `forward`: logits, the loss when `labels` are given, hidden states on
    /// request (`n_layers + 1`: the embeddings, each layer's output, and the final norm of the
    /// last layer's output in place of that output).
    fn hf_forward(&self, args: HfForward<'_>) -> ModelResult<HfOutput> {
        let ids = args
            .input_ids
            .ok_or_else(|| ModelError::InvalidInput("input_ids are required".into()))?;
        let cache = args.past_key_values;
        let past_len = cache.as_ref().map_or(0, |c| c.len());
        let inputs = self.checked_inputs(ids, args.attention_mask, args.position_ids, past_len)?;
        check_cache_batch(cache.as_deref(), inputs.ids.size()[0])?;
        let pass = self.pass(&NoTap, &inputs, cache, args.output_hidden_states, None)?;
        let logits = pass
            .logits
            .ok_or_else(|| ModelError::InvalidInput("the pass did not reach the logits".into()))?;
        let loss = match args.labels {
            Some(labels) if labels.size()[..] != logits.size()[..2] => {
                return Err(ModelError::InvalidInput(format!(
                    "labels have shape {:?}, expected {:?}",
                    labels.size(),
                    &logits.size()[..2]
                )))
            }
            Some(labels) => Some(loss::hf_causal_lm_loss(&logits, labels)),
            None => None,
        };
        Ok(HfOutput {
            logits,
            loss,
            hidden_states: pass.hidden_states,
        })
    }

    /// HuggingFace's `generate` (greedy or sampled, see [`GenerateOptions`]), with position ids
    /// `cumsum(mask) - 1` for left-padded batches; returns prompt and continuation.
    fn hf_generate(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        options: &GenerateOptions,
    ) -> ModelResult<Tensor> {
        generate_hf_style(
            |ids, mask, positions, cache| {
                let out = self.hf_forward(HfForward {
                    input_ids: Some(ids),
                    attention_mask: mask,
                    position_ids: Some(positions),
                    past_key_values: cache,
                    ..HfForward::default()
                })?;
                Ok(out.logits)
            },
            input_ids,
            attention_mask,
            options,
            self.eos_token_id(),
            self.device(),
            self.cache_restart_length(),
        )
    }
}

/// The blocks and the head of a pass, the same for every decoder: `block(l, x)` for each block
/// before `stop_at_layer` (HuggingFace's hidden states collected on request: each block's
/// input, then the final norm's output in place of the last block's), then `final_norm` and the
/// unembedding between its sites; or the residual when the pass stops early.
#[allow(clippy::too_many_arguments)]
pub(crate) fn blocks_then_head<T: Tap>(
    tap: &T,
    mut x: Tensor,
    n_layers: usize,
    stop_at_layer: Option<usize>,
    output_hidden_states: bool,
    mut block: impl FnMut(usize, Tensor) -> ModelResult<Tensor>,
    final_norm: impl FnOnce(Tensor) -> ModelResult<Tensor>,
    unembed: impl FnOnce(&Tensor) -> Tensor,
) -> ModelResult<PassOutput> {
    let stop = stop_at_layer.unwrap_or(n_layers).min(n_layers);
    let mut hidden_states = Vec::new();
    for l in 0..stop {
        if output_hidden_states {
            hidden_states.push(x.shallow_clone());
        }
        x = block(l, x)?;
    }
    if stop < n_layers {
        return Ok(PassOutput {
            logits: None,
            residual: Some(x),
            hidden_states,
        });
    }
    let x = final_norm(x)?;
    if output_hidden_states {
        hidden_states.push(x.shallow_clone());
    }
    let x = tap.at(Site::UnembedIn, x)?;
    let logits = tap.at(Site::UnembedOut, unembed(&x))?;
    Ok(PassOutput {
        logits: Some(logits),
        residual: None,
        hidden_states,
    })
}

/// A cache must hold the batch the input has.
pub(crate) fn check_cache_batch(cache: Option<&KvCache>, batch: i64) -> ModelResult<()> {
    match cache.and_then(|c| c.layer(0)) {
        Some((k, _)) if k.size()[0] != batch => Err(ModelError::InvalidInput(format!(
            "the KV cache holds a batch of {}, the input has {batch}",
            k.size()[0]
        ))),
        _ => Ok(()),
    }
}

/// The public methods every rotary decoder offers, the same for each family: loading, its
/// config and parameters, their device and dtype, and HuggingFace's `forward` and `generate`
/// (through [`RotaryDecoder`]). `$embedding` is the parameter field whose device and dtype are
/// the model's; `$config_of` takes the family's config out of an [`lens_core::HfConfig`].
macro_rules! decoder_api {
    ($model:ty, $config:ty, $params:ty, $embedding:ident, $config_of:ident) => {
        impl $model {
            /// Loads a model by name (local directory, embedded model or HF hub id) on `device`
            /// in `kind`. Errors: [`lens_core::model::ModelError::DeviceUnavailable`],
            /// [`lens_core::model::ModelError::Load`] for the files,
            /// [`lens_core::model::ModelError::Unsupported`] for a config of another
            /// architecture.
            pub fn from_pretrained(
                model: &str,
                device: tch::Device,
                kind: tch::Kind,
            ) -> lens_core::model::ModelResult<Self> {
                let loaded = crate::input::load_checked(model, device, kind)?;
                let config = $config_of(&loaded.config)?;
                Self::from_weights(config, loaded.weights, device, kind)
            }

            /// The HuggingFace config.
            pub fn config(&self) -> &$config {
                &self.config
            }

            /// The parameters, under their HuggingFace names.
            pub fn params(&self) -> &$params {
                &self.params
            }

            /// The parameters, to edit in place (the bridge adds its unembedding bias here).
            pub fn params_mut(&mut self) -> &mut $params {
                &mut self.params
            }

            /// Where the parameters live.
            pub fn device(&self) -> tch::Device {
                self.params.$embedding.device()
            }

            /// The parameters' dtype.
            pub fn kind(&self) -> tch::Kind {
                self.params.$embedding.kind()
            }

            /// HuggingFace's `forward`: logits, the loss when `labels` are given, hidden states
            /// on request (`n_layers + 1`: the embeddings, each layer's output, and the final
            /// norm of the last layer's output in place of that output).
            pub fn forward(
                &self,
                args: crate::hf::model::HfForward<'_>,
            ) -> lens_core::model::ModelResult<crate::hf::model::HfOutput> {
                crate::hf::decoder::RotaryDecoder::hf_forward(self, args)
            }

            /// Checks a pass's inputs and brings them to the model's device (see
            /// [`crate::hf::decoder::RotaryDecoder::checked_inputs`]).
            pub(crate) fn check_inputs(
                &self,
                input_ids: &tch::Tensor,
                attention_mask: Option<&tch::Tensor>,
                position_ids: Option<&tch::Tensor>,
                past_len: i64,
            ) -> lens_core::model::ModelResult<crate::hf::model::CheckedInputs> {
                crate::hf::decoder::RotaryDecoder::checked_inputs(
                    self,
                    input_ids,
                    attention_mask,
                    position_ids,
                    past_len,
                )
            }

            /// The names [`Self::run_component`] accepts: `embed`, for each layer `blocks.{l}`
            /// and its `ln1`, `attn`, `ln2` and `mlp`, then `ln_final` and `unembed`.
            pub fn component_names(&self) -> Vec<String> {
                crate::hf::decoder::RotaryDecoder::component_names(self)
            }

            /// Runs one component alone on `input`, HuggingFace's way: token ids for `embed`,
            /// hidden states `[b, p, d]` for the others. `blocks.{l}` and `blocks.{l}.attn`
            /// start at the residual, rotate positions `0..p` and mask causally (with the
            /// layer's sliding window, where it has one).
            pub fn run_component(
                &self,
                name: &str,
                input: &tch::Tensor,
            ) -> lens_core::model::ModelResult<tch::Tensor> {
                crate::hf::decoder::RotaryDecoder::run_component_with(
                    self,
                    &crate::tap::NoTap,
                    name,
                    input,
                )
            }

            /// HuggingFace's `generate` (greedy or sampled, see
            /// [`lens_core::model::GenerateOptions`]), with position ids `cumsum(mask) - 1` for
            /// left-padded batches; returns prompt and continuation.
            pub fn generate(
                &self,
                input_ids: &tch::Tensor,
                attention_mask: Option<&tch::Tensor>,
                options: &lens_core::model::GenerateOptions,
            ) -> lens_core::model::ModelResult<tch::Tensor> {
                crate::hf::decoder::RotaryDecoder::hf_generate(
                    self,
                    input_ids,
                    attention_mask,
                    options,
                )
            }
        }
    };
}
pub(crate) use decoder_api;
