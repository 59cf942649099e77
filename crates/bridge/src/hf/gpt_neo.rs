//! HuggingFace's `GPTNeoForCausalLM`, operation by operation as transformers 5.9.0 computes it
//! in eager mode: token and learned position embeddings, GPT-2-like sequential blocks with
//! LayerNorms, q/k/v projections without biases, scores in f32 and not scaled, the causal mask
//! (a window of keys on local layers) replacing scores before the padding mask is added, a GELU
//! MLP, an untied or tied `lm_head` without a bias; HF's position ids, loss, KV cache (every key
//! kept, local layers masked) and `output_hidden_states`. No hooks.

use lens_core::model::{ModelError, ModelResult};
use lens_core::{GptNeoConfig, HfConfig, Weights};
use tch::{Device, Kind, Tensor};

use crate::hf::attention::{self, Scores};
use crate::hf::decoder::{blocks_then_head, decoder_api, Part, RotaryDecoder};
use crate::hf::forward::{layer_norm, PassOutput};
use crate::hf::kv_cache::KvCache;
use crate::hf::llama::LinearParams;
use crate::hf::mask::AttentionMask;
use crate::hf::model::CheckedInputs;
use crate::hf::params::{
    find_parameter, layer_part, take_layer_norm, take_leaf, take_linear, LayerNormParams,
};
use crate::input;
use crate::tap::{BlockSite, LinSite, LnSite, Site, Tap};

/// One `GPTNeoBlock` (`transformer.h.{i}`).
#[derive(Debug)]
pub struct GptNeoLayerParams {
    /// `ln_1`.
    pub ln_1: LayerNormParams,
    /// `attn.attention.q_proj`, `[d, d]`, no bias.
    pub q_proj: LinearParams,
    /// `attn.attention.k_proj`.
    pub k_proj: LinearParams,
    /// `attn.attention.v_proj`.
    pub v_proj: LinearParams,
    /// `attn.attention.out_proj`, with a bias.
    pub out_proj: LinearParams,
    /// `ln_2`.
    pub ln_2: LayerNormParams,
    /// `mlp.c_fc`, `[d_mlp, d]`.
    pub c_fc: LinearParams,
    /// `mlp.c_proj`, `[d, d_mlp]`.
    pub c_proj: LinearParams,
}

/// Every parameter of a `GPTNeoForCausalLM`, under HuggingFace's names.
#[derive(Debug)]
pub struct GptNeoParams {
    /// `transformer.wte.weight`, `[vocab, d]`.
    pub wte: Tensor,
    /// `transformer.wpe.weight`, `[n_positions, d]`.
    pub wpe: Tensor,
    /// `transformer.h`.
    pub h: Vec<GptNeoLayerParams>,
    /// `transformer.ln_f`.
    pub ln_f: LayerNormParams,
    /// `lm_head.weight`; `None` while tied to `wte`.
    pub lm_head: Option<Tensor>,
    /// A bias of the unembedding, `[vocab]`: HuggingFace's GPT-Neo has none; the bridge adds a
    /// zero one (TransformerLens's `b_U`).
    pub lm_head_bias: Option<Tensor>,
}

impl GptNeoParams {
    /// Takes every tensor a model with `config` needs out of `weights` (shapes checked),
    /// converted to `kind` on `device`, as leaves that require gradients. The buffers older
    /// checkpoints carry (`attn.attention.bias`, `masked_bias`) are not read, as HuggingFace
    /// ignores them. Errors name the missing or mis-shaped tensor.
    pub fn from_weights(
        config: &GptNeoConfig,
        weights: &mut Weights,
        device: Device,
        kind: Kind,
    ) -> ModelResult<Self> {
        let (d, m, v) = (
            config.hidden_size,
            config.intermediate_size,
            config.vocab_size,
        );
        let mut take = |name: &str, shape: &[i64]| take_leaf(weights, name, shape, device, kind);
        let mut h = Vec::with_capacity(config.num_layers as usize);
        for l in 0..config.num_layers {
            let p = |s: &str| format!("transformer.h.{l}.{s}");
            let mut norm = |s: &str| take_layer_norm(&mut take, &p(s), d);
            let (ln_1, ln_2) = (norm("ln_1")?, norm("ln_2")?);
            let mut linear = |s: &str, n_out: i64, n_in: i64, bias: bool| {
                take_linear(&mut take, &p(s), [n_out, n_in], bias)
            };
            h.push(GptNeoLayerParams {
                ln_1,
                q_proj: linear("attn.attention.q_proj", d, d, false)?,
                k_proj: linear("attn.attention.k_proj", d, d, false)?,
                v_proj: linear("attn.attention.v_proj", d, d, false)?,
                out_proj: linear("attn.attention.out_proj", d, d, true)?,
                ln_2,
                c_fc: linear("mlp.c_fc", m, d, true)?,
                c_proj: linear("mlp.c_proj", d, m, true)?,
            });
        }
        let wte = take("transformer.wte.weight", &[v, d])?;
        let wpe = take(
            "transformer.wpe.weight",
            &[config.max_position_embeddings, d],
        )?;
        let ln_f = LayerNormParams {
            weight: take("transformer.ln_f.weight", &[d])?,
            bias: take("transformer.ln_f.bias", &[d])?,
        };
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(take("lm_head.weight", &[v, d])?)
        };
        Ok(GptNeoParams {
            wte,
            wpe,
            h,
            ln_f,
            lm_head,
            lm_head_bias: None,
        })
    }

    /// The unembedding, `[vocab, d]` (`wte` while tied).
    pub fn unembedding(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.wte)
    }

    /// Every parameter under its HuggingFace name (`lm_head.weight` only when untied; the
    /// bridge's `lm_head.bias` when present), in `named_parameters()` order.
    pub fn named(&self) -> Vec<(String, &Tensor)> {
        let mut out: Vec<(String, &Tensor)> = vec![
            ("transformer.wte.weight".into(), &self.wte),
            ("transformer.wpe.weight".into(), &self.wpe),
        ];
        for (l, layer) in self.h.iter().enumerate() {
            let p = |s: &str| format!("transformer.h.{l}.{s}");
            let linears = [
                ("attn.attention.q_proj", &layer.q_proj),
                ("attn.attention.k_proj", &layer.k_proj),
                ("attn.attention.v_proj", &layer.v_proj),
                ("attn.attention.out_proj", &layer.out_proj),
            ];
            out.push((p("ln_1.weight"), &layer.ln_1.weight));
            out.push((p("ln_1.bias"), &layer.ln_1.bias));
            for (name, lin) in linears {
                out.push((p(&format!("{name}.weight")), &lin.weight));
                if let Some(b) = &lin.bias {
                    out.push((p(&format!("{name}.bias")), b));
                }
            }
            out.push((p("ln_2.weight"), &layer.ln_2.weight));
            out.push((p("ln_2.bias"), &layer.ln_2.bias));
            for (name, lin) in [("mlp.c_fc", &layer.c_fc), ("mlp.c_proj", &layer.c_proj)] {
                out.push((p(&format!("{name}.weight")), &lin.weight));
                if let Some(b) = &lin.bias {
                    out.push((p(&format!("{name}.bias")), b));
                }
            }
        }
        out.push(("transformer.ln_f.weight".into(), &self.ln_f.weight));
        out.push(("transformer.ln_f.bias".into(), &self.ln_f.bias));
        if let Some(w) = &self.lm_head {
            out.push(("lm_head.weight".into(), w));
        }
        if let Some(b) = &self.lm_head_bias {
            out.push(("lm_head.bias".into(), b));
        }
        out
    }

    /// Gives the q, k or v projection behind `name` (`transformer.h.{l}.attn.attention.q_proj.bias`,
    /// ...) a zero bias that requires gradients; `false` for any other name. Weight processing
    /// uses this where folding the LayerNorm's bias makes them non-zero.
    pub fn add_zero_bias(&mut self, name: &str) -> bool {
        let Some((layer, rest)) = layer_part(name, "transformer.h") else {
            return false;
        };
        let Some(layer) = self.h.get_mut(layer) else {
            return false;
        };
        let linear = match rest {
            "attn.attention.q_proj.bias" => &mut layer.q_proj,
            "attn.attention.k_proj.bias" => &mut layer.k_proj,
            "attn.attention.v_proj.bias" => &mut layer.v_proj,
            _ => return false,
        };
        linear.add_zero_bias();
        true
    }

    /// A parameter by its HuggingFace name, sharing storage (`lm_head.weight` is `wte` while
    /// tied). `None` for a name the model does not have.
    pub fn get(&self, name: &str) -> Option<Tensor> {
        find_parameter(self.named(), name, "lm_head.weight", self.unembedding())
    }
}

/// HuggingFace's GPT-Neo causal language model (eager attention, eval mode).
pub struct GptNeoForCausalLM {
    config: GptNeoConfig,
    params: GptNeoParams,
}

impl std::fmt::Debug for GptNeoForCausalLM {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GptNeoForCausalLM")
            .field("layers", &self.config.num_layers)
            .field("hidden_size", &self.config.hidden_size)
            .field("kind", &self.kind())
            .field("device", &self.device())
            .finish()
    }
}

impl GptNeoForCausalLM {
    /// A model from a parsed config and its checkpoint's tensors (HuggingFace names).
    pub fn from_weights(
        config: GptNeoConfig,
        mut weights: Weights,
        device: Device,
        kind: Kind,
    ) -> ModelResult<Self> {
        input::check_device(device)?;
        input::check_float_kind(kind)?;
        let params = GptNeoParams::from_weights(&config, &mut weights, device, kind)?;
        Ok(GptNeoForCausalLM { config, params })
    }

    /// One mask per distinct window (global layers and local ones).
    fn masks(
        &self,
        q_len: i64,
        past_len: i64,
        attention_mask: Option<&Tensor>,
    ) -> Vec<(Option<i64>, AttentionMask)> {
        let mut windows: Vec<Option<i64>> = Vec::new();
        for w in &self.config.layer_windows {
            if !windows.contains(w) {
                windows.push(*w);
            }
        }
        windows
            .into_iter()
            .map(|w| {
                let mask = AttentionMask::replacing(
                    q_len,
                    past_len + q_len,
                    past_len,
                    attention_mask,
                    w,
                    self.device(),
                );
                (w, mask)
            })
            .collect()
    }

    /// One `GPTNeoBlock`: `x + attn(ln_1(x))`, then `+ mlp(ln_2(.))`.
    fn block<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &GptNeoLayerParams,
        x: Tensor,
        mask: &AttentionMask,
        cache: Option<&mut KvCache>,
    ) -> ModelResult<Tensor> {
        let s = |site: BlockSite| Site::Block(l, site);
        let resid_pre = tap.at(s(BlockSite::In), x)?;
        let attended = self.attention(tap, l, layer, &resid_pre, mask, cache)?;
        let resid_mid = tap.at(s(BlockSite::ResidMid), attended + &resid_pre)?;
        let mlp_input = if tap.paths().use_hook_mlp_in {
            tap.at(s(BlockSite::MlpIn), resid_mid.copy())?
        } else {
            resid_mid.shallow_clone()
        };
        let normed = layer_norm(
            tap,
            |site| s(BlockSite::Ln2(site)),
            mlp_input,
            &layer.ln_2,
            self.config.layer_norm_epsilon,
        )?;
        let mlp_out = self.mlp(tap, l, layer, normed)?;
        tap.at(s(BlockSite::Out), resid_mid + mlp_out)
    }

    /// `GPTNeoSelfAttention` from the block's input (`ln_1` included).
    fn attention<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &GptNeoLayerParams,
        resid_pre: &Tensor,
        mask: &AttentionMask,
        cache: Option<&mut KvCache>,
    ) -> ModelResult<Tensor> {
        let c = &self.config;
        let ln1 = |x: Tensor| {
            layer_norm(
                tap,
                |site| Site::Block(l, BlockSite::Ln1(site)),
                x,
                &layer.ln_1,
                c.layer_norm_epsilon,
            )
        };
        let h = c.num_heads;
        let projections = [(&layer.q_proj, h), (&layer.k_proj, h), (&layer.v_proj, h)];
        let [q, k, v] = attention::separate_qkv(tap, l, resid_pre, ln1, projections, c.head_dim())?;
        attention::attend(
            tap,
            l,
            (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)),
            cache,
            mask,
            Scores::UpcastUnscaled,
            resid_pre.kind(),
            &layer.out_proj,
        )
    }

    /// `GPTNeoMLP`: `c_proj(act(c_fc(x)))`.
    fn mlp<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &GptNeoLayerParams,
        x: Tensor,
    ) -> ModelResult<Tensor> {
        let s = |site: BlockSite| Site::Block(l, site);
        let x = tap.at(s(BlockSite::MlpCompIn), x)?;
        let x = tap.at(s(BlockSite::MlpFc(LinSite::In)), x)?;
        let pre = tap.at(s(BlockSite::MlpFc(LinSite::Out)), layer.c_fc.apply(&x))?;
        let post = tap.at(
            s(BlockSite::MlpProj(LinSite::In)),
            self.config.activation_function.apply(&pre),
        )?;
        let out = tap.at(
            s(BlockSite::MlpProj(LinSite::Out)),
            layer.c_proj.apply(&post),
        )?;
        tap.at(s(BlockSite::MlpCompOut), out)
    }
}

decoder_api!(
    GptNeoForCausalLM,
    GptNeoConfig,
    GptNeoParams,
    wte,
    gpt_neo_config
);

impl RotaryDecoder for GptNeoForCausalLM {
    fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }

    fn device(&self) -> Device {
        GptNeoForCausalLM::device(self)
    }

    fn eos_token_id(&self) -> Option<i64> {
        self.config.eos_token_id
    }

    /// The position table has `max_position_embeddings` rows.
    fn max_positions(&self) -> i64 {
        self.config.max_position_embeddings
    }

    fn pass<T: Tap>(
        &self,
        tap: &T,
        inputs: &CheckedInputs,
        mut cache: Option<&mut KvCache>,
        output_hidden_states: bool,
        stop_at_layer: Option<usize>,
    ) -> ModelResult<PassOutput> {
        let past_len = cache.as_ref().map_or(0, |c| c.len());
        let q_len = inputs.ids.size()[1];
        let masks = self.masks(q_len, past_len, inputs.mask.as_ref());
        let ids = tap.at(Site::EmbedIn, inputs.ids.shallow_clone())?;
        let embeds = tap.at(
            Site::EmbedOut,
            Tensor::embedding(&self.params.wte, &ids, -1, false, false),
        )?;
        let positions = tap.at(Site::PosEmbedIn, inputs.positions.shallow_clone())?;
        let pos_embeds = tap.at(
            Site::PosEmbedOut,
            Tensor::embedding(&self.params.wpe, &positions, -1, false, false),
        )?;
        let x = embeds + pos_embeds;
        let n_layers = self.params.h.len();
        let block = |l: usize, x: Tensor| {
            let layer = &self.params.h[l];
            let mask = &masks
                .iter()
                .find(|(w, _)| *w == self.config.layer_windows[l])
                .ok_or_else(|| ModelError::InvalidInput(format!("no mask for layer {l}")))?
                .1;
            self.block(tap, l, layer, x, mask, cache.as_deref_mut())
        };
        let eps = self.config.layer_norm_epsilon;
        let final_norm = |x: Tensor| layer_norm(tap, Site::LnFinal, x, &self.params.ln_f, eps);
        blocks_then_head(
            tap,
            x,
            n_layers,
            stop_at_layer,
            output_hidden_states,
            block,
            final_norm,
            |x| self.unembed(x),
        )
    }

    fn n_layers(&self) -> usize {
        self.params.h.len()
    }

    fn learned_positions(&self) -> Option<&Tensor> {
        Some(&self.params.wpe)
    }

    fn embedding(&self) -> &Tensor {
        &self.params.wte
    }

    fn unembed(&self, x: &Tensor) -> Tensor {
        x.linear(self.params.unembedding(), self.params.lm_head_bias.as_ref())
    }

    fn run_part<T: Tap>(&self, tap: &T, part: Part<'_>, x: &Tensor) -> Option<ModelResult<Tensor>> {
        Some(match part {
            Part::LnFinal => layer_norm(
                tap,
                Site::LnFinal,
                x.shallow_clone(),
                &self.params.ln_f,
                self.config.layer_norm_epsilon,
            ),
            Part::Block(l, name) => {
                let layer = self.params.h.get(l)?;
                return self.run_block_component(tap, l, layer, name, x);
            }
        })
    }
}

/// Components one at a time, as the suite's `all_components` compares them with the bridge's.
impl GptNeoForCausalLM {
    /// One part of block `l` (`""` for the whole block), or `None` for an unknown part.
    fn run_block_component<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &GptNeoLayerParams,
        part: &str,
        x: &Tensor,
    ) -> Option<ModelResult<Tensor>> {
        let s = |site: BlockSite| Site::Block(l, site);
        let eps = self.config.layer_norm_epsilon;
        let len = x.size()[1];
        let mask = || {
            AttentionMask::replacing(len, len, 0, None, self.config.layer_windows[l], x.device())
        };
        let norm = |site: fn(LnSite) -> BlockSite, params: &LayerNormParams| {
            layer_norm(tap, |ln| s(site(ln)), x.shallow_clone(), params, eps)
        };
        Some(match part {
            "" => self.block(tap, l, layer, x.shallow_clone(), &mask(), None),
            "attn" => self.attention(tap, l, layer, x, &mask(), None),
            "ln1" => norm(BlockSite::Ln1, &layer.ln_1),
            "ln2" => norm(BlockSite::Ln2, &layer.ln_2),
            "mlp" => self.mlp(tap, l, layer, x.shallow_clone()),
            _ => return None,
        })
    }
}

/// The GPT-Neo config of `config`, or [`ModelError::Unsupported`].
pub(crate) fn gpt_neo_config(config: &HfConfig) -> ModelResult<GptNeoConfig> {
    config.as_gpt_neo().cloned().ok_or_else(|| {
        ModelError::Unsupported(format!(
            "architecture {} is not a GPT-Neo model",
            config.architecture()
        ))
    })
}
