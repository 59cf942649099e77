//! The interface both model implementations offer (`hooked-ref`'s HookedTransformer and
//! `bridge`'s TransformerBridge), so that one benchmark compares any two of them.

use hookpoint::{run_with_cache, ActivationCache, CacheOptions, HookError, HookRegistry, HookSpec};
use tch::{Device, Kind, Tensor};
use thiserror::Error;

use crate::error::LensError;

/// What can go wrong running a model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A hook failed, a hook name is unknown, or an optional hook's option is off.
    #[error(transparent)]
    Hook(#[from] HookError),
    /// Locating or loading the checkpoint failed.
    #[error(transparent)]
    Load(#[from] LensError),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// More positions than the context holds.
    #[error("input has {len} positions but the model's context is n_ctx = {n_ctx}")]
    TooLong {
        /// Positions asked for (cached ones included).
        len: i64,
        /// The context length.
        n_ctx: i64,
    },
    /// An input with no tokens.
    #[error("empty input: at least one token is needed")]
    EmptyInput,
    /// Any other malformed input (wrong rank or dtype, mask shape, unknown weight name...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A device that is not there (e.g. CUDA on a machine without a CUDA device).
    #[error("device {requested} is not available: {reason}")]
    DeviceUnavailable {
        /// The device asked for.
        requested: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A feature this model does not offer.
    #[error("not supported: {0}")]
    Unsupported(String),
}

/// Result alias for model operations.
pub type ModelResult<T> = std::result::Result<T, ModelError>;

/// What `forward` computes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReturnType {
    /// Logits `[b, p, d_vocab]`.
    #[default]
    Logits,
    /// Next-token cross-entropy (see [`ForwardOptions::loss_per_token`]).
    Loss,
    /// Both.
    Both,
}

/// Options of a forward pass.
#[derive(Debug, Default)]
pub struct ForwardOptions<'a> {
    /// What to compute.
    pub return_type: ReturnType,
    /// Loss per token `[b, p - 1]` instead of the mean.
    pub loss_per_token: bool,
    /// `[b, p]`, 1 for real tokens and 0 for padding.
    pub attention_mask: Option<&'a Tensor>,
    /// Stop before block `n` and return the residual stream `[b, p, d]` (`n >= n_layers` runs
    /// the whole model).
    pub stop_at_layer: Option<usize>,
}

/// The results of a forward pass.
#[derive(Debug)]
pub struct ForwardOutput {
    /// Logits, when asked for.
    pub logits: Option<Tensor>,
    /// Loss, when asked for.
    pub loss: Option<Tensor>,
    /// The residual stream, when the pass stopped early.
    pub residual: Option<Tensor>,
}

impl ForwardOutput {
    /// The logits, or an error saying they were not computed.
    pub fn logits(&self) -> ModelResult<&Tensor> {
        self.logits.as_ref().ok_or_else(|| {
            ModelError::InvalidInput("logits were not requested (return_type)".into())
        })
    }

    /// The loss, or an error saying it was not computed.
    pub fn loss(&self) -> ModelResult<&Tensor> {
        self.loss.as_ref().ok_or_else(|| {
            ModelError::InvalidInput("the loss was not requested (return_type)".into())
        })
    }
}

/// Options of `generate`.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Tokens to add.
    pub max_new_tokens: usize,
    /// Sample (with the settings below) instead of taking the most likely token.
    pub do_sample: bool,
    /// Sampling temperature.
    pub temperature: f64,
    /// Keep only the `k` most likely tokens when sampling.
    pub top_k: Option<i64>,
    /// Keep the smallest set of tokens whose probability reaches `p` when sampling.
    pub top_p: Option<f64>,
    /// Subtract `freq_penalty * count` from the logit of each token already generated.
    pub freq_penalty: f64,
    /// Seed of the sampling RNG (a fixed seed reproduces the same tokens).
    pub seed: Option<u64>,
    /// Stop a row once it produced `eos_token_id` (later positions are filled with it).
    pub stop_at_eos: bool,
    /// End-of-sequence token (default: the model's).
    pub eos_token_id: Option<i64>,
    /// Reuse keys and values of earlier positions instead of recomputing them.
    pub use_past_kv_cache: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 10,
            do_sample: false,
            temperature: 1.0,
            top_k: None,
            top_p: None,
            freq_penalty: 0.0,
            seed: None,
            stop_at_eos: true,
            eos_token_id: None,
            use_past_kv_cache: true,
        }
    }
}

/// Sizes every model reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelDims {
    /// Blocks.
    pub n_layers: i64,
    /// Attention heads per block.
    pub n_heads: i64,
    /// Residual stream width.
    pub d_model: i64,
    /// Head width.
    pub d_head: i64,
    /// MLP width.
    pub d_mlp: i64,
    /// Vocabulary size.
    pub d_vocab: i64,
    /// Context length.
    pub n_ctx: i64,
}

/// A model with TransformerLens hook names: forward passes, hooks, caches, generation and
/// TransformerLens-layout weights. Benchmarks are written against this trait.
pub trait LensModel {
    /// A short name for reports ("TransformerBridge", "HookedTransformer").
    fn model_name(&self) -> &str;
    /// Sizes.
    fn dims(&self) -> ModelDims;
    /// Where the parameters live.
    fn device(&self) -> Device;
    /// The parameters' dtype.
    fn kind(&self) -> Kind;
    /// The hook points (`hook_dict`).
    fn hooks(&self) -> &HookRegistry;
    /// The tokenizer, if the model has one.
    fn tokenizer(&self) -> Option<&crate::Tokenizer>;
    /// Runs the model on tokens `[b, p]`.
    fn forward(&self, tokens: &Tensor, options: &ForwardOptions) -> ModelResult<ForwardOutput>;
    /// Generates continuations of `tokens` (`attention_mask` for left-padded batches); returns
    /// prompt and continuation, `[b, p + new]`.
    fn generate(
        &self,
        tokens: &Tensor,
        attention_mask: Option<&Tensor>,
        options: &GenerateOptions,
    ) -> ModelResult<Tensor>;
    /// A weight by its TransformerLens name (`blocks.0.attn.W_Q`, `unembed.W_U`, ...), in
    /// TransformerLens's layout. For the bridge it is a view of the live parameter: writing to
    /// it changes the model.
    fn tl_weight(&self, name: &str) -> ModelResult<Tensor>;
    /// The TransformerLens names [`LensModel::tl_weight`] accepts.
    fn tl_weight_names(&self) -> Vec<String>;
    /// The per-layer weight `blocks.{l}.{name}` of every layer (`name` is `attn.W_Q`,
    /// `mlp.W_in`, ...) as one `[n_layers, ...]` tensor that aliases the live parameters, so a
    /// write into it changes the model — when the model keeps them stacked
    /// ([`crate::layer_stacks`]). `None` otherwise (a weight served as a constant, say);
    /// [`crate::circuits::Circuits::stacked_weight`] then stacks copies. `None` by default.
    fn tl_weight_stack(&self, _name: &str) -> ModelResult<Option<Tensor>> {
        Ok(None)
    }
    /// Where weight `name` lives: `(data_ptr, numel)` of its view of the model's storage,
    /// equal for two weights tied to one parameter in the same layout. By default that of
    /// [`LensModel::tl_weight`]; a model whose weight is a copy (values changed from its
    /// parameter's) answers for the parameter's view it is computed from.
    fn tl_weight_storage(&self, name: &str) -> ModelResult<(usize, i64)> {
        let t = self.tl_weight(name)?;
        Ok((t.data_ptr() as usize, t.numel() as i64))
    }

    /// How weight `name`'s values relate to the storage it lives in ([`crate::weight_map::Value`]):
    /// the same by default.
    fn tl_weight_value(&self, _name: &str) -> crate::weight_map::Value {
        crate::weight_map::Value::Same
    }

    /// Why a left-padded batch need not generate what each of its prompts generates alone, for a
    /// model whose computation depends on the batch (Phi-3's `longrope` picks its frequencies
    /// by the batch's longest sequence); `None` (batch-invariant) by default.
    fn batch_dependence(&self) -> Option<String> {
        None
    }

    /// Why greedy generation with a KV cache need not give the tokens generation without one
    /// gives, for a model whose positions attend to later ones (Gemma 3's
    /// `use_bidirectional_attention`: a cache holds states computed before the later tokens
    /// existed); `None` by default.
    fn cache_dependence(&self) -> Option<String> {
        None
    }

    /// What the last weight processing turned off and why, as TransformerLens warns it (empty
    /// when nothing was, or before any processing).
    fn processing_notes(&self) -> Vec<String> {
        Vec::new()
    }
    /// Writes `value` into weight `name`, so the model computes with it: a copy into
    /// [`LensModel::tl_weight`]'s view by default. A model whose TransformerLens weight is not a
    /// view of its parameter (Gemma's `1 + w` norms on the bridge) writes through the relation.
    fn write_tl_weight(&self, name: &str, value: &Tensor) -> ModelResult<()> {
        let _guard = tch::no_grad_guard();
        self.tl_weight(name)?.f_copy_(value)?;
        Ok(())
    }
    /// The gradient accumulated on a weight, in TransformerLens's layout (`None` before any
    /// backward pass reached it).
    fn tl_weight_grad(&self, name: &str) -> ModelResult<Option<Tensor>>;

    /// The parameter (an autograd leaf) weight `name` is stored in: the weight itself (the
    /// HookedTransformer's weights are parameters of their own), or the parameter it is a view
    /// or a copy of (the bridge's, in HF layout); `None` for a constant without a parameter.
    /// Consumers such as the suite's gradient comparison use it to read each gradient as a
    /// backward pass accumulates it ([`hookpoint::with_accumulated_gradient_hooks`]) and to free
    /// it once read.
    fn tl_weight_parameter(&self, _name: &str) -> ModelResult<Option<WeightParameter>> {
        Ok(None)
    }
    /// The value of a weight that is a constant with no parameter behind it, so no gradient can
    /// reach it (a bridge serves zeros for the biases a checkpoint does not have, and ones and
    /// zeros for a LayerNorm without parameters, as TransformerLens's HookedTransformer holds
    /// them). `None` by default.
    fn tl_weight_constant(&self, _name: &str) -> Option<f64> {
        None
    }
    /// Whether a weight is such a constant.
    fn tl_weight_is_constant(&self, name: &str) -> bool {
        self.tl_weight_constant(name).is_some()
    }
    /// Drops every parameter's accumulated gradient, freeing its memory (PyTorch's
    /// `zero_grad(set_to_none=True)`).
    fn zero_grad(&self);
    /// The options that gate optional hook points (`use_attn_result`, `use_split_qkv_input`,
    /// `use_attn_in`, `use_hook_mlp_in`) with their state.
    fn hook_flags(&self) -> Vec<(&'static str, bool)>;
    /// Turns a gating option on or off. `use_split_qkv_input` and `use_attn_in` exclude each
    /// other: enabling one while the other is on is an error.
    fn set_hook_flag(&mut self, flag: &str, enabled: bool) -> ModelResult<()>;

    /// Runs `forward` with `hooks` attached; they are removed afterwards however it ends.
    fn run_with_hooks(
        &self,
        tokens: &Tensor,
        options: &ForwardOptions,
        hooks: &[HookSpec],
    ) -> ModelResult<ForwardOutput> {
        self.hooks()
            .with_hooks(hooks, || self.forward(tokens, options))?
    }

    /// Records the activation at every selected hook during one forward pass (TransformerLens's
    /// `run_with_cache`). With `cache.incl_bwd` it also records, as `<name>_grad`, the gradient of
    /// the model's loss, as TransformerLens backpropagates its scalar output: ask for
    /// `ReturnType::Loss` (or `Both`). For the gradient of another scalar (a logit difference, a
    /// probe), use [`LensModel::run_with_cache_and_backward`].
    fn run_with_cache(
        &self,
        tokens: &Tensor,
        options: &ForwardOptions,
        cache: &CacheOptions,
    ) -> ModelResult<(ForwardOutput, ActivationCache)> {
        if !cache.incl_bwd {
            return record(self, tokens, options, cache, None);
        }
        let loss = |out: &ForwardOutput| {
            out.loss.as_ref().map(Tensor::shallow_clone).ok_or_else(|| {
                ModelError::InvalidInput(
                    "incl_bwd takes the gradient of the loss: ask for ReturnType::Loss or Both, \
                     or use run_with_cache_and_backward with a target"
                        .into(),
                )
            })
        };
        record(self, tokens, options, cache, Some(&loss))
    }

    /// [`LensModel::run_with_cache`], recording also the gradient at every selected hook of the
    /// scalar `target` computes from the output (whatever `cache.incl_bwd` says).
    fn run_with_cache_and_backward(
        &self,
        tokens: &Tensor,
        options: &ForwardOptions,
        cache: &CacheOptions,
        target: &dyn Fn(&ForwardOutput) -> ModelResult<Tensor>,
    ) -> ModelResult<(ForwardOutput, ActivationCache)> {
        let cache = CacheOptions {
            incl_bwd: true,
            ..cache.clone()
        };
        record(self, tokens, options, &cache, Some(target))
    }
}

/// Where a TransformerLens weight lives among a model's parameters
/// ([`LensModel::tl_weight_parameter`]).
#[derive(Debug)]
pub struct WeightParameter {
    /// The parameter (an autograd leaf).
    pub leaf: Tensor,
    /// Whether the weight is the parameter itself, so that its gradient is exactly the leaf's
    /// `.grad` (else a view of it or a value computed from it).
    pub is_the_weight: bool,
}

/// The scalar a backward pass starts from, computed from a forward pass's output.
pub type GradientTarget<'a> = &'a dyn Fn(&ForwardOutput) -> ModelResult<Tensor>;

/// One recorded forward pass, with a backward pass from `target`'s scalar when `cache.incl_bwd`.
fn record<M: LensModel + ?Sized>(
    model: &M,
    tokens: &Tensor,
    options: &ForwardOptions,
    cache: &CacheOptions,
    target: Option<GradientTarget<'_>>,
) -> ModelResult<(ForwardOutput, ActivationCache)> {
    let mut output = None;
    let (_, activations) = run_with_cache(
        model.hooks(),
        cache,
        Some(model.dims().n_layers as usize),
        || {
            let out = model.forward(tokens, options)?;
            let scalar = match target {
                Some(target) if cache.incl_bwd => target(&out)?,
                _ => Tensor::zeros([], (Kind::Float, Device::Cpu)),
            };
            output = Some(out);
            Ok::<_, ModelError>(scalar)
        },
    )?;
    let output = output.ok_or_else(|| ModelError::InvalidInput("forward did not run".into()))?;
    Ok((output, activations))
}

/// TransformerLens's `lm_cross_entropy_loss`, the loss every model of the workspace reports: the
/// negative log-probability of each next token, `[b, p - 1]`, or its mean. With an attention mask
/// only pairs whose current and next tokens are both real count (masked entries of the per-token
/// loss are 0).
pub fn lm_cross_entropy_loss(
    logits: &Tensor,
    tokens: &Tensor,
    attention_mask: Option<&Tensor>,
    per_token: bool,
) -> Tensor {
    let len = logits.size()[1];
    let log_probs = logits.log_softmax(-1, Kind::Float);
    let predicted = log_probs
        .narrow(1, 0, len - 1)
        .gather(-1, &tokens.narrow(1, 1, len - 1).unsqueeze(-1), false)
        .squeeze_dim(-1);
    match attention_mask {
        Some(mask) => {
            let pairs =
                (mask.narrow(1, 0, len - 1) * mask.narrow(1, 1, len - 1)).to_kind(Kind::Float);
            let masked = -(predicted * &pairs);
            if per_token {
                masked
            } else {
                masked.sum(Kind::Float) / pairs.sum(Kind::Float)
            }
        }
        None if per_token => -predicted,
        None => -predicted.mean(Kind::Float),
    }
}

/// Checks that `device` exists here: the CPU, or a CUDA device this machine has. Anything else
/// is [`ModelError::DeviceUnavailable`] naming the device and why.
pub fn check_device(device: Device) -> ModelResult<()> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda(index) => {
            let count = if tch::Cuda::is_available() {
                tch::Cuda::device_count()
            } else {
                0
            };
            if (index as i64) < count {
                Ok(())
            } else {
                Err(ModelError::DeviceUnavailable {
                    requested: format!("cuda:{index}"),
                    reason: if count == 0 {
                        "no CUDA device is available (or libtorch was built without CUDA)"
                            .to_string()
                    } else {
                        format!("only {count} CUDA device(s) are available")
                    },
                })
            }
        }
        other => Err(ModelError::DeviceUnavailable {
            requested: format!("{other:?}"),
            reason: "only CPU and CUDA devices are supported".to_string(),
        }),
    }
}
