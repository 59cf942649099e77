//! Loading from checkpoints, generation, and the shared model interfaces (`LensModel` for the
//! benchmarks, `ResidualModel` for the cache helpers).

use hookpoint::{HookRegistry, Normalization, ResidualModel};
use lens_core::generation::generate_with;
use lens_core::model::{
    check_device, ForwardOptions, ForwardOutput, GenerateOptions, LensModel, ModelDims, ModelError,
    ModelResult, WeightParameter,
};
use lens_core::{load, HfConfig, LoadOptions, Tokenizer};
use tch::{Device, Kind, Tensor};

use crate::config::{HookedTransformerConfig, NormType};
use crate::layers::LayerKv;
use crate::model::HookedTransformer;
use crate::params::{
    convert_gpt2, convert_gpt_neo, convert_gpt_neox, convert_llama, convert_opt, convert_parallel,
};
use crate::processing::ProcessingOptions;
use lens_core::config::NormPlacement;

impl HookedTransformer {
    /// Loads `model` (a local HF directory, an embedded model name, or an HF id; see
    /// `lens_core::ModelSource`), converts its weights to TransformerLens's layout and applies
    /// `processing` (`ProcessingOptions::default()` is TransformerLens's `from_pretrained`).
    pub fn from_pretrained(
        model: &str,
        options: &LoadOptions,
        processing: ProcessingOptions,
    ) -> ModelResult<Self> {
        check_device(options.device)?;
        let mut loaded = load(model, options)?;
        let weights = &mut loaded.weights;
        let names: std::collections::BTreeSet<String> =
            weights.names().map(str::to_owned).collect();
        let has = |name: &str| names.contains(name);
        // One HF tensor, its shape checked (`-1`: any size), moved out on its last use.
        let get = |name: &str, shape: &[i64], last: bool| {
            Ok(match (shape.contains(&-1), last) {
                (true, true) => weights.take(name)?,
                (true, false) => weights.get(name)?,
                (false, true) => weights.take_shaped(name, shape)?,
                (false, false) => weights.get_shaped(name, shape)?,
            })
        };
        let (cfg, params) = match &loaded.config {
            HfConfig::Gpt2(hf) => {
                let cfg = HookedTransformerConfig::from_gpt2(hf);
                let params = convert_gpt2(&cfg, hf.tie_word_embeddings, get)?;
                (cfg, params)
            }
            HfConfig::Llama(hf) => (
                HookedTransformerConfig::from_llama(hf),
                convert_llama(hf, has, get)?,
            ),
            HfConfig::Parallel(hf) => (
                HookedTransformerConfig::from_parallel(hf),
                convert_parallel(hf, has, get)?,
            ),
            HfConfig::Opt(hf) => (
                HookedTransformerConfig::from_opt(hf),
                convert_opt(hf, has, get)?,
            ),
            HfConfig::GptNeo(hf) => (
                HookedTransformerConfig::from_gpt_neo(hf),
                convert_gpt_neo(hf, has, get)?,
            ),
            HfConfig::GptNeox(hf) => (
                HookedTransformerConfig::from_gpt_neox(hf),
                convert_gpt_neox(hf, has, get)?,
            ),
            other => {
                return Err(ModelError::Unsupported(format!(
                    "HookedTransformer does not implement {}",
                    other.architecture()
                )))
            }
        };
        let mut model = HookedTransformer::from_params(cfg, params.requires_grad(true))
            .with_tokenizer(loaded.tokenizer.take());
        model.process_weights(processing)?;
        Ok(model)
    }

    /// Loads `model` with no weight processing (TransformerLens's `from_pretrained_no_processing`).
    pub fn from_pretrained_no_processing(model: &str, options: &LoadOptions) -> ModelResult<Self> {
        Self::from_pretrained(model, options, ProcessingOptions::none())
    }

    /// The tokenizer, if the checkpoint had one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// Tokens for `texts` (BOS prepended by default; batches right-padded with an attention mask).
    pub fn to_tokens(
        &self,
        texts: &[&str],
        prepend_bos: Option<bool>,
        padding_side: Option<lens_core::PaddingSide>,
    ) -> ModelResult<lens_core::Tokens> {
        let tokenizer = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| ModelError::Unsupported("this model has no tokenizer".into()))?;
        Ok(tokenizer
            .to_tokens(texts, prepend_bos, padding_side, true)?
            .to_device(self.device())?)
    }

    /// `use_attn_result`: materialise and hook each head's output (`attn.hook_result`).
    pub fn set_use_attn_result(&mut self, on: bool) {
        self.set_hook_flag("use_attn_result", on)
            .expect("use_attn_result excludes no other option");
    }

    /// `use_split_qkv_input`: per-head copies of the residual for q, k and v
    /// (`hook_q_input`, ...). Errors if `use_attn_in` is on.
    pub fn set_use_split_qkv_input(&mut self, on: bool) -> ModelResult<()> {
        self.set_hook_flag("use_split_qkv_input", on)
    }

    /// `use_attn_in`: one per-head copy of the residual shared by q, k and v (`hook_attn_in`).
    /// Errors if `use_split_qkv_input` is on.
    pub fn set_use_attn_in(&mut self, on: bool) -> ModelResult<()> {
        self.set_hook_flag("use_attn_in", on)
    }

    /// `use_hook_mlp_in`: hook a copy of the residual before ln2 (`hook_mlp_in`).
    pub fn set_use_hook_mlp_in(&mut self, on: bool) {
        self.set_hook_flag("use_hook_mlp_in", on)
            .expect("use_hook_mlp_in excludes no other option");
    }

    /// Generates from tokens `[b, p]` (left-padded with `attention_mask` for batches).
    pub fn generate(
        &self,
        tokens: &Tensor,
        attention_mask: Option<&Tensor>,
        options: &GenerateOptions,
    ) -> ModelResult<Tensor> {
        let tokens = self.check_tokens(tokens, 0)?;
        let batch = tokens.size()[0];
        let mask = self.check_mask(attention_mask, batch, tokens.size()[1])?;
        let total = tokens.size()[1] + options.max_new_tokens as i64;
        if total > self.cfg().n_ctx {
            return Err(ModelError::TooLong {
                len: total,
                n_ctx: self.cfg().n_ctx,
            });
        }
        let mut cache: Option<Vec<LayerKv>> = None;
        generate_with(
            &tokens,
            mask.as_ref(),
            options,
            self.cfg().eos_token_id,
            |all, mask, n_new| {
                if !options.use_past_kv_cache {
                    let out = self.forward(
                        all,
                        &ForwardOptions {
                            attention_mask: mask,
                            ..ForwardOptions::default()
                        },
                    )?;
                    return Ok(out.logits()?.select(1, -1));
                }
                // Phi-3's `longrope` switch, as HF generates: the first time the sequence reaches
                // past the pretraining context, the cache is dropped and everything recomputed.
                let total = all.size()[1];
                if let (Some(longrope), Some(kv)) = (&self.cfg().longrope, &cache) {
                    let limit = longrope.original_max_position_embeddings;
                    if total > limit && kv[0].k.size()[1] <= limit {
                        cache = None;
                    }
                }
                let n_new = if cache.is_none() { total } else { n_new };
                let kv = cache.get_or_insert_with(|| self.empty_kv(batch));
                let past = all.size()[1] - n_new;
                let new_tokens = all.narrow(1, past, n_new);
                let residual = self.embed(&new_tokens, mask, past)?;
                let residual =
                    self.run_blocks(residual, 0, self.cfg().n_layers as usize, mask, Some(kv))?;
                Ok(self.logits(&residual.narrow(1, n_new - 1, 1))?.select(1, 0))
            },
        )
    }

    /// Generates from text (BOS prepended; a batch is left-padded) and returns each prompt with
    /// its continuation as text.
    pub fn generate_text(
        &self,
        texts: &[&str],
        options: &GenerateOptions,
    ) -> ModelResult<Vec<String>> {
        let tokenizer = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| ModelError::Unsupported("this model has no tokenizer".into()))?;
        let tokens = tokenizer
            .to_tokens(texts, None, Some(lens_core::PaddingSide::Left), true)?
            .to_device(self.device())?;
        let mask = (texts.len() > 1).then_some(&tokens.attention_mask);
        let generated = tch::no_grad(|| self.generate(&tokens.ids, mask, options))?;
        Ok(tokenizer.to_strings(&generated)?)
    }

    fn empty_kv(&self, batch: i64) -> Vec<LayerKv> {
        let cfg = self.cfg();
        let empty = || {
            Tensor::zeros(
                [batch, 0, cfg.n_kv_heads(), cfg.d_head],
                (self.kind(), self.device()),
            )
        };
        (0..cfg.n_layers)
            .map(|_| LayerKv {
                k: empty(),
                v: empty(),
            })
            .collect()
    }

    /// The parameters' dtype.
    pub fn kind(&self) -> Kind {
        self.params().W_E.kind()
    }

    fn param(&self, name: &str) -> ModelResult<Tensor> {
        self.params()
            .named()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
            .ok_or_else(|| {
                ModelError::InvalidInput(format!(
                    "no weight '{name}'; weights are named like blocks.0.attn.W_Q, unembed.W_U"
                ))
            })
    }

    /// Sets a gating option (`use_attn_result`, `use_split_qkv_input`, `use_attn_in`, `use_hook_mlp_in`).
    pub fn set_hook_flag(&mut self, flag: &str, enabled: bool) -> ModelResult<()> {
        if flag == "use_attn_in" && enabled && self.cfg().n_key_value_heads.is_some() {
            // One input per query head cannot feed fewer key/value heads (TransformerLens's
            // attention fails on it too); use_split_qkv_input gives keys and values their own.
            return Err(ModelError::InvalidInput(
                "use_attn_in needs as many key/value heads as query heads; this model groups \
                 them (n_key_value_heads): use use_split_qkv_input"
                    .into(),
            ));
        }
        let (registry, cfg) = self.registry_and_cfg_mut();
        let (slot, names): (&mut bool, &[&str]) = match flag {
            "use_attn_result" => (&mut cfg.use_attn_result, &["attn.hook_result"]),
            "use_split_qkv_input" => (
                &mut cfg.use_split_qkv_input,
                &["hook_q_input", "hook_k_input", "hook_v_input"],
            ),
            "use_attn_in" => (&mut cfg.use_attn_in, &["hook_attn_in"]),
            "use_hook_mlp_in" => (&mut cfg.use_hook_mlp_in, &["hook_mlp_in"]),
            other => {
                return Err(ModelError::InvalidInput(format!(
                    "unknown hook option '{other}'"
                )))
            }
        };
        *slot = enabled;
        if enabled && cfg.use_split_qkv_input && cfg.use_attn_in {
            let other = if flag == "use_attn_in" {
                "use_split_qkv_input"
            } else {
                "use_attn_in"
            };
            *match flag {
                "use_attn_in" => &mut cfg.use_attn_in,
                _ => &mut cfg.use_split_qkv_input,
            } = false;
            return Err(ModelError::InvalidInput(format!(
                "{flag} and {other} exclude each other; turn {other} off first"
            )));
        }
        for layer in 0..cfg.n_layers {
            for name in names {
                registry.set_gate(&format!("blocks.{layer}.{name}"), flag, enabled)?;
            }
        }
        Ok(())
    }
}

impl LensModel for HookedTransformer {
    fn model_name(&self) -> &str {
        "HookedTransformer"
    }

    fn dims(&self) -> ModelDims {
        let c = self.cfg();
        ModelDims {
            n_layers: c.n_layers,
            n_heads: c.n_heads,
            d_model: c.d_model,
            d_head: c.d_head,
            d_mlp: c.d_mlp,
            d_vocab: c.d_vocab,
            n_ctx: c.n_ctx,
        }
    }

    fn device(&self) -> Device {
        HookedTransformer::device(self)
    }

    fn kind(&self) -> Kind {
        HookedTransformer::kind(self)
    }

    fn hooks(&self) -> &HookRegistry {
        HookedTransformer::hooks(self)
    }

    fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    fn forward(&self, tokens: &Tensor, options: &ForwardOptions) -> ModelResult<ForwardOutput> {
        HookedTransformer::forward(self, tokens, options)
    }

    fn generate(
        &self,
        tokens: &Tensor,
        attention_mask: Option<&Tensor>,
        options: &GenerateOptions,
    ) -> ModelResult<Tensor> {
        HookedTransformer::generate(self, tokens, attention_mask, options)
    }

    fn tl_weight(&self, name: &str) -> ModelResult<Tensor> {
        self.param(name)
    }

    fn tl_weight_names(&self) -> Vec<String> {
        self.params().named().into_iter().map(|(n, _)| n).collect()
    }

    fn processing_notes(&self) -> Vec<String> {
        HookedTransformer::processing_notes(self).to_vec()
    }

    fn cache_dependence(&self) -> Option<String> {
        self.cfg().bidirectional.then(|| {
            "use_bidirectional_attention: positions attend to later ones, which a KV cache \
             filled before they existed cannot hold"
                .to_owned()
        })
    }

    fn batch_dependence(&self) -> Option<String> {
        self.cfg().longrope.as_ref().map(|l| {
            format!(
                "longrope picks short or long rotary factors by the batch's longest sequence \
                 (past {} positions: long)",
                l.original_max_position_embeddings
            )
        })
    }

    fn tl_weight_stack(&self, name: &str) -> ModelResult<Option<Tensor>> {
        Ok(self.layer_stack(name))
    }

    fn tl_weight_grad(&self, name: &str) -> ModelResult<Option<Tensor>> {
        let grad = self.param(name)?.grad();
        Ok(grad.defined().then_some(grad))
    }

    /// Every weight is a parameter of its own.
    fn tl_weight_parameter(&self, name: &str) -> ModelResult<Option<WeightParameter>> {
        Ok(Some(WeightParameter {
            leaf: self.param(name)?,
            is_the_weight: true,
        }))
    }

    fn zero_grad(&self) {
        for (_, t) in self.params().named() {
            // Dropping the gradient frees it; a parameter that never had one is untouched.
            let _ = hookpoint::clear_grad(t);
        }
    }

    /// The options this model can take: `use_attn_in` (one input per query head) does not apply
    /// to grouped key/value heads.
    fn hook_flags(&self) -> Vec<(&'static str, bool)> {
        let grouped = self.cfg().n_key_value_heads.is_some();
        self.cfg()
            .hook_flags()
            .into_iter()
            .filter(|(flag, _)| !(grouped && *flag == "use_attn_in"))
            .collect()
    }

    fn set_hook_flag(&mut self, flag: &str, enabled: bool) -> ModelResult<()> {
        HookedTransformer::set_hook_flag(self, flag, enabled)
    }
}

impl ResidualModel for HookedTransformer {
    fn n_layers(&self) -> usize {
        self.cfg().n_layers as usize
    }

    fn sublayer_norms_read_residual(&self) -> bool {
        !self.cfg().norms_on_residual && self.cfg().norm_placement != NormPlacement::After
    }

    fn has_final_norm(&self) -> bool {
        self.cfg().final_norm
    }

    fn residual_is_a_sum(&self) -> bool {
        !self.cfg().norms_on_residual
    }

    fn n_heads(&self) -> usize {
        self.cfg().n_heads as usize
    }

    fn normalization(&self) -> Normalization {
        match self.cfg().normalization_type {
            NormType::LayerNorm => Normalization::LayerNorm,
            NormType::LayerNormPre => Normalization::LayerNormPre,
            NormType::Rms => Normalization::Rms,
            NormType::RmsPre => Normalization::RmsPre,
        }
    }

    fn w_o(&self, layer: usize) -> Tensor {
        self.params().blocks[layer].attn.W_O.detach()
    }

    fn w_out(&self, layer: usize) -> Tensor {
        self.params().blocks[layer].mlp.W_out.detach()
    }

    /// `W_U`, or, where the residual stream is projected before it (OPT-350m), the map from the
    /// residual stream: `W_project_out W_U`.
    fn w_u(&self) -> Tensor {
        let w_u = self.params().W_U.detach();
        match &self.params().W_project_out {
            Some(w) => w.detach().matmul(&w_u),
            None => w_u,
        }
    }

    fn accumulated_bias(&self, layer: usize, mlp_input: bool, include_mlp_biases: bool) -> Tensor {
        let blocks = &self.params().blocks;
        let mut total = blocks[0].attn.b_O.detach().zeros_like();
        for block in &blocks[..layer] {
            total += block.attn.b_O.detach();
            if include_mlp_biases {
                total += block.mlp.b_out.detach();
            }
        }
        if mlp_input && layer < blocks.len() {
            total += blocks[layer].attn.b_O.detach();
        }
        total
    }

    fn apply_ln_final(&self, residual: &Tensor) -> hookpoint::Result<Tensor> {
        if !self.cfg().final_norm {
            return Ok(residual.shallow_clone());
        }
        // ln_final's own computation, without firing its hooks (this is analysis, not a forward
        // pass), in the forward pass's dtypes: an RMSNorm in f32, cast back before its weight
        // unless the weight is kept in f32 (Gemma's `1 + w` in half precision).
        let kind = residual.kind();
        let eps = self.cfg().eps;
        let ln = self.params().ln_final.as_ref();
        if !self.cfg().normalization_type.centres() {
            let h = residual.to_kind(Kind::Float);
            let normalized = &h / (h.square().mean_dim(-1, true, Kind::Float) + eps).sqrt();
            return Ok(match ln {
                Some(ln) if ln.w.kind() == Kind::Float => {
                    (normalized * ln.w.detach()).to_kind(kind)
                }
                Some(ln) => normalized.to_kind(kind) * ln.w.detach(),
                None => normalized.to_kind(kind),
            });
        }
        let x = residual - residual.mean_dim(-1, true, kind);
        let normalized = &x / (x.square().mean_dim(-1, true, kind) + eps).sqrt();
        Ok(match ln {
            Some(ln) => match &ln.b {
                Some(b) => normalized * ln.w.detach() + b.detach(),
                None => normalized * ln.w.detach(),
            },
            None => normalized,
        })
    }

    fn to_single_token(&self, text: &str) -> hookpoint::Result<i64> {
        let tokenizer = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| hookpoint::HookError::Cache("this model has no tokenizer".into()))?;
        tokenizer
            .to_single_token(text)
            .map_err(|e| hookpoint::HookError::Cache(e.to_string()))
    }
}
