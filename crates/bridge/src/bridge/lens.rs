//! The shared model interface ([`LensModel`]) and the activation-cache helpers' interface
//! ([`ResidualModel`]) for the bridge.

use hookpoint::{HookError, HookRegistry, Normalization, ResidualModel};
use lens_core::layer_stacks;
use lens_core::model::{
    ForwardOptions, ForwardOutput, GenerateOptions, LensModel, ModelDims, ModelError, ModelResult,
    WeightParameter,
};
use lens_core::Tokenizer;
use tch::{Device, Kind, Tensor};

use super::TransformerBridge;
use crate::hf::model::generate_hf_style;
use crate::hf::{HfModel, KvCache};

impl TransformerBridge {
    /// Generates with HuggingFace's inputs at each step (only the new token with a KV cache,
    /// position ids `cumsum(mask) - 1` with padding at 1) through the bridge's hook points, so
    /// hooks attached during generation fire at every step.
    pub fn generate(
        &self,
        tokens: &Tensor,
        attention_mask: Option<&Tensor>,
        options: &GenerateOptions,
    ) -> ModelResult<Tensor> {
        generate_hf_style(
            |ids, mask, positions, cache: Option<&mut KvCache>| {
                let past_len = cache.as_ref().map_or(0, |c| c.len());
                let inputs = self.hf.check_inputs(ids, mask, Some(positions), past_len)?;
                let pass = self
                    .hf
                    .pass_checked(&self.tap(), &inputs, cache, false, None)?;
                pass.logits
                    .ok_or_else(|| ModelError::InvalidInput("no logits".into()))
            },
            tokens,
            attention_mask,
            options,
            self.hf.config().eos_token_id(),
            self.hf.device(),
            self.hf
                .config()
                .as_llama()
                .and_then(|c| c.longrope.as_ref())
                .map(|l| l.original_max_position_embeddings),
        )
    }

    fn all_parameters(&self) -> Vec<Tensor> {
        self.hf.parameters()
    }

    /// A TransformerLens weight's HuggingFace source, or an error naming the weight.
    pub(crate) fn weight_source(&self, name: &str) -> ModelResult<&lens_core::weight_map::Source> {
        self.weights.get(name).ok_or_else(|| {
            ModelError::InvalidInput(format!(
                "'{name}' is not a TransformerLens weight of this {} (e.g. embed.W_E, \
                 blocks.0.attn.W_Q, unembed.W_U)",
                self.hf.config().architecture()
            ))
        })
    }
}

/// Why a bidirectional model's cached generation differs from its recomputation.
pub(crate) fn bidirectional_dependence() -> String {
    "use_bidirectional_attention: positions attend to later ones, which a KV cache filled \
     before they existed cannot hold"
        .to_owned()
}

/// Why a `longrope` model's batch is not batch-invariant.
pub(crate) fn longrope_dependence(longrope: &lens_core::config::LongRope) -> Option<String> {
    Some(format!(
        "longrope picks short or long rotary factors by the batch's longest sequence (past {} \
         positions: long), so a short prompt in a long batch rotates as it would not alone",
        longrope.original_max_position_embeddings
    ))
}

impl LensModel for TransformerBridge {
    fn model_name(&self) -> &str {
        "TransformerBridge"
    }

    fn dims(&self) -> ModelDims {
        match &self.hf {
            HfModel::Llama(m) => {
                let c = m.config();
                ModelDims {
                    n_layers: c.num_hidden_layers,
                    n_heads: c.num_attention_heads,
                    d_model: c.hidden_size,
                    d_head: c.head_dim,
                    d_mlp: c.intermediate_size,
                    d_vocab: c.vocab_size,
                    n_ctx: c.max_position_embeddings,
                }
            }
            HfModel::GptNeox(m) => {
                let c = m.config();
                ModelDims {
                    n_layers: c.num_hidden_layers,
                    n_heads: c.num_attention_heads,
                    d_model: c.hidden_size,
                    d_head: c.head_dim(),
                    d_mlp: c.intermediate_size,
                    d_vocab: c.vocab_size,
                    n_ctx: c.max_position_embeddings,
                }
            }
            HfModel::Opt(m) => {
                let c = m.config();
                ModelDims {
                    n_layers: c.num_hidden_layers,
                    n_heads: c.num_attention_heads,
                    d_model: c.hidden_size,
                    d_head: c.head_dim(),
                    d_mlp: c.ffn_dim,
                    d_vocab: c.vocab_size,
                    n_ctx: c.max_position_embeddings,
                }
            }
            HfModel::GptNeo(m) => {
                let c = m.config();
                ModelDims {
                    n_layers: c.num_layers,
                    n_heads: c.num_heads,
                    d_model: c.hidden_size,
                    d_head: c.head_dim(),
                    d_mlp: c.intermediate_size,
                    d_vocab: c.vocab_size,
                    n_ctx: c.max_position_embeddings,
                }
            }
            HfModel::Parallel(m) => {
                let c = m.config();
                ModelDims {
                    n_layers: c.num_hidden_layers,
                    n_heads: c.num_attention_heads,
                    d_model: c.hidden_size,
                    d_head: c.head_dim,
                    d_mlp: c.intermediate_size,
                    d_vocab: c.vocab_size,
                    n_ctx: c.max_position_embeddings,
                }
            }
            HfModel::Gpt2(m) => {
                let c = m.config();
                ModelDims {
                    n_layers: c.n_layer,
                    n_heads: c.n_head,
                    d_model: c.n_embd,
                    d_head: c.d_head(),
                    d_mlp: c.d_mlp(),
                    d_vocab: c.vocab_size,
                    n_ctx: c.n_ctx,
                }
            }
        }
    }

    fn device(&self) -> Device {
        self.hf.device()
    }

    fn kind(&self) -> Kind {
        self.hf.kind()
    }

    fn hooks(&self) -> &HookRegistry {
        &self.hooks.registry
    }

    fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    fn forward(&self, tokens: &Tensor, options: &ForwardOptions) -> ModelResult<ForwardOutput> {
        TransformerBridge::forward(self, tokens, options)
    }

    fn generate(
        &self,
        tokens: &Tensor,
        attention_mask: Option<&Tensor>,
        options: &GenerateOptions,
    ) -> ModelResult<Tensor> {
        TransformerBridge::generate(self, tokens, attention_mask, options)
    }

    /// A view of the live parameter (a write is seen by the model). A bias TransformerLens
    /// always has but this checkpoint lacks (Llama's without `attention_bias`) is a fresh zero
    /// tensor, and a LayerNorm without parameters (OPT's `layer_norm_elementwise_affine: false`)
    /// fresh ones and zeros, not views: there is no parameter to alias.
    fn tl_weight(&self, name: &str) -> ModelResult<Tensor> {
        let source = self.weight_source(name)?;
        match (self.hf.parameter(&source.hf), &source.if_absent) {
            (Some(t), _) => Ok(source.tl_of(&t)),
            (None, Some(constant)) => Ok(constant.tensor(self.hf.kind(), self.hf.device())),
            (None, None) => Err(ModelError::InvalidInput(format!(
                "{name}: the model has no parameter {}",
                source.hf
            ))),
        }
    }

    fn tl_weight_names(&self) -> Vec<String> {
        self.weights.names().map(str::to_owned).collect()
    }

    fn processing_notes(&self) -> Vec<String> {
        TransformerBridge::processing_notes(self).to_vec()
    }

    fn batch_dependence(&self) -> Option<String> {
        longrope_dependence(self.hf.config().as_llama()?.longrope.as_ref()?)
    }

    fn cache_dependence(&self) -> Option<String> {
        self.hf
            .config()
            .as_llama()
            .is_some_and(|c| c.bidirectional)
            .then(bidirectional_dependence)
    }

    /// The view of the stacked HuggingFace parameter when every layer's weight is the same view
    /// of the same parameter pattern (`transformer.h.*.attn.c_attn.weight`).
    fn tl_weight_stack(&self, name: &str) -> ModelResult<Option<Tensor>> {
        let n_layers = self.dims().n_layers;
        let mut pattern_and_view = None;
        let mut layers = Vec::with_capacity(n_layers as usize);
        for l in 0..n_layers {
            let Some(source) = self.weights.get(&format!("blocks.{l}.{name}")) else {
                return Ok(None);
            };
            let (Some((pattern, layer)), Some(parameter)) = (
                layer_stacks::layer_pattern(&source.hf),
                self.hf.parameter(&source.hf),
            ) else {
                return Ok(None);
            };
            // A weight whose values differ from its parameter's is no view to alias.
            if source.value != lens_core::weight_map::Value::Same {
                return Ok(None);
            }
            let first = pattern_and_view.get_or_insert((pattern.clone(), source.view));
            if layer != l || *first != (pattern, source.view) {
                return Ok(None);
            }
            layers.push(parameter);
        }
        let Some((pattern, view)) = pattern_and_view else {
            return Ok(None);
        };
        Ok(self
            .stacks
            .get_or_stack(&pattern, &layers, || self.hf.named_parameters())
            .map(|stack| view.apply(&stack)))
    }

    fn tl_weight_grad(&self, name: &str) -> ModelResult<Option<Tensor>> {
        let source = self.weight_source(name)?;
        let Some(t) = self.hf.parameter(&source.hf) else {
            return Ok(None);
        };
        let grad = t.grad();
        Ok(grad.defined().then(|| source.tl_grad_of(&grad)))
    }

    /// The HF parameter the weight is a view of (or computed from).
    fn tl_weight_parameter(&self, name: &str) -> ModelResult<Option<WeightParameter>> {
        let source = self.weight_source(name)?;
        Ok(self.hf.parameter(&source.hf).map(|leaf| WeightParameter {
            leaf,
            is_the_weight: false,
        }))
    }

    fn tl_weight_storage(&self, name: &str) -> ModelResult<(usize, i64)> {
        let source = self.weight_source(name)?;
        let t = match self.hf.parameter(&source.hf) {
            Some(parameter) => source.view.apply(&parameter),
            None => self.tl_weight(name)?,
        };
        Ok((t.data_ptr() as usize, t.numel() as i64))
    }

    fn tl_weight_value(&self, name: &str) -> lens_core::weight_map::Value {
        self.weights
            .get(name)
            .map_or(lens_core::weight_map::Value::Same, |source| source.value)
    }

    /// Through the view, or with the values changed back where they differ from the
    /// parameter's (Gemma's `1 + w` norms and scaled `W_E`).
    fn write_tl_weight(&self, name: &str, value: &Tensor) -> ModelResult<()> {
        let source = self.weight_source(name)?;
        let parameter = self.hf.parameter(&source.hf).ok_or_else(|| {
            ModelError::InvalidInput(format!(
                "{name} is a constant (a zero bias, or a parameterless LayerNorm's ones and \
                 zeros) the checkpoint has no parameter {} for; it cannot be written",
                source.hf
            ))
        })?;
        let _guard = tch::no_grad_guard();
        source.write(&parameter, value)?;
        Ok(())
    }

    fn tl_weight_constant(&self, name: &str) -> Option<f64> {
        let source = self.weights.get(name)?;
        if self.hf.parameter(&source.hf).is_some() {
            return None;
        }
        source.if_absent.as_ref().map(|constant| constant.fill)
    }

    fn zero_grad(&self) {
        for p in self.all_parameters() {
            // Dropping the gradient frees it; a parameter that never had one is untouched.
            let _ = hookpoint::clear_grad(&p);
        }
    }

    /// The options this model can take: `use_attn_in` (one input per query head) does not apply
    /// to grouped key/value heads.
    fn hook_flags(&self) -> Vec<(&'static str, bool)> {
        let p = self.paths;
        let grouped = self.groups_key_value_heads();
        let mut flags = vec![
            ("use_attn_result", p.use_attn_result),
            ("use_split_qkv_input", p.use_split_qkv_input),
        ];
        if !grouped {
            flags.push(("use_attn_in", p.use_attn_in));
        }
        flags.push(("use_hook_mlp_in", p.use_hook_mlp_in));
        flags
    }

    fn set_hook_flag(&mut self, flag: &str, enabled: bool) -> ModelResult<()> {
        match flag {
            "use_attn_result" => self.set_use_attn_result(enabled),
            "use_split_qkv_input" => self.set_use_split_qkv_input(enabled)?,
            "use_attn_in" => self.set_use_attn_in(enabled)?,
            "use_hook_mlp_in" => self.set_use_hook_mlp_in(enabled),
            other => {
                return Err(ModelError::InvalidInput(format!(
                    "unknown hook flag '{other}' (use_attn_result, use_split_qkv_input, \
                     use_attn_in, use_hook_mlp_in)"
                )))
            }
        }
        Ok(())
    }
}

impl ResidualModel for TransformerBridge {
    fn n_layers(&self) -> usize {
        self.dims().n_layers as usize
    }

    fn sublayer_norms_read_residual(&self) -> bool {
        let config = self.hf.config();
        let post_sublayer = config
            .as_llama()
            .is_some_and(|c| c.norm_placement == lens_core::config::NormPlacement::After);
        let post_residual = config.as_opt().is_some_and(|c| !c.do_layer_norm_before);
        !(post_sublayer || post_residual)
    }

    fn has_final_norm(&self) -> bool {
        self.hf
            .config()
            .as_opt()
            .is_none_or(|c| c.has_final_layer_norm())
    }

    fn residual_is_a_sum(&self) -> bool {
        self.hf
            .config()
            .as_opt()
            .is_none_or(|c| c.do_layer_norm_before)
    }

    fn n_heads(&self) -> usize {
        self.dims().n_heads as usize
    }

    fn normalization(&self) -> Normalization {
        // The bridge keeps its norms (with weight 1, and bias 0, after folding), as the Python
        // bridge does.
        match &self.hf {
            HfModel::Gpt2(_)
            | HfModel::GptNeox(_)
            | HfModel::Parallel(_)
            | HfModel::GptNeo(_)
            | HfModel::Opt(_) => Normalization::LayerNorm,
            HfModel::Llama(_) => Normalization::Rms,
        }
    }

    /// # Panics
    /// When `layer` is not a block of the model (like indexing a slice).
    fn w_o(&self, layer: usize) -> Tensor {
        self.tl_weight(&format!("blocks.{layer}.attn.W_O"))
            .map(|t| t.detach())
            .unwrap_or_else(|e| panic!("W_O of layer {layer}: {e}"))
    }

    /// # Panics
    /// When `layer` is not a block of the model (like indexing a slice).
    fn w_out(&self, layer: usize) -> Tensor {
        self.tl_weight(&format!("blocks.{layer}.mlp.W_out"))
            .map(|t| t.detach())
            .unwrap_or_else(|e| panic!("W_out of layer {layer}: {e}"))
    }

    /// `W_U`, or, where the residual stream is projected before it (OPT-350m), the map from the
    /// residual stream: `W_project_out W_U`.
    fn w_u(&self) -> Tensor {
        let w_u = self
            .tl_weight("unembed.W_U")
            .map(|t| t.detach())
            .unwrap_or_else(|e| panic!("W_U: {e}"));
        match self.tl_weight("unembed.W_project_out") {
            Ok(w) => w.detach().matmul(&w_u),
            Err(_) => w_u,
        }
    }

    fn accumulated_bias(&self, layer: usize, mlp_input: bool, include_mlp_biases: bool) -> Tensor {
        let bias = |name: String| {
            self.tl_weight(&name)
                .map(|t| t.detach())
                .unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let d = self.dims().d_model;
        let mut total = Tensor::zeros([d], (self.hf.kind(), self.hf.device()));
        for l in 0..=layer.min(self.n_layers().saturating_sub(1)) {
            if l < layer || mlp_input {
                total = &total + bias(format!("blocks.{l}.attn.b_O"));
            }
            if l < layer && include_mlp_biases {
                total = &total + bias(format!("blocks.{l}.mlp.b_out"));
            }
        }
        total
    }

    fn apply_ln_final(&self, residual: &Tensor) -> hookpoint::Result<Tensor> {
        match &self.hf {
            HfModel::Gpt2(hf) => {
                let ln = &hf.params().ln_f;
                let d = hf.config().n_embd;
                Ok(residual.f_layer_norm(
                    [d],
                    Some(&ln.weight.detach()),
                    Some(&ln.bias.detach()),
                    hf.config().layer_norm_epsilon,
                    true,
                )?)
            }
            HfModel::GptNeox(hf) => {
                let ln = &hf.params().final_layer_norm;
                let d = hf.config().hidden_size;
                Ok(residual.f_layer_norm(
                    [d],
                    Some(&ln.weight.detach()),
                    Some(&ln.bias.detach()),
                    hf.config().layer_norm_eps,
                    true,
                )?)
            }
            HfModel::Opt(hf) => {
                let d = hf.config().hidden_size;
                // Post-LN OPT (OPT-350m) has no final norm: its residual stream is normalised.
                let Some(ln) = hf.params().final_layer_norm.as_ref() else {
                    return Ok(residual.shallow_clone());
                };
                Ok(residual.f_layer_norm(
                    [d],
                    Some(&ln.weight.detach()),
                    Some(&ln.bias.detach()),
                    1e-5,
                    true,
                )?)
            }
            HfModel::GptNeo(hf) => {
                let ln = &hf.params().ln_f;
                let d = hf.config().hidden_size;
                Ok(residual.f_layer_norm(
                    [d],
                    Some(&ln.weight.detach()),
                    Some(&ln.bias.detach()),
                    hf.config().layer_norm_epsilon,
                    true,
                )?)
            }
            HfModel::Parallel(hf) => {
                let ln = &hf.params().final_norm;
                let d = hf.config().hidden_size;
                Ok(residual.f_layer_norm(
                    [d],
                    Some(&ln.weight.detach()),
                    Some(&ln.bias.detach()),
                    hf.config().layer_norm_eps,
                    true,
                )?)
            }
            HfModel::Llama(hf) => {
                // LlamaRMSNorm: in f32, cast back, times the weight.
                let kind = residual.kind();
                let h = residual.to_kind(Kind::Float);
                let variance = h.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
                let normed = (h * (variance + hf.config().rms_norm_eps).rsqrt()).to_kind(kind);
                Ok(hf.params().norm.detach() * normed)
            }
        }
    }

    fn to_single_token(&self, text: &str) -> hookpoint::Result<i64> {
        let tokenizer = self.tokenizer.as_ref().ok_or_else(|| {
            HookError::Cache("the model has no tokenizer to turn text into a token".into())
        })?;
        tokenizer
            .to_single_token(text)
            .map_err(|e| HookError::Cache(e.to_string()))
    }
}
