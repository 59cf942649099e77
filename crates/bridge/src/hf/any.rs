//! [`HfModel`]: the raw HF model of whichever family a checkpoint is, as the TransformerBridge
//! holds it.

use lens_core::model::{GenerateOptions, ModelResult};
use lens_core::HfConfig;
use tch::{Device, Kind, Tensor};

use crate::hf::decoder::RotaryDecoder;
use crate::hf::forward::PassOutput;
use crate::hf::gpt_neo::GptNeoForCausalLM;
use crate::hf::gpt_neox::GptNeoxForCausalLM;
use crate::hf::kv_cache::KvCache;
use crate::hf::llama::LlamaForCausalLM;
use crate::hf::model::{CheckedInputs, Gpt2LMHeadModel, HfForward, HfOutput};
use crate::hf::opt::OptForCausalLM;
use crate::hf::parallel::ParallelForCausalLM;
use crate::tap::Tap;

/// A raw HuggingFace model of one of the families the HF tier implements.
#[derive(Debug)]
// One model per bridge, held for its life: boxing the larger variants would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum HfModel {
    /// `GPT2LMHeadModel`.
    Gpt2(Gpt2LMHeadModel),
    /// `LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`, `Qwen3ForCausalLM`,
    /// `GemmaForCausalLM`, `Gemma2ForCausalLM`, `Gemma3ForCausalLM`, `Phi3ForCausalLM`,
    /// `Olmo2ForCausalLM`.
    Llama(LlamaForCausalLM),
    /// `GPTNeoXForCausalLM`.
    GptNeox(GptNeoxForCausalLM),
    /// `GPTJForCausalLM`, `PhiForCausalLM`.
    Parallel(ParallelForCausalLM),
    /// `GPTNeoForCausalLM`.
    GptNeo(GptNeoForCausalLM),
    /// `OPTForCausalLM`.
    Opt(OptForCausalLM),
}

impl HfModel {
    /// The raw model of `config`'s family from its checkpoint's tensors, on `device` in `kind`.
    /// Errors: [`lens_core::model::ModelError::Unsupported`] for an architecture the HF tier
    /// does not implement; a missing or mis-shaped tensor, named.
    pub fn from_weights(
        config: HfConfig,
        weights: lens_core::Weights,
        device: Device,
        kind: Kind,
    ) -> ModelResult<Self> {
        Ok(match config {
            HfConfig::Gpt2(c) => {
                HfModel::Gpt2(Gpt2LMHeadModel::from_weights(c, weights, device, kind)?)
            }
            HfConfig::Llama(c) => {
                HfModel::Llama(LlamaForCausalLM::from_weights(c, weights, device, kind)?)
            }
            HfConfig::GptNeox(c) => {
                HfModel::GptNeox(GptNeoxForCausalLM::from_weights(c, weights, device, kind)?)
            }
            HfConfig::Parallel(c) => {
                HfModel::Parallel(ParallelForCausalLM::from_weights(c, weights, device, kind)?)
            }
            HfConfig::GptNeo(c) => {
                HfModel::GptNeo(GptNeoForCausalLM::from_weights(c, weights, device, kind)?)
            }
            HfConfig::Opt(c) => {
                HfModel::Opt(OptForCausalLM::from_weights(c, weights, device, kind)?)
            }
            other => {
                return Err(lens_core::model::ModelError::Unsupported(format!(
                    "no HF model for {}",
                    other.architecture()
                )))
            }
        })
    }

    /// HuggingFace's `forward`.
    pub fn forward(&self, args: HfForward<'_>) -> ModelResult<HfOutput> {
        match self {
            HfModel::Gpt2(m) => m.forward(args),
            HfModel::Llama(m) => m.forward(args),
            HfModel::GptNeox(m) => m.forward(args),
            HfModel::Parallel(m) => m.forward(args),
            HfModel::GptNeo(m) => m.forward(args),
            HfModel::Opt(m) => m.forward(args),
        }
    }

    /// HuggingFace's `generate`.
    pub fn generate(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        options: &GenerateOptions,
    ) -> ModelResult<Tensor> {
        match self {
            HfModel::Gpt2(m) => m.generate(input_ids, attention_mask, options),
            HfModel::Llama(m) => m.generate(input_ids, attention_mask, options),
            HfModel::GptNeox(m) => m.generate(input_ids, attention_mask, options),
            HfModel::Parallel(m) => m.generate(input_ids, attention_mask, options),
            HfModel::GptNeo(m) => m.generate(input_ids, attention_mask, options),
            HfModel::Opt(m) => m.generate(input_ids, attention_mask, options),
        }
    }

    /// The config, as [`HfConfig`].
    pub fn config(&self) -> HfConfig {
        match self {
            HfModel::Gpt2(m) => HfConfig::Gpt2(m.config().clone()),
            HfModel::Llama(m) => HfConfig::Llama(m.config().clone()),
            HfModel::GptNeox(m) => HfConfig::GptNeox(m.config().clone()),
            HfModel::Parallel(m) => HfConfig::Parallel(m.config().clone()),
            HfModel::GptNeo(m) => HfConfig::GptNeo(m.config().clone()),
            HfModel::Opt(m) => HfConfig::Opt(m.config().clone()),
        }
    }

    /// Where the parameters live.
    pub fn device(&self) -> Device {
        match self {
            HfModel::Gpt2(m) => m.device(),
            HfModel::Llama(m) => m.device(),
            HfModel::GptNeox(m) => m.device(),
            HfModel::Parallel(m) => m.device(),
            HfModel::GptNeo(m) => m.device(),
            HfModel::Opt(m) => m.device(),
        }
    }

    /// The parameters' dtype.
    pub fn kind(&self) -> Kind {
        match self {
            HfModel::Gpt2(m) => m.kind(),
            HfModel::Llama(m) => m.kind(),
            HfModel::GptNeox(m) => m.kind(),
            HfModel::Parallel(m) => m.kind(),
            HfModel::GptNeo(m) => m.kind(),
            HfModel::Opt(m) => m.kind(),
        }
    }

    /// The GPT-2 model, when this is one.
    pub fn as_gpt2(&self) -> Option<&Gpt2LMHeadModel> {
        match self {
            HfModel::Gpt2(m) => Some(m),
            HfModel::Llama(_)
            | HfModel::GptNeox(_)
            | HfModel::Parallel(_)
            | HfModel::GptNeo(_)
            | HfModel::Opt(_) => None,
        }
    }

    /// A parameter by its HuggingFace name, sharing storage with the model's; `None` for a
    /// name the model does not have.
    pub fn parameter(&self, name: &str) -> Option<Tensor> {
        match self {
            HfModel::Gpt2(m) => m.parameter(name).ok(),
            HfModel::Llama(m) => m.params().get(name),
            HfModel::GptNeox(m) => m.params().get(name),
            HfModel::Parallel(m) => m.params().get(name),
            HfModel::GptNeo(m) => m.params().get(name),
            HfModel::Opt(m) => m.params().get(name),
        }
    }

    /// Every parameter.
    pub fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    /// Every parameter with its HuggingFace name (`named_parameters()`).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let named = match self {
            HfModel::Gpt2(m) => m.params().named(),
            HfModel::Llama(m) => m.params().named(),
            HfModel::GptNeox(m) => m.params().named(),
            HfModel::Parallel(m) => m.params().named(),
            HfModel::GptNeo(m) => m.params().named(),
            HfModel::Opt(m) => m.params().named(),
        };
        named
            .into_iter()
            .map(|(name, t)| (name, t.shallow_clone()))
            .collect()
    }

    /// The components [`HfModel::run_component`] runs one at a time.
    pub fn component_names(&self) -> Vec<String> {
        match self {
            HfModel::Gpt2(m) => m.component_names(),
            HfModel::Llama(m) => m.component_names(),
            HfModel::GptNeox(m) => m.component_names(),
            HfModel::Parallel(m) => m.component_names(),
            HfModel::GptNeo(m) => m.component_names(),
            HfModel::Opt(m) => m.component_names(),
        }
    }

    /// Runs one component alone (see [`Gpt2LMHeadModel::run_component`] and
    /// [`LlamaForCausalLM::run_component`]).
    pub fn run_component(&self, name: &str, input: &Tensor) -> ModelResult<Tensor> {
        match self {
            HfModel::Gpt2(m) => m.run_component(name, input),
            HfModel::Llama(m) => m.run_component(name, input),
            HfModel::GptNeox(m) => m.run_component(name, input),
            HfModel::Parallel(m) => m.run_component(name, input),
            HfModel::GptNeo(m) => m.run_component(name, input),
            HfModel::Opt(m) => m.run_component(name, input),
        }
    }

    pub(crate) fn check_inputs(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        past_len: i64,
    ) -> ModelResult<CheckedInputs> {
        match self {
            HfModel::Gpt2(m) => m.check_inputs(input_ids, attention_mask, position_ids, past_len),
            HfModel::Llama(m) => m.check_inputs(input_ids, attention_mask, position_ids, past_len),
            HfModel::GptNeox(m) => {
                m.check_inputs(input_ids, attention_mask, position_ids, past_len)
            }
            HfModel::Parallel(m) => {
                m.check_inputs(input_ids, attention_mask, position_ids, past_len)
            }
            HfModel::GptNeo(m) => m.check_inputs(input_ids, attention_mask, position_ids, past_len),
            HfModel::Opt(m) => m.check_inputs(input_ids, attention_mask, position_ids, past_len),
        }
    }

    pub(crate) fn pass_checked<T: Tap>(
        &self,
        tap: &T,
        inputs: &CheckedInputs,
        cache: Option<&mut KvCache>,
        output_hidden_states: bool,
        stop_at_layer: Option<usize>,
    ) -> ModelResult<PassOutput> {
        match self {
            HfModel::Gpt2(m) => {
                m.pass_checked(tap, inputs, cache, output_hidden_states, stop_at_layer)
            }
            HfModel::Llama(m) => m.pass(tap, inputs, cache, output_hidden_states, stop_at_layer),
            HfModel::GptNeox(m) => m.pass(tap, inputs, cache, output_hidden_states, stop_at_layer),
            HfModel::Parallel(m) => m.pass(tap, inputs, cache, output_hidden_states, stop_at_layer),
            HfModel::GptNeo(m) => m.pass(tap, inputs, cache, output_hidden_states, stop_at_layer),
            HfModel::Opt(m) => m.pass(tap, inputs, cache, output_hidden_states, stop_at_layer),
        }
    }
}
