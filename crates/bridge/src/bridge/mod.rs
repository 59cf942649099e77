//! The TransformerBridge: the HuggingFace model, run with a hook point at every site, under
//! TransformerLens's names.

pub(crate) mod adapter;
pub(crate) mod compat;
pub(crate) mod hooks;
mod lens;
mod text;

use hookpoint::HookRegistry;
use lens_core::model::{ForwardOptions, ForwardOutput, ModelError, ModelResult, ReturnType};
use lens_core::{Gpt2Config, HfConfig};
use lens_core::{LoadOptions, Tokenizer, Weights};
use tch::{Device, Kind, Tensor};

use crate::hf::decoder::RotaryDecoder;
use crate::hf::model::gpt2_config;
use crate::hf::{
    hf_position_ids, Gpt2LMHeadModel, GptNeoForCausalLM, GptNeoxForCausalLM, HfModel, KvCache,
    LlamaForCausalLM, OptForCausalLM, ParallelForCausalLM,
};
use crate::input;
use crate::tap::TlPaths;
use lens_core::layer_stacks::LayerStacks;
use lens_core::model::LensModel;
use lens_core::weight_map::{self, WeightMap};

pub use adapter::{ArchitectureAdapter, Component, ComponentKind, Gpt2Adapter};
pub use compat::CompatibilityOptions;
use hooks::{BridgeHooks, BridgeTap, Layout};

/// A HuggingFace model with every TransformerLens hook name: the Rust counterpart of
/// TransformerLens's `TransformerBridge`.
///
/// It owns the HuggingFace model ([`Gpt2LMHeadModel`]) and runs HuggingFace's forward pass with
/// a hook point at every component input and output (`embed.hook_out`,
/// `blocks.0.attn.q.hook_out`, ...) and at TransformerLens's internal sites (`hook_scale`,
/// `hook_attn_scores`, `hook_pattern`, ...), reachable under the TransformerLens names as well
/// (`hook_embed`, `blocks.0.attn.hook_q`, `blocks.0.hook_resid_pre`, ...). Where it departs
/// from the Python bridge (it never fires a hook twice, `hook_resid_mid` is its own point,
/// masked scores are `-inf`, unknown names are errors), see `docs/bridge-hook-names.md`.
pub struct TransformerBridge {
    hf: HfModel,
    /// GPT-2's components (for the per-component runs of Phase 1 and compatibility mode).
    adapter: Option<Gpt2Adapter>,
    /// The architecture's weight table: TransformerLens's weights as views of the live ones.
    weights: WeightMap,
    hooks: BridgeHooks,
    paths: TlPaths,
    tokenizer: Option<Tokenizer>,
    compatibility: Option<CompatibilityOptions>,
    /// The per-layer HuggingFace parameters' storage, stacked over layers when a stacked weight
    /// is first asked for (so TransformerLens's stacked weights are views of the live ones).
    stacks: LayerStacks,
    /// What compatibility mode's processing turned off, as TransformerLens warns it.
    processing_notes: Vec<String>,
}

/// The zero unembedding bias `[vocab]` the bridge adds (TransformerLens's `b_U`), a leaf in the
/// embedding's dtype and device.
fn zero_unembed_bias(embedding: &Tensor) -> Tensor {
    let (v, kind, device) = (embedding.size()[0], embedding.kind(), embedding.device());
    Tensor::zeros([v], (kind, device)).set_requires_grad(true)
}

impl std::fmt::Debug for TransformerBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransformerBridge")
            .field("hf", &self.hf)
            .field("hook_points", &self.hooks.registry.len())
            .field("paths", &self.paths)
            .field("compatibility", &self.compatibility)
            .finish()
    }
}

impl TransformerBridge {
    /// Loads `model` (a local directory in HuggingFace layout, an embedded model such as
    /// [`lens_core::DEFAULT_MODEL`], or a HuggingFace hub id; see [`lens_core::ModelSource`]) on
    /// `device` in `dtype`, with its tokenizer when it has one: TransformerLens's
    /// `boot_transformers`.
    ///
    /// Errors: [`ModelError::DeviceUnavailable`] (e.g. CUDA without a CUDA device),
    /// [`ModelError::Load`] (files), [`ModelError::Unsupported`] (not GPT-2).
    pub fn boot(model: &str, device: Device, dtype: Kind) -> ModelResult<Self> {
        Self::boot_with(
            model,
            &LoadOptions {
                kind: Some(dtype),
                device,
                ..LoadOptions::default()
            },
        )
    }

    /// [`TransformerBridge::boot`] with every loading option, as the HookedTransformer's
    /// `from_pretrained` takes them: where to look for the model (`options.resolve`: models
    /// cache, HF hub cache, endpoint, offline, revision, token), the device, the dtype (the
    /// checkpoint's own when `None`), and tokenizer defaults.
    pub fn boot_with(model: &str, options: &LoadOptions) -> ModelResult<Self> {
        let device = options.device;
        input::check_device(device)?;
        if let Some(kind) = options.kind {
            input::check_float_kind(kind)?;
        }
        let loaded = lens_core::load(model, options)?;
        let dtype = match options.kind {
            Some(kind) => kind,
            None => loaded
                .weights
                .iter()
                .map(|(_, t)| t.kind())
                .find(|k| matches!(k, Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double))
                .unwrap_or(Kind::Float),
        };
        let config = match loaded.config {
            HfConfig::Llama(llama) => {
                let hf = LlamaForCausalLM::from_weights(llama, loaded.weights, device, dtype)?;
                return Ok(Self::from_llama(hf, loaded.tokenizer));
            }
            HfConfig::Opt(opt) => {
                let hf = OptForCausalLM::from_weights(opt, loaded.weights, device, dtype)?;
                return Self::from_opt(hf, loaded.tokenizer);
            }
            HfConfig::GptNeo(neo) => {
                let hf = GptNeoForCausalLM::from_weights(neo, loaded.weights, device, dtype)?;
                return Ok(Self::from_gpt_neo(hf, loaded.tokenizer));
            }
            HfConfig::Parallel(parallel) => {
                let hf =
                    ParallelForCausalLM::from_weights(parallel, loaded.weights, device, dtype)?;
                return Self::from_parallel(hf, loaded.tokenizer);
            }
            HfConfig::GptNeox(neox) => {
                let hf = GptNeoxForCausalLM::from_weights(neox, loaded.weights, device, dtype)?;
                return Ok(Self::from_gpt_neox(hf, loaded.tokenizer));
            }
            other => gpt2_config(&other)?,
        };
        Self::from_parts(config, loaded.weights, loaded.tokenizer, device, dtype)
    }

    /// A bridge from a parsed config, its checkpoint's tensors (HuggingFace names) and an
    /// optional tokenizer.
    pub fn from_parts(
        config: Gpt2Config,
        weights: Weights,
        tokenizer: Option<Tokenizer>,
        device: Device,
        dtype: Kind,
    ) -> ModelResult<Self> {
        let hf = Gpt2LMHeadModel::from_weights(config, weights, device, dtype)?;
        Ok(Self::from_hf(hf, tokenizer))
    }

    /// A bridge over an HF model, which it takes over. Like the Python bridge it adds a zero
    /// unembedding bias (`unembed.b_U`), which weight processing may change.
    pub fn from_hf(hf: Gpt2LMHeadModel, tokenizer: Option<Tokenizer>) -> Self {
        let mut hf = hf;
        let params = hf.params_mut();
        params
            .lm_head_bias
            .get_or_insert_with(|| zero_unembed_bias(&params.wte));
        let adapter = Gpt2Adapter::new(hf.config());
        let layout = Layout::gpt2(hf.config().n_layer as usize);
        let weights = adapter.weight_map().clone();
        Self::assemble(HfModel::Gpt2(hf), Some(adapter), layout, weights, tokenizer)
    }

    /// A bridge over a Llama-family model (Llama, Mistral, Qwen2, Qwen3), which it takes over,
    /// under the names of TransformerLens's adapters for the family. Like the GPT-2 bridge it
    /// adds a zero unembedding bias (`unembed.b_U`).
    pub fn from_llama(hf: LlamaForCausalLM, tokenizer: Option<Tokenizer>) -> Self {
        let mut hf = hf;
        let params = hf.params_mut();
        params
            .lm_head_bias
            .get_or_insert_with(|| zero_unembed_bias(&params.embed_tokens));
        let c = hf.config();
        let layout = Layout::llama(c);
        let weights = weight_map::llama(c);
        Self::assemble(HfModel::Llama(hf), None, layout, weights, tokenizer)
    }

    /// A bridge over a GPT-NeoX model (Pythia), which it takes over, under the names of
    /// TransformerLens 3.9.0's GPT-NeoX adapter. Like the GPT-2 bridge it adds a zero
    /// unembedding bias (`unembed.b_U`).
    pub fn from_gpt_neox(hf: GptNeoxForCausalLM, tokenizer: Option<Tokenizer>) -> Self {
        let mut hf = hf;
        let params = hf.params_mut();
        params
            .embed_out_bias
            .get_or_insert_with(|| zero_unembed_bias(&params.embed_in));
        let c = hf.config();
        let layout = Layout::gpt_neox(c.num_hidden_layers as usize, c.use_parallel_residual);
        let weights = weight_map::gpt_neox(c);
        Self::assemble(HfModel::GptNeox(hf), None, layout, weights, tokenizer)
    }

    /// A bridge over a GPT-J or Phi model, which it takes over, under the names of
    /// TransformerLens 3.9.0's adapters for them, with an `ln2` the Python bridge lacks (the
    /// block's one LayerNorm seen from the MLP's side, as the HookedTransformer has it).
    /// Phi's `qk_layernorm` is `attn.q_norm` / `attn.k_norm`, over `[b * p * h, dh]` rows as
    /// the HookedTransformer's (the Python bridge 3.9.0 has no hooks there).
    pub fn from_parallel(
        hf: ParallelForCausalLM,
        tokenizer: Option<Tokenizer>,
    ) -> ModelResult<Self> {
        let c = hf.config();
        let layout = Layout::parallel(
            c.num_hidden_layers as usize,
            c.family == lens_core::ParallelFamily::Phi,
            c.qk_layernorm,
        );
        let weights = weight_map::parallel(c);
        Ok(Self::assemble(
            HfModel::Parallel(hf),
            None,
            layout,
            weights,
            tokenizer,
        ))
    }

    /// A bridge over a GPT-Neo model, which it takes over, under the names of TransformerLens
    /// 3.9.0's GPT-Neo adapter. Like the GPT-2 bridge it adds a zero unembedding bias
    /// (`unembed.b_U`).
    pub fn from_gpt_neo(hf: GptNeoForCausalLM, tokenizer: Option<Tokenizer>) -> Self {
        let mut hf = hf;
        let params = hf.params_mut();
        params
            .lm_head_bias
            .get_or_insert_with(|| zero_unembed_bias(&params.wte));
        let c = hf.config();
        let layout = Layout::gpt_neo(c.num_layers as usize);
        let weights = weight_map::gpt_neo(c);
        Self::assemble(HfModel::GptNeo(hf), None, layout, weights, tokenizer)
    }

    /// A bridge over an OPT model, which it takes over, under the names of TransformerLens
    /// 3.9.0's OPT adapter. Like the GPT-2 bridge it adds a zero unembedding bias
    /// (`unembed.b_U`). Every layout HF runs: OPT-350m's LayerNorms after the residual
    /// additions, its projections and missing final LayerNorm, LayerNorms without parameters.
    pub fn from_opt(hf: OptForCausalLM, tokenizer: Option<Tokenizer>) -> ModelResult<Self> {
        let mut hf = hf;
        let params = hf.params_mut();
        params
            .lm_head_bias
            .get_or_insert_with(|| zero_unembed_bias(&params.embed_tokens));
        let c = hf.config();
        let layout = Layout::opt(c);
        let weights = weight_map::opt(c);
        Ok(Self::assemble(
            HfModel::Opt(hf),
            None,
            layout,
            weights,
            tokenizer,
        ))
    }

    /// The bridge over `hf` with the hook points of `layout` and TransformerLens weights
    /// `weights`, its per-layer parameters stacked.
    fn assemble(
        hf: HfModel,
        adapter: Option<Gpt2Adapter>,
        layout: Layout,
        weights: WeightMap,
        tokenizer: Option<Tokenizer>,
    ) -> Self {
        let paths = TlPaths::default();
        TransformerBridge {
            stacks: LayerStacks::default(),
            hf,
            adapter,
            weights,
            hooks: BridgeHooks::new(layout, &paths),
            paths,
            tokenizer,
            compatibility: None,
            processing_notes: Vec::new(),
        }
    }

    /// The wrapped HuggingFace model (with the bridge's unembedding bias for GPT-2, and
    /// processed weights after [`TransformerBridge::enable_compatibility_mode`]).
    pub fn hf_model(&self) -> &HfModel {
        &self.hf
    }

    /// The HuggingFace config.
    pub fn config(&self) -> HfConfig {
        self.hf.config()
    }

    /// GPT-2's architecture adapter (component names, HuggingFace paths, weight views); `None`
    /// for the other families so far.
    pub fn adapter(&self) -> Option<&Gpt2Adapter> {
        self.adapter.as_ref()
    }

    /// The hook registry (`hook_dict`): add hooks, open scopes, reset. Unknown names are
    /// errors; a gated hook named while its option is off is an error naming the option.
    pub fn hook_registry(&self) -> &HookRegistry {
        &self.hooks.registry
    }

    /// Every hook name, canonical names then TransformerLens aliases, in the Python bridge's
    /// `hook_dict` order.
    pub fn hook_dict_names(&self) -> Vec<String> {
        self.hooks.hook_dict_names()
    }

    /// Every alias with the canonical name of its hook point.
    pub fn hook_aliases(&self) -> Vec<(String, String)> {
        self.hooks.alias_pairs()
    }

    /// Removes hooks from every hook point (all of them, aliases and internal points
    /// included): every non-permanent hook, and permanent ones too with `including_permanent`.
    /// Returns how many were removed.
    pub fn reset_hooks(&self, including_permanent: bool) -> usize {
        self.hooks.registry.reset_hooks(including_permanent)
    }

    /// The optional TransformerLens paths in effect.
    pub fn paths(&self) -> TlPaths {
        self.paths
    }

    fn set_paths(&mut self, paths: TlPaths) {
        self.paths = paths;
        self.hooks.apply_gates(&paths);
    }

    /// `use_attn_result`: materialise each head's output as `attn.hook_result` `[b, p, h, d]`.
    pub fn set_use_attn_result(&mut self, on: bool) {
        self.set_paths(TlPaths {
            use_attn_result: on,
            ..self.paths
        });
    }

    /// `use_split_qkv_input`: separate per-head copies of the residual for q, k and v
    /// (`hook_q_input`, ...), each normalised by ln1 (whose hooks then fire three times, with a
    /// head axis). Errors if `use_attn_in` is on (they exclude each other).
    pub fn set_use_split_qkv_input(&mut self, on: bool) -> ModelResult<()> {
        if on && self.paths.use_attn_in {
            return Err(ModelError::InvalidInput(
                "use_split_qkv_input and use_attn_in exclude each other; turn use_attn_in off first"
                    .into(),
            ));
        }
        self.set_paths(TlPaths {
            use_split_qkv_input: on,
            ..self.paths
        });
        Ok(())
    }

    /// `use_attn_in`: one per-head copy of the residual shared by q, k and v
    /// (`hook_attn_in`). Errors if `use_split_qkv_input` is on.
    pub fn set_use_attn_in(&mut self, on: bool) -> ModelResult<()> {
        self.attn_in_supported(on)?;
        if on && self.paths.use_split_qkv_input {
            return Err(ModelError::InvalidInput(
                "use_attn_in and use_split_qkv_input exclude each other; turn use_split_qkv_input off first"
                    .into(),
            ));
        }
        self.set_paths(TlPaths {
            use_attn_in: on,
            ..self.paths
        });
        Ok(())
    }

    /// Whether query heads share key/value heads (grouped-query attention).
    pub(crate) fn groups_key_value_heads(&self) -> bool {
        let ratio = match &self.hf {
            HfModel::Llama(m) => m.config().gqa_ratio(),
            HfModel::Parallel(m) => m.config().gqa_ratio(),
            HfModel::Gpt2(_) | HfModel::GptNeox(_) | HfModel::GptNeo(_) | HfModel::Opt(_) => 1,
        };
        ratio > 1
    }

    /// `use_attn_in` gives q, k and v one input per query head, which grouped key/value heads
    /// cannot take (as in TransformerLens's HookedTransformer).
    fn attn_in_supported(&self, on: bool) -> ModelResult<()> {
        if on && self.groups_key_value_heads() {
            let dims = self.dims();
            let kv_heads = match &self.hf {
                HfModel::Llama(m) => m.config().num_key_value_heads,
                HfModel::Parallel(m) => m.config().num_key_value_heads,
                HfModel::Gpt2(_) | HfModel::GptNeox(_) | HfModel::GptNeo(_) | HfModel::Opt(_) => {
                    dims.n_heads
                }
            };
            return Err(ModelError::Unsupported(format!(
                "use_attn_in needs as many key/value heads as query heads; this {} model has {} \
                 query and {kv_heads} key/value heads (use use_split_qkv_input instead)",
                self.hf.config().architecture(),
                dims.n_heads,
            )));
        }
        Ok(())
    }

    /// `use_hook_mlp_in`: hook a copy of the residual before ln2 (`hook_mlp_in`).
    pub fn set_use_hook_mlp_in(&mut self, on: bool) {
        self.set_paths(TlPaths {
            use_hook_mlp_in: on,
            ..self.paths
        });
    }

    /// Processes the weights as TransformerLens's HookedTransformer does (`fold_ln`,
    /// `center_writing_weights`, `center_unembed`, `fold_value_biases`; in f32, cast back) and
    /// writes them into the HuggingFace parameters: LayerNorm weights become 1 and biases 0,
    /// `lm_head` is untied from the embedding. RMSNorm models (the Llama family) are processed
    /// as TransformerLens processes them: no centring of writing weights, and an `o_proj` bias
    /// added where fold_value_biases needs one. Afterwards logits, loss, and every hook's
    /// activation and gradient equal those of the processed HookedTransformer.
    ///
    /// Errors if compatibility mode is already on (processing twice would fold twice).
    pub fn enable_compatibility_mode(&mut self, options: CompatibilityOptions) -> ModelResult<()> {
        if let Some(previous) = self.compatibility {
            return Err(ModelError::InvalidInput(format!(
                "compatibility mode is already enabled (with {previous:?})"
            )));
        }
        match (&mut self.hf, &self.adapter) {
            (HfModel::Gpt2(hf), Some(adapter)) => {
                compat::process(adapter, hf.params_mut(), &options)?
            }
            (
                HfModel::Llama(_)
                | HfModel::GptNeox(_)
                | HfModel::Parallel(_)
                | HfModel::GptNeo(_)
                | HfModel::Opt(_),
                _,
            ) => self.process_by_table(&options)?,
            (HfModel::Gpt2(_), None) => {
                return Err(ModelError::Unsupported(
                    "compatibility mode for GPT-2 needs its adapter".into(),
                ))
            }
        }
        // Processing may add parameters (a bias fold_value_biases needs): stack them anew.
        self.stacks.reset();
        self.compatibility = Some(options);
        Ok(())
    }

    /// The options compatibility mode was enabled with, if it was.
    pub fn compatibility_mode(&self) -> Option<CompatibilityOptions> {
        self.compatibility
    }

    /// What compatibility mode's processing turned off and why (TransformerLens's warnings:
    /// fold_ln for post-norm architectures, center_unembed under a logit soft cap).
    pub fn processing_notes(&self) -> &[String] {
        &self.processing_notes
    }

    /// The tokenizer, if the model has one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    fn tap(&self) -> BridgeTap<'_> {
        BridgeTap {
            hooks: &self.hooks,
            paths: self.paths,
        }
    }

    /// Runs one component alone on `input` through the bridge's hook points: the counterpart of
    /// [`Gpt2LMHeadModel::run_component`] and [`LlamaForCausalLM::run_component`], which the
    /// suite's `all_components` compares it with.
    pub fn run_component(&self, name: &str, input: &Tensor) -> ModelResult<Tensor> {
        match &self.hf {
            HfModel::Gpt2(hf) => hf.run_component_with(&self.tap(), name, input),
            HfModel::Llama(hf) => hf.run_component_with(&self.tap(), name, input),
            HfModel::GptNeox(hf) => hf.run_component_with(&self.tap(), name, input),
            HfModel::Parallel(hf) => hf.run_component_with(&self.tap(), name, input),
            HfModel::GptNeo(hf) => hf.run_component_with(&self.tap(), name, input),
            HfModel::Opt(hf) => hf.run_component_with(&self.tap(), name, input),
        }
    }

    /// The forward pass on tokens `[b, p]`: logits, loss (TransformerLens's: with a mask only
    /// pairs of real tokens count) or both, or the residual stream before block
    /// `stop_at_layer`. With an attention mask (left padding), position ids are HuggingFace's
    /// (`cumsum(mask) - 1`, padding at 1).
    pub fn forward(&self, tokens: &Tensor, options: &ForwardOptions) -> ModelResult<ForwardOutput> {
        self.run_with_kv(tokens, options, None)
    }

    /// [`TransformerBridge::forward`] with a KV cache: `tokens` are the new positions, the mask
    /// covers cached and new positions.
    pub fn run_with_kv(
        &self,
        tokens: &Tensor,
        options: &ForwardOptions,
        cache: Option<&mut KvCache>,
    ) -> ModelResult<ForwardOutput> {
        let past_len = cache.as_ref().map_or(0, |c| c.len());
        let n_layers = LensModel::dims(self).n_layers as usize;
        let mut inputs = self
            .hf
            .check_inputs(tokens, options.attention_mask, None, past_len)?;
        let len = inputs.ids.size()[1];
        // With padding, HuggingFace's generate-style positions (`cumsum(mask) - 1`), which are in
        // range by construction.
        if let Some(mask) = &inputs.mask {
            inputs.positions = hf_position_ids(mask).narrow(1, past_len, len);
        }
        let stop = options.stop_at_layer.filter(|&s| s < n_layers);
        let pass = self
            .hf
            .pass_checked(&self.tap(), &inputs, cache, false, stop)?;
        if pass.residual.is_some() {
            return Ok(ForwardOutput {
                logits: None,
                loss: None,
                residual: pass.residual,
            });
        }
        let logits = pass
            .logits
            .ok_or_else(|| ModelError::InvalidInput("the pass did not reach the logits".into()))?;
        let loss = match options.return_type {
            ReturnType::Logits => None,
            ReturnType::Loss | ReturnType::Both => {
                if len < 2 {
                    return Err(ModelError::InvalidInput(
                        "the loss needs at least two positions".into(),
                    ));
                }
                let loss_mask = inputs.mask.as_ref().map(|m| m.narrow(1, past_len, len));
                Some(lens_core::model::lm_cross_entropy_loss(
                    &logits,
                    &inputs.ids,
                    loss_mask.as_ref(),
                    options.loss_per_token,
                ))
            }
        };
        let logits = (options.return_type != ReturnType::Loss).then_some(logits);
        Ok(ForwardOutput {
            logits,
            loss,
            residual: None,
        })
    }
}
