//! `HookedTransformer`: forward passes with every hook point, losses, hooks and caches.

use hookpoint::{run_with_cache, ActivationCache, CacheOptions, HookRegistry, HookSpec};
use lens_core::layer_stacks::LayerStacks;
use lens_core::model::{
    lm_cross_entropy_loss, ForwardOptions, ForwardOutput as Output, ReturnType,
};
use lens_core::Tokenizer;
use tch::{Device, Kind, Tensor};

use crate::config::HookedTransformerConfig;
use crate::error::{Error, Result};
use crate::hooks::ModelHooks;
use crate::layers::{self, LayerKv, MaskInfo};
use crate::params::Params;

/// The reference HookedTransformer: TransformerLens's weight layout, hook names and semantics,
/// for GPT-2-style models.
pub struct HookedTransformer {
    cfg: HookedTransformerConfig,
    params: Params,
    /// The per-layer parameters' storage, stacked over layers when a stacked weight is first
    /// asked for (TransformerLens's `W_Q`, ... as views of the live weights).
    stacks: LayerStacks,
    registry: HookRegistry,
    pub(crate) hooks: ModelHooks,
    pub(crate) tokenizer: Option<Tokenizer>,
    /// What the last weight processing turned off, as TransformerLens warns it.
    pub(crate) processing_notes: Vec<String>,
}

fn named_clones(params: &Params) -> Vec<(String, Tensor)> {
    params
        .named()
        .into_iter()
        .map(|(name, t)| (name, t.shallow_clone()))
        .collect()
}

impl std::fmt::Debug for HookedTransformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedTransformer")
            .field("cfg", &self.cfg)
            .field("hook_points", &self.registry.len())
            .finish()
    }
}

impl HookedTransformer {
    /// A model from a configuration and parameters in TransformerLens's layout.
    pub fn from_params(cfg: HookedTransformerConfig, params: Params) -> Self {
        let mut registry = HookRegistry::new();
        let hooks = ModelHooks::register(&mut registry, &cfg);
        HookedTransformer {
            cfg,
            params,
            stacks: LayerStacks::default(),
            registry,
            hooks,
            tokenizer: None,
            processing_notes: Vec::new(),
        }
    }

    /// Forgets the stacks of the per-layer parameters, after weight processing replaced them.
    pub(crate) fn restack(&mut self) {
        self.stacks.reset();
    }

    /// Every layer's parameter `blocks.{l}.{name}` as one `[n_layers, ...]` tensor sharing
    /// their storage, when the parameters live in one stack.
    pub(crate) fn layer_stack(&self, name: &str) -> Option<Tensor> {
        let layers: Vec<Tensor> = (0..self.cfg.n_layers)
            .map(|l| {
                let full = format!("blocks.{l}.{name}");
                self.params
                    .named()
                    .into_iter()
                    .find(|(n, _)| *n == full)
                    .map(|(_, t)| t.shallow_clone())
            })
            .collect::<Option<_>>()?;
        self.stacks
            .get_or_stack(&format!("blocks.*.{name}"), &layers, || {
                named_clones(&self.params)
            })
    }

    /// Attaches a tokenizer (for text input and generation from text).
    pub fn with_tokenizer(mut self, tokenizer: Option<Tokenizer>) -> Self {
        self.tokenizer = tokenizer;
        self
    }

    /// Mutable access to the registry and configuration (gating hook points).
    pub(crate) fn registry_and_cfg_mut(
        &mut self,
    ) -> (&mut HookRegistry, &mut HookedTransformerConfig) {
        (&mut self.registry, &mut self.cfg)
    }

    /// The configuration.
    pub fn cfg(&self) -> &HookedTransformerConfig {
        &self.cfg
    }

    /// The parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Mutable parameters (weight processing; writes are seen by the next forward).
    pub(crate) fn params_and_cfg_mut(&mut self) -> (&mut Params, &mut HookedTransformerConfig) {
        (&mut self.params, &mut self.cfg)
    }

    /// The hook points (`hook_dict`): add hooks, open scopes, reset.
    pub fn hooks(&self) -> &HookRegistry {
        &self.registry
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.params.W_E.device()
    }

    /// Checks a token batch `[b, p]` (or `[p]`) and returns it as `[b, p]` int64 on the model's device.
    pub(crate) fn check_tokens(&self, tokens: &Tensor, past_len: i64) -> Result<Tensor> {
        let tokens = match tokens.dim() {
            1 => tokens.unsqueeze(0),
            2 => tokens.shallow_clone(),
            rank => {
                return Err(Error::InvalidInput(format!(
                    "tokens must be [batch, pos] or [pos], got rank {rank}"
                )))
            }
        };
        if tokens.numel() == 0 {
            return Err(Error::EmptyInput);
        }
        if !matches!(
            tokens.kind(),
            Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8
        ) {
            return Err(Error::InvalidInput(format!(
                "tokens must be integers, got {:?}",
                tokens.kind()
            )));
        }
        let len = past_len + tokens.size()[1];
        if len > self.cfg.n_ctx {
            return Err(Error::TooLong {
                len,
                n_ctx: self.cfg.n_ctx,
            });
        }
        let (min, max) = (tokens.min().int64_value(&[]), tokens.max().int64_value(&[]));
        if min < 0 || max >= self.cfg.d_vocab {
            return Err(Error::InvalidInput(format!(
                "token ids must be in [0, {}), got {min}..={max}",
                self.cfg.d_vocab
            )));
        }
        Ok(tokens.to_kind(Kind::Int64).to_device(self.device()))
    }

    pub(crate) fn check_mask(
        &self,
        mask: Option<&Tensor>,
        batch: i64,
        total_len: i64,
    ) -> Result<Option<Tensor>> {
        let Some(mask) = mask else { return Ok(None) };
        if mask.size() != [batch, total_len] {
            return Err(Error::InvalidInput(format!(
                "attention_mask has shape {:?}, expected [{batch}, {total_len}]",
                mask.size()
            )));
        }
        Ok(Some(mask.to_kind(Kind::Int64).to_device(self.device())))
    }

    /// Runs the model on a token batch.
    pub fn forward(&self, tokens: &Tensor, options: &ForwardOptions) -> Result<Output> {
        let tokens = self.check_tokens(tokens, 0)?;
        let (batch, len) = (tokens.size()[0], tokens.size()[1]);
        let mask = self.check_mask(options.attention_mask, batch, len)?;
        let residual = self.embed(&tokens, mask.as_ref(), 0)?;
        let stop = options
            .stop_at_layer
            .unwrap_or(self.cfg.n_layers as usize)
            .min(self.cfg.n_layers as usize);
        let residual = self.run_blocks(residual, 0, stop, mask.as_ref(), None)?;
        if options
            .stop_at_layer
            .is_some_and(|s| s < self.cfg.n_layers as usize)
        {
            return Ok(Output {
                logits: None,
                loss: None,
                residual: Some(residual),
            });
        }
        let logits = self.logits(&residual)?;
        let loss = match options.return_type {
            ReturnType::Logits => None,
            ReturnType::Loss | ReturnType::Both => Some(lm_cross_entropy_loss(
                &logits,
                &tokens,
                mask.as_ref(),
                options.loss_per_token,
            )),
        };
        let logits = (options.return_type != ReturnType::Loss).then_some(logits);
        Ok(Output {
            logits,
            loss,
            residual: None,
        })
    }

    /// Continues a forward pass from the residual stream `[b, p, d_model]` before block
    /// `start_at_layer` (TransformerLens's `start_at_layer`): blocks `start_at_layer..`, then the
    /// logits (or the residual before `options.stop_at_layer`). The loss needs tokens, so only
    /// `ReturnType::Logits` is accepted.
    pub fn forward_from_layer(
        &self,
        residual: &Tensor,
        start_at_layer: usize,
        options: &ForwardOptions,
    ) -> Result<Output> {
        let n_layers = self.cfg.n_layers as usize;
        if start_at_layer > n_layers {
            return Err(Error::InvalidInput(format!(
                "start_at_layer {start_at_layer} is past the last block ({n_layers} blocks)"
            )));
        }
        if options.return_type != ReturnType::Logits {
            return Err(Error::InvalidInput(
                "start_at_layer computes logits only: the loss needs the tokens".into(),
            ));
        }
        if residual.dim() != 3 || residual.size()[2] != self.cfg.d_model {
            return Err(Error::InvalidInput(format!(
                "the residual must be [batch, pos, {}], got {:?}",
                self.cfg.d_model,
                residual.size()
            )));
        }
        let mask = self.check_mask(
            options.attention_mask,
            residual.size()[0],
            residual.size()[1],
        )?;
        let stop = options
            .stop_at_layer
            .unwrap_or(n_layers)
            .min(n_layers)
            .max(start_at_layer);
        let residual = self.run_blocks(
            residual.shallow_clone(),
            start_at_layer,
            stop,
            mask.as_ref(),
            None,
        )?;
        if stop < n_layers {
            return Ok(Output {
                logits: None,
                loss: None,
                residual: Some(residual),
            });
        }
        Ok(Output {
            logits: Some(self.logits(&residual)?),
            loss: None,
            residual: None,
        })
    }

    /// `hook_embed(W_E[tokens]) + hook_pos_embed(W_pos[positions])` (no positional term under
    /// rotary attention).
    pub(crate) fn embed(
        &self,
        tokens: &Tensor,
        mask: Option<&Tensor>,
        past_len: i64,
    ) -> Result<Tensor> {
        let tokens = match &self.hooks.tokens {
            Some(hook) => hook.run(tokens.shallow_clone())?,
            None => tokens.shallow_clone(),
        };
        let (batch, len) = (tokens.size()[0], tokens.size()[1]);
        let embed = self.hooks.embed.run(
            self.params
                .W_E
                .index_select(0, &tokens.reshape([-1]))
                .reshape([batch, len, -1]),
        )?;
        // A narrower embedding is projected into the residual stream (OPT-350m).
        let embed = match (&self.params.W_project_in, &self.hooks.project_in) {
            (Some(w), Some(hook)) => hook.run(embed.matmul(w))?,
            (Some(w), None) => embed.matmul(w),
            (None, _) => embed,
        };
        // Rotary attention has no positional embedding (and no `hook_pos_embed`).
        let (Some(w_pos), Some(hook)) = (&self.params.W_pos, &self.hooks.pos_embed) else {
            return Ok(embed);
        };
        let pos = layers::positional(w_pos, hook, len, past_len, mask, batch)?;
        Ok(embed + pos)
    }

    /// Blocks `start..stop` on the residual stream.
    pub(crate) fn run_blocks(
        &self,
        mut residual: Tensor,
        start: usize,
        stop: usize,
        mask: Option<&Tensor>,
        mut kv: Option<&mut Vec<LayerKv>>,
    ) -> Result<Tensor> {
        let mask_info = MaskInfo {
            attention_mask: mask,
        };
        for l in start..stop {
            let layer_kv = kv.as_deref_mut().map(|cache| &mut cache[l]);
            residual = layers::block(
                &self.cfg,
                l as i64,
                &self.params.blocks[l],
                &self.hooks.blocks[l],
                residual,
                &mask_info,
                layer_kv,
            )?;
        }
        Ok(residual)
    }

    /// `ln_final` (where the model has one), the projection out of the residual stream (where
    /// the embedding is projected), then `unembed.hook_in`, `x W_U + b_U`, `unembed.hook_out`.
    pub(crate) fn unembed(&self, residual: &Tensor) -> Result<Tensor> {
        let x = match &self.hooks.ln_final {
            Some(hooks) => {
                layers::layer_norm(&self.cfg, residual, self.params.ln_final.as_ref(), hooks)?
            }
            None => residual.shallow_clone(),
        };
        let x = match &self.params.W_project_out {
            Some(w) => x.matmul(w),
            None => x,
        };
        let x = self.hooks.unembed_in.run(x)?;
        Ok(self
            .hooks
            .unembed_out
            .run(x.matmul(&self.params.W_U) + &self.params.b_U)?)
    }

    /// The logits of the residual stream: [`HookedTransformer::unembed`], then the soft cap
    /// `cap * tanh(logits / cap)` when the model has one (after `unembed.hook_out`, as
    /// TransformerLens applies it: no hook sees the capped logits).
    pub(crate) fn logits(&self, residual: &Tensor) -> Result<Tensor> {
        let logits = self.unembed(residual)?;
        Ok(match self.cfg.output_logits_soft_cap {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        })
    }

    /// Runs `forward` with `hooks` attached; they are removed afterwards however it ends.
    pub fn run_with_hooks(
        &self,
        tokens: &Tensor,
        options: &ForwardOptions,
        hooks: &[HookSpec],
    ) -> Result<Output> {
        self.registry
            .with_hooks(hooks, || self.forward(tokens, options))?
    }

    /// Records activations while `body` runs the model (and gradients of the scalar `body`
    /// returns, with `incl_bwd`) — for losses other than the model's own, such as the sum of the
    /// last position's logits.
    pub fn run_with_cache_fn(
        &self,
        cache: &CacheOptions,
        body: impl FnOnce(&Self) -> Result<Tensor>,
    ) -> Result<(Tensor, ActivationCache)> {
        run_with_cache(
            &self.registry,
            cache,
            Some(self.cfg.n_layers as usize),
            || body(self),
        )
    }
}
