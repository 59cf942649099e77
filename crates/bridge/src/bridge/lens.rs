//! The shared model interface ([`LensModel`]) and the activation-cache helpers' interface
//! ([`ResidualModel`]) for the bridge.

use hookpoint::{HookError, HookRegistry, Normalization, ResidualModel};
use lens_core::model::{
    ForwardOptions, ForwardOutput, GenerateOptions, LensModel, ModelDims, ModelError, ModelResult,
};
use lens_core::Tokenizer;
use tch::{Device, Kind, Tensor};

use super::adapter::ArchitectureAdapter;
use super::TransformerBridge;
use crate::hf::model::generate_hf_style;
use crate::hf::KvCache;

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
                let pass = self
                    .hf
                    .pass(&self.tap(), ids, mask, Some(positions), cache, false)?;
                pass.logits
                    .ok_or_else(|| ModelError::InvalidInput("no logits".into()))
            },
            tokens,
            attention_mask,
            options,
            self.hf.config().eos_token_id,
            self.hf.device(),
        )
    }

    fn all_parameters(&self) -> Vec<Tensor> {
        self.hf
            .params()
            .named()
            .into_iter()
            .map(|(_, t)| t.shallow_clone())
            .collect()
    }
}

impl LensModel for TransformerBridge {
    fn model_name(&self) -> &str {
        "TransformerBridge"
    }

    fn dims(&self) -> ModelDims {
        let c = self.hf.config();
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

    fn tl_weight(&self, name: &str) -> ModelResult<Tensor> {
        self.adapter.tl_weight(self.hf.params(), name)
    }

    fn tl_weight_names(&self) -> Vec<String> {
        self.adapter.tl_weight_names()
    }

    fn tl_weight_grad(&self, name: &str) -> ModelResult<Option<Tensor>> {
        self.adapter.tl_weight_grad(self.hf.params(), name)
    }

    fn zero_grad(&self) {
        for p in self.all_parameters() {
            // Dropping the gradient frees it; a parameter that never had one is untouched.
            let _ = hookpoint::clear_grad(&p);
        }
    }

    fn hook_flags(&self) -> Vec<(&'static str, bool)> {
        let p = self.paths;
        vec![
            ("use_attn_result", p.use_attn_result),
            ("use_split_qkv_input", p.use_split_qkv_input),
            ("use_attn_in", p.use_attn_in),
            ("use_hook_mlp_in", p.use_hook_mlp_in),
        ]
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
        self.hf.config().n_layer as usize
    }

    fn n_heads(&self) -> usize {
        self.hf.config().n_head as usize
    }

    fn normalization(&self) -> Normalization {
        // The bridge keeps its LayerNorms (with weight 1 and bias 0 after folding), as the
        // Python bridge does.
        Normalization::LayerNorm
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

    fn w_u(&self) -> Tensor {
        self.hf.params().unembed_weight().detach().transpose(0, 1)
    }

    fn accumulated_bias(&self, layer: usize, mlp_input: bool, include_mlp_biases: bool) -> Tensor {
        let p = self.hf.params();
        let d = self.hf.config().n_embd;
        let mut total = Tensor::zeros([d], (self.hf.kind(), self.hf.device()));
        for (l, b) in p.h.iter().enumerate().take(layer + 1) {
            if l < layer || mlp_input {
                total = &total + b.attn_c_proj.bias.detach();
            }
            if l < layer && include_mlp_biases {
                total = &total + b.mlp_c_proj.bias.detach();
            }
        }
        total
    }

    fn apply_ln_final(&self, residual: &Tensor) -> hookpoint::Result<Tensor> {
        let ln = &self.hf.params().ln_f;
        let d = self.hf.config().n_embd;
        Ok(residual.f_layer_norm(
            [d],
            Some(&ln.weight.detach()),
            Some(&ln.bias.detach()),
            self.hf.config().layer_norm_epsilon,
            true,
        )?)
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
