//! The HF tier: HuggingFace's models with their parameter names, layouts and semantics, and no
//! hooks: `GPT2LMHeadModel`, the Llama family (`llama`: Llama, Mistral, Qwen2, Qwen3) and
//! `GPTNeoXForCausalLM` (`gpt_neox`), `GPTJForCausalLM` and `PhiForCausalLM` (`parallel`).

pub(crate) mod any;
pub(crate) mod attention;
pub(crate) mod decoder;
pub(crate) mod forward;
pub(crate) mod gpt_neo;
pub(crate) mod gpt_neox;
pub(crate) mod kv_cache;
pub(crate) mod llama;
pub(crate) mod mask;
pub(crate) mod model;
pub(crate) mod opt;
pub(crate) mod parallel;
pub(crate) mod params;

pub use any::HfModel;
pub use gpt_neo::{GptNeoForCausalLM, GptNeoLayerParams, GptNeoParams};
pub use gpt_neox::{GptNeoxForCausalLM, GptNeoxLayerParams, GptNeoxParams};
pub use kv_cache::KvCache;
pub use llama::{
    GateUpProjections, LinearParams, LlamaForCausalLM, LlamaLayerParams, LlamaParams,
    QkvProjections,
};
pub use mask::hf_position_ids;
pub use model::{Gpt2LMHeadModel, HfForward, HfOutput};
pub use opt::{OptForCausalLM, OptLayerParams, OptParams};
pub use parallel::{ParallelForCausalLM, ParallelLayerParams, ParallelParams};
pub use params::{BlockParams, Conv1dParams, Gpt2Params, LayerNormParams};
