//! HuggingFace's Llama-family decoders, `LlamaForCausalLM`, `MistralForCausalLM`,
//! `Qwen2ForCausalLM` and `Qwen3ForCausalLM`, operation by operation as transformers 5.9.0
//! computes them in eager mode: RMSNorm in f32 cast back, rotary embeddings (default, `linear`
//! and `llama3` frequencies, half-split pairs), grouped-query attention, sliding windows per
//! layer, Qwen3's per-head q/k RMSNorm, a SwiGLU MLP, tied or untied embeddings; HF's additive
//! `finfo.min` masks, its position ids, loss, KV cache and `output_hidden_states`. No hooks.

use lens_core::config::{NormPlacement, QkNorm, RmsScale};
use lens_core::model::{ModelError, ModelResult};
use lens_core::{HfConfig, LlamaConfig, Weights};
use tch::{Device, Kind, Tensor};

use crate::hf::attention::{self, Scores};
use crate::hf::decoder::{blocks_then_head, decoder_api, Part, RotaryDecoder};
use crate::hf::forward::PassOutput;
use crate::hf::gpt_neox::rotate_leading;
use crate::hf::kv_cache::KvCache;
use crate::hf::mask::{self, AttentionMask};
use crate::hf::model::CheckedInputs;
use crate::hf::params::{find_parameter, layer_part, take_leaf, take_linear};
use crate::input;
use crate::tap::{BlockSite, LinSite, LnSite, Site, Tap};

/// A `torch.nn.Linear`: `y = x W^T + b`, `weight` `[out, in]`.
#[derive(Debug)]
pub struct LinearParams {
    /// `weight`, `[out, in]`.
    pub weight: Tensor,
    /// `bias`, `[out]`, when the layer has one.
    pub bias: Option<Tensor>,
}

impl LinearParams {
    pub(crate) fn apply(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }

    /// Gives the layer a zero bias that requires gradients, when it has none (weight processing
    /// makes a missing bias non-zero).
    pub(crate) fn add_zero_bias(&mut self) {
        if self.bias.is_none() {
            let w = &self.weight;
            let zeros = Tensor::zeros([w.size()[0]], (w.kind(), w.device()));
            self.bias = Some(zeros.set_requires_grad(true));
        }
    }
}

/// The attention's input projections.
#[derive(Debug)]
pub enum QkvProjections {
    /// `self_attn.q_proj` `[n_heads * d_head, d]`, `k_proj` and `v_proj`
    /// `[n_kv_heads * d_head, d]`.
    Separate {
        /// `q_proj`.
        q_proj: LinearParams,
        /// `k_proj`.
        k_proj: LinearParams,
        /// `v_proj`.
        v_proj: LinearParams,
    },
    /// Phi-3's `self_attn.qkv_proj`, `[(n_heads + 2 n_kv_heads) * d_head, d]`: the rows of q,
    /// then k, then v.
    Fused(LinearParams),
}

/// The MLP's gate and up projections.
#[derive(Debug)]
pub enum GateUpProjections {
    /// `mlp.gate_proj` and `mlp.up_proj`, `[d_mlp, d]` each.
    Separate {
        /// `gate_proj`.
        gate_proj: LinearParams,
        /// `up_proj`.
        up_proj: LinearParams,
    },
    /// Phi-3's `mlp.gate_up_proj`, `[2 d_mlp, d]`: the gate's rows, then up's.
    Fused(LinearParams),
}

/// One decoder layer (`model.layers.{i}`).
#[derive(Debug)]
pub struct LlamaLayerParams {
    /// `input_layernorm.weight`, `[d]` (OLMo-2 has none: its norms follow the sublayers).
    pub input_layernorm: Option<Tensor>,
    /// q, k and v.
    pub qkv: QkvProjections,
    /// `self_attn.o_proj`, `[d, n_heads * d_head]`.
    pub o_proj: LinearParams,
    /// `self_attn.q_norm.weight`: `[d_head]` (Qwen3, Gemma 3) or `[n_heads * d_head]`
    /// (OLMo-2).
    pub q_norm: Option<Tensor>,
    /// `self_attn.k_norm.weight`: `[d_head]` or `[n_kv_heads * d_head]`.
    pub k_norm: Option<Tensor>,
    /// `post_attention_layernorm.weight`, `[d]`: the norm before the MLP (Llama, Gemma 1,
    /// Phi-3), or of the attention's output (Gemma 2 and 3, OLMo-2).
    pub post_attention_layernorm: Tensor,
    /// Gemma 2's and 3's `pre_feedforward_layernorm.weight`, `[d]`.
    pub pre_feedforward_layernorm: Option<Tensor>,
    /// `post_feedforward_layernorm.weight`, `[d]`, of the MLP's output (Gemma 2 and 3,
    /// OLMo-2).
    pub post_feedforward_layernorm: Option<Tensor>,
    /// The gate and up projections.
    pub gate_up: GateUpProjections,
    /// `mlp.down_proj`, `[d, d_mlp]`.
    pub down_proj: LinearParams,
}

impl LlamaLayerParams {
    /// The norm before the MLP: `post_attention_layernorm` where norms come before the
    /// sublayers, Gemma 2's and 3's `pre_feedforward_layernorm`, none in OLMo-2.
    pub fn pre_mlp_norm(&self, placement: NormPlacement) -> Option<&Tensor> {
        match placement {
            NormPlacement::Before => Some(&self.post_attention_layernorm),
            NormPlacement::BeforeAndAfter => self.pre_feedforward_layernorm.as_ref(),
            NormPlacement::After => None,
        }
    }

    /// The norm of the attention's output (Gemma 2 and 3, OLMo-2).
    pub fn post_attention_norm(&self, placement: NormPlacement) -> Option<&Tensor> {
        match placement {
            NormPlacement::Before => None,
            NormPlacement::BeforeAndAfter | NormPlacement::After => {
                Some(&self.post_attention_layernorm)
            }
        }
    }

    /// Every linear layer under its name inside the layer (`self_attn.q_proj`, ...).
    fn linears(&self) -> Vec<(&'static str, &LinearParams)> {
        let mut out = match &self.qkv {
            QkvProjections::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => vec![
                ("self_attn.q_proj", q_proj),
                ("self_attn.k_proj", k_proj),
                ("self_attn.v_proj", v_proj),
            ],
            QkvProjections::Fused(qkv) => vec![("self_attn.qkv_proj", qkv)],
        };
        out.push(("self_attn.o_proj", &self.o_proj));
        match &self.gate_up {
            GateUpProjections::Separate { gate_proj, up_proj } => {
                out.push(("mlp.gate_proj", gate_proj));
                out.push(("mlp.up_proj", up_proj));
            }
            GateUpProjections::Fused(gate_up) => out.push(("mlp.gate_up_proj", gate_up)),
        }
        out.push(("mlp.down_proj", &self.down_proj));
        out
    }

    fn linear_mut(&mut self, name: &str) -> Option<&mut LinearParams> {
        Some(match (name, &mut self.qkv, &mut self.gate_up) {
            ("self_attn.q_proj", QkvProjections::Separate { q_proj, .. }, _) => q_proj,
            ("self_attn.k_proj", QkvProjections::Separate { k_proj, .. }, _) => k_proj,
            ("self_attn.v_proj", QkvProjections::Separate { v_proj, .. }, _) => v_proj,
            ("self_attn.qkv_proj", QkvProjections::Fused(qkv), _) => qkv,
            ("self_attn.o_proj", _, _) => &mut self.o_proj,
            ("mlp.gate_proj", _, GateUpProjections::Separate { gate_proj, .. }) => gate_proj,
            ("mlp.up_proj", _, GateUpProjections::Separate { up_proj, .. }) => up_proj,
            ("mlp.gate_up_proj", _, GateUpProjections::Fused(gate_up)) => gate_up,
            ("mlp.down_proj", _, _) => &mut self.down_proj,
            _ => return None,
        })
    }
}

/// Every parameter of a Llama-family `*ForCausalLM`, under HuggingFace's names.
#[derive(Debug)]
pub struct LlamaParams {
    /// `model.embed_tokens.weight`, `[vocab, d]`.
    pub embed_tokens: Tensor,
    /// `model.layers`.
    pub layers: Vec<LlamaLayerParams>,
    /// `model.norm.weight`, `[d]`.
    pub norm: Tensor,
    /// `lm_head.weight`, `[vocab, d]`; `None` while tied to `embed_tokens`.
    pub lm_head: Option<Tensor>,
    /// A bias of the unembedding, `[vocab]`. HuggingFace's Llama family has none; the
    /// TransformerBridge adds a zero one (TransformerLens's `b_U`).
    pub lm_head_bias: Option<Tensor>,
}

impl LlamaParams {
    /// Takes every tensor a model with `config` needs out of `weights` (shapes checked),
    /// converted to `kind` on `device`, as leaves that require gradients. Errors name the
    /// missing or mis-shaped tensor.
    pub fn from_weights(
        config: &LlamaConfig,
        weights: &mut Weights,
        device: Device,
        kind: Kind,
    ) -> ModelResult<Self> {
        let (d, m, v) = (
            config.hidden_size,
            config.intermediate_size,
            config.vocab_size,
        );
        let (q_width, kv_width) = (
            config.num_attention_heads * config.head_dim,
            config.num_key_value_heads * config.head_dim,
        );
        let mut take = |name: &str, shape: &[i64]| take_leaf(weights, name, shape, device, kind);
        let mut layers = Vec::with_capacity(config.num_hidden_layers as usize);
        for l in 0..config.num_hidden_layers {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            let mut linear = |s: &str, n_out: i64, n_in: i64, bias: bool| {
                take_linear(&mut take, &p(s), [n_out, n_in], bias)
            };
            let qkv = if config.fused_projections {
                let rows = q_width + 2 * kv_width;
                QkvProjections::Fused(linear("self_attn.qkv_proj", rows, d, config.qkv_bias)?)
            } else {
                QkvProjections::Separate {
                    q_proj: linear("self_attn.q_proj", q_width, d, config.qkv_bias)?,
                    k_proj: linear("self_attn.k_proj", kv_width, d, config.qkv_bias)?,
                    v_proj: linear("self_attn.v_proj", kv_width, d, config.qkv_bias)?,
                }
            };
            let o_proj = linear("self_attn.o_proj", d, q_width, config.o_bias)?;
            let gate_up = if config.fused_projections {
                GateUpProjections::Fused(linear("mlp.gate_up_proj", 2 * m, d, config.mlp_bias)?)
            } else {
                GateUpProjections::Separate {
                    gate_proj: linear("mlp.gate_proj", m, d, config.mlp_bias)?,
                    up_proj: linear("mlp.up_proj", m, d, config.mlp_bias)?,
                }
            };
            let down_proj = linear("mlp.down_proj", d, m, config.mlp_bias)?;
            let qk_widths = match config.qk_norm {
                QkNorm::None => None,
                QkNorm::PerHead => Some((config.head_dim, config.head_dim)),
                QkNorm::Projection => Some((q_width, kv_width)),
            };
            let (q_norm, k_norm) = match qk_widths {
                Some((q, k)) => (
                    Some(take(&p("self_attn.q_norm.weight"), &[q])?),
                    Some(take(&p("self_attn.k_norm.weight"), &[k])?),
                ),
                None => (None, None),
            };
            let placement = config.norm_placement;
            let input_layernorm = match placement {
                NormPlacement::After => None,
                _ => Some(take(&p("input_layernorm.weight"), &[d])?),
            };
            let post_attention_layernorm = take(&p("post_attention_layernorm.weight"), &[d])?;
            let pre_feedforward_layernorm = match placement {
                NormPlacement::BeforeAndAfter => {
                    Some(take(&p("pre_feedforward_layernorm.weight"), &[d])?)
                }
                _ => None,
            };
            let post_feedforward_layernorm = match placement {
                NormPlacement::Before => None,
                _ => Some(take(&p("post_feedforward_layernorm.weight"), &[d])?),
            };
            layers.push(LlamaLayerParams {
                input_layernorm,
                qkv,
                o_proj,
                q_norm,
                k_norm,
                post_attention_layernorm,
                pre_feedforward_layernorm,
                post_feedforward_layernorm,
                gate_up,
                down_proj,
            });
        }
        let embed_tokens = take("model.embed_tokens.weight", &[v, d])?;
        let norm = take("model.norm.weight", &[d])?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(take("lm_head.weight", &[v, d])?)
        };
        Ok(LlamaParams {
            embed_tokens,
            layers,
            norm,
            lm_head,
            lm_head_bias: None,
        })
    }

    /// The unembedding, `[vocab, d]` (`embed_tokens` while tied).
    pub fn unembedding(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Every parameter under its HuggingFace name (`lm_head.weight` only when untied; the
    /// bridge's `lm_head.bias` when present).
    pub fn named(&self) -> Vec<(String, &Tensor)> {
        let mut out: Vec<(String, &Tensor)> =
            vec![("model.embed_tokens.weight".into(), &self.embed_tokens)];
        for (l, layer) in self.layers.iter().enumerate() {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            if let Some(w) = &layer.input_layernorm {
                out.push((p("input_layernorm.weight"), w));
            }
            for (name, lin) in layer.linears() {
                out.push((p(&format!("{name}.weight")), &lin.weight));
                if let Some(bias) = &lin.bias {
                    out.push((p(&format!("{name}.bias")), bias));
                }
            }
            for (name, norm) in [
                ("self_attn.q_norm", layer.q_norm.as_ref()),
                ("self_attn.k_norm", layer.k_norm.as_ref()),
                (
                    "post_attention_layernorm",
                    Some(&layer.post_attention_layernorm),
                ),
                (
                    "pre_feedforward_layernorm",
                    layer.pre_feedforward_layernorm.as_ref(),
                ),
                (
                    "post_feedforward_layernorm",
                    layer.post_feedforward_layernorm.as_ref(),
                ),
            ] {
                if let Some(w) = norm {
                    out.push((p(&format!("{name}.weight")), w));
                }
            }
        }
        out.push(("model.norm.weight".into(), &self.norm));
        if let Some(lm_head) = &self.lm_head {
            out.push(("lm_head.weight".into(), lm_head));
        }
        if let Some(bias) = &self.lm_head_bias {
            out.push(("lm_head.bias".into(), bias));
        }
        out
    }

    /// Gives the linear layer `name` (`model.layers.{l}.self_attn.o_proj.bias`, ...) a zero bias
    /// that requires gradients, when it has none; `false` for a name that is not a linear
    /// layer's bias. Weight processing uses this where it makes a missing bias non-zero
    /// (fold_value_biases moves Qwen2's value biases into `o_proj`, which has none).
    pub fn add_zero_bias(&mut self, name: &str) -> bool {
        let Some((layer, linear)) = layer_part(name, "model.layers") else {
            return false;
        };
        let Some(layer) = self.layers.get_mut(layer) else {
            return false;
        };
        let Some(linear) = linear
            .strip_suffix(".bias")
            .and_then(|name| layer.linear_mut(name))
        else {
            return false;
        };
        linear.add_zero_bias();
        true
    }

    /// A parameter by its HuggingFace name, sharing storage (`lm_head.weight` is
    /// `embed_tokens` while tied). `None` for a name the model does not have.
    pub fn get(&self, name: &str) -> Option<Tensor> {
        find_parameter(self.named(), name, "lm_head.weight", self.unembedding())
    }
}

/// HuggingFace's Llama-family causal language model (eager attention, eval mode).
pub struct LlamaForCausalLM {
    config: LlamaConfig,
    params: LlamaParams,
    /// The rotary inverse frequencies `[rotary_dim / 2]`, f32, as the rotary module's buffer.
    inv_freq: Tensor,
    /// Gemma 3's inverse frequencies of its sliding-window layers.
    local_inv_freq: Option<Tensor>,
    /// Phi-3's `longrope` inverse frequencies past its pretraining context (`inv_freq` holds
    /// the short ones).
    long_inv_freq: Option<Tensor>,
}

impl std::fmt::Debug for LlamaForCausalLM {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaForCausalLM")
            .field("family", &self.config.family)
            .field("layers", &self.config.num_hidden_layers)
            .field("hidden_size", &self.config.hidden_size)
            .field("kind", &self.params.embed_tokens.kind())
            .field("device", &self.params.embed_tokens.device())
            .finish()
    }
}

/// A norm's sites within a block (`BlockSite::Ln1` and the like).
type NormSites = fn(LnSite) -> BlockSite;

/// The sines and cosines a pass rotates with: the global ones, and Gemma 3's of its
/// sliding-window layers.
struct Rotary {
    global: (Tensor, Tensor),
    local: Option<(Tensor, Tensor)>,
}

impl Rotary {
    fn of_layer(&self, config: &LlamaConfig, l: usize) -> (&Tensor, &Tensor) {
        match (&self.local, config.layer_windows.get(l)) {
            (Some((cos, sin)), Some(Some(_))) => (cos, sin),
            _ => (&self.global.0, &self.global.1),
        }
    }
}

impl LlamaForCausalLM {
    /// A model from a parsed config and its checkpoint's tensors (HuggingFace names).
    pub fn from_weights(
        config: LlamaConfig,
        mut weights: Weights,
        device: Device,
        kind: Kind,
    ) -> ModelResult<Self> {
        input::check_device(device)?;
        input::check_float_kind(kind)?;
        let params = LlamaParams::from_weights(&config, &mut weights, device, kind)?;
        let frequencies = |rope: lens_core::Rope| {
            rope.scaling
                .inverse_frequencies(rope.theta, config.rotary_dim, device)
        };
        let local_inv_freq = config.local_rope.map(frequencies);
        let (inv_freq, long_inv_freq) = match &config.longrope {
            Some(longrope) => {
                let (theta, dim) = (config.rope.theta, config.rotary_dim);
                (
                    longrope.inverse_frequencies(theta, dim, false, device),
                    Some(longrope.inverse_frequencies(theta, dim, true, device)),
                )
            }
            None => (frequencies(config.rope), None),
        };
        Ok(LlamaForCausalLM {
            config,
            params,
            inv_freq,
            local_inv_freq,
            long_inv_freq,
        })
    }

    fn rms_norm<T: Tap>(
        &self,
        tap: &T,
        site: impl Fn(LnSite) -> Site,
        x: Tensor,
        weight: &Tensor,
    ) -> ModelResult<Tensor> {
        rms_norm(
            tap,
            site,
            x,
            weight,
            self.config.rms_norm_eps,
            self.config.rms_scale,
        )
    }

    /// `norm` at `site` when the layer has it, else `x` unchanged.
    fn optional_norm<T: Tap>(
        &self,
        tap: &T,
        site: NormSites,
        l: usize,
        x: Tensor,
        norm: Option<&Tensor>,
    ) -> ModelResult<Tensor> {
        match norm {
            Some(w) => self.rms_norm(tap, |ln| Site::Block(l, site(ln)), x, w),
            None => Ok(x),
        }
    }

    /// One decoder layer. Norms before the sublayers (Llama): `x + attn(input_layernorm(x))`,
    /// then `+ mlp(post_attention_layernorm(.))`. Gemma 2 and 3 also normalise each sublayer's
    /// output (`post_attention_layernorm`, `post_feedforward_layernorm`, before the MLP
    /// `pre_feedforward_layernorm`); OLMo-2 only its outputs. TransformerLens's names: `ln1` and
    /// `ln2` for the norms before the sublayers, `ln1_post` and `ln2_post` after them; OLMo-2's
    /// output norms are its `ln1` and `ln2`.
    #[allow(clippy::too_many_arguments)]
    fn block<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &LlamaLayerParams,
        x: Tensor,
        rotary: (&Tensor, &Tensor),
        mask: &AttentionMask,
        cache: Option<&mut KvCache>,
    ) -> ModelResult<Tensor> {
        let s = |site: BlockSite| Site::Block(l, site);
        let placement = self.config.norm_placement;
        let (post_attn_site, post_mlp_site): (NormSites, NormSites) = match placement {
            NormPlacement::After => (BlockSite::Ln1, BlockSite::Ln2),
            _ => (BlockSite::Ln1Post, BlockSite::Ln2Post),
        };
        let resid_pre = tap.at(s(BlockSite::In), x)?;
        let attended = self.attention(tap, l, layer, &resid_pre, rotary, mask, cache)?;
        let attended = self.optional_norm(
            tap,
            post_attn_site,
            l,
            attended,
            layer.post_attention_norm(placement),
        )?;
        let resid_mid = tap.at(s(BlockSite::ResidMid), &resid_pre + attended)?;
        let mlp_input = if tap.paths().use_hook_mlp_in {
            tap.at(s(BlockSite::MlpIn), resid_mid.copy())?
        } else {
            resid_mid.shallow_clone()
        };
        let normed = self.optional_norm(
            tap,
            BlockSite::Ln2,
            l,
            mlp_input,
            layer.pre_mlp_norm(placement),
        )?;
        let mlp_out = self.mlp(tap, l, layer, normed)?;
        let mlp_out = self.optional_norm(
            tap,
            post_mlp_site,
            l,
            mlp_out,
            layer.post_feedforward_layernorm.as_ref(),
        )?;
        tap.at(s(BlockSite::Out), &resid_mid + mlp_out)
    }

    /// q, k and v `[b, p, heads, dh]` from the residual before `input_layernorm` (OLMo-2: the
    /// residual itself), after their sites; see [`attention::separate_qkv`]. Phi-3's fused
    /// `qkv_proj` is one product, split into q, k and v rows, while nothing edits their
    /// inputs; else (and per head) each part's rows are its projection.
    fn qkv<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &LlamaLayerParams,
        resid_pre: &Tensor,
    ) -> ModelResult<[Tensor; 3]> {
        let c = &self.config;
        let ln1 = |x: Tensor| {
            self.optional_norm(tap, BlockSite::Ln1, l, x, layer.input_layernorm.as_ref())
        };
        let (h, h_kv, dh) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        match &layer.qkv {
            QkvProjections::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => {
                let projections = [(q_proj, h), (k_proj, h_kv), (v_proj, h_kv)];
                attention::separate_qkv(tap, l, resid_pre, ln1, projections, dh)
            }
            QkvProjections::Fused(fused) => {
                let parts = split_rows(fused, &[h * dh, h_kv * dh, h_kv * dh]);
                let projections = [(&parts[0], h), (&parts[1], h_kv), (&parts[2], h_kv)];
                attention::fused_qkv(tap, l, resid_pre, ln1, fused, projections, dh)
            }
        }
    }

    /// Attention from the residual `resid_pre` `[b, q, d]` (its `input_layernorm` included):
    /// q, k, v, their norms and rotations, the scores, the pattern and `z` each at their site,
    /// heads on axis 2 (`[b, p, h, dh]`).
    #[allow(clippy::too_many_arguments)]
    fn attention<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &LlamaLayerParams,
        resid_pre: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        mask: &AttentionMask,
        cache: Option<&mut KvCache>,
    ) -> ModelResult<Tensor> {
        let s = |site: BlockSite| Site::Block(l, site);
        let c = &self.config;
        let [q, k, v] = self.qkv(tap, l, layer, resid_pre)?;
        let (q, k) = match c.qk_norm {
            QkNorm::None => (q, k),
            norm => (
                tap.at(
                    s(BlockSite::QNormed),
                    self.qk_norm(tap, l, q, layer.q_norm.as_ref(), BlockSite::QNorm, norm)?,
                )?,
                tap.at(
                    s(BlockSite::KNormed),
                    self.qk_norm(tap, l, k, layer.k_norm.as_ref(), BlockSite::KNorm, norm)?,
                )?,
            ),
        };
        let (cos, sin) = (
            tap.at(s(BlockSite::Cos), cos.shallow_clone())?,
            tap.at(s(BlockSite::Sin), sin.shallow_clone())?,
        );
        // Rotary over [b, h, p, dh], as HF (the first `rotary_dim` dimensions of each head);
        // the hooks see [b, p, h, dh].
        let rotate = |x: &Tensor| {
            rotate_leading(&x.transpose(1, 2), &cos, &sin, c.rotary_dim).to_kind(x.kind())
        };
        let (q, k) = (rotate(&q), rotate(&k));
        let q = tap
            .at(s(BlockSite::RotQ), q.transpose(1, 2))?
            .transpose(1, 2);
        let k = tap
            .at(s(BlockSite::RotK), k.transpose(1, 2))?
            .transpose(1, 2);
        let v = v.transpose(1, 2);
        let scores = Scores::ScaledCapped {
            scale: c.query_scale,
            softcap: c.attn_logit_softcapping,
        };
        attention::attend(
            tap,
            l,
            (q, k, v),
            cache,
            mask,
            scores,
            resid_pre.kind(),
            &layer.o_proj,
        )
    }

    /// The RMSNorm of queries or keys `[b, p, heads, dh]`: over each head's vector (Qwen3,
    /// Gemma 3), its sites seeing `[b * p * heads, dh]` as TransformerLens's hooks do; or over
    /// the whole projection (OLMo-2), its sites seeing `[b, p, heads * dh]`.
    fn qk_norm<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        x: Tensor,
        weight: Option<&Tensor>,
        site: fn(LnSite) -> BlockSite,
        norm: QkNorm,
    ) -> ModelResult<Tensor> {
        let Some(w) = weight else { return Ok(x) };
        let shape = x.size();
        let rows = match norm {
            QkNorm::Projection => x.reshape([shape[0], shape[1], -1]),
            _ => x.reshape([-1, self.config.head_dim]),
        };
        Ok(self
            .rms_norm(tap, |ln| Site::Block(l, site(ln)), rows, w)?
            .reshape(shape.as_slice()))
    }

    /// The gated MLP, `down(act(gate(x)) * up(x))`, each projection's input and output at its
    /// site. Phi-3's fused `gate_up_proj` is one product split in halves (gate first) while
    /// nothing edits the inputs.
    fn mlp<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &LlamaLayerParams,
        x: Tensor,
    ) -> ModelResult<Tensor> {
        let s = |site: BlockSite| Site::Block(l, site);
        let x = tap.at(s(BlockSite::MlpCompIn), x)?;
        let gate_in = tap.at_noting_edits(s(BlockSite::MlpGate(LinSite::In)), x.shallow_clone())?;
        let up_in = tap.at_noting_edits(s(BlockSite::MlpFc(LinSite::In)), x.shallow_clone())?;
        let (gate, up) = match &layer.gate_up {
            GateUpProjections::Separate { gate_proj, up_proj } => (
                gate_proj.apply(&gate_in.activation),
                up_proj.apply(&up_in.activation),
            ),
            GateUpProjections::Fused(fused) if gate_in.untouched && up_in.untouched => {
                let both = fused.apply(&x);
                let halves = both.chunk(2, -1);
                (halves[0].shallow_clone(), halves[1].shallow_clone())
            }
            GateUpProjections::Fused(fused) => {
                let m = self.config.intermediate_size;
                let parts = split_rows(fused, &[m, m]);
                (
                    parts[0].apply(&gate_in.activation),
                    parts[1].apply(&up_in.activation),
                )
            }
        };
        let gate = tap.at(s(BlockSite::MlpGate(LinSite::Out)), gate)?;
        let up = tap.at(s(BlockSite::MlpFc(LinSite::Out)), up)?;
        let post = tap.at(
            s(BlockSite::MlpProj(LinSite::In)),
            self.config.hidden_act.apply(&gate) * up,
        )?;
        let out = tap.at(
            s(BlockSite::MlpProj(LinSite::Out)),
            layer.down_proj.apply(&post),
        )?;
        tap.at(s(BlockSite::MlpCompOut), out)
    }

    /// The mask of a layer with sliding `window` (or none): causal, or Gemma 3's bidirectional.
    fn layer_mask(
        &self,
        q_len: i64,
        k_len: i64,
        past_len: i64,
        attention_mask: Option<&Tensor>,
        window: Option<i64>,
        device: Device,
    ) -> AttentionMask {
        let build = if self.config.bidirectional {
            AttentionMask::bidirectional
        } else {
            AttentionMask::with_window
        };
        build(q_len, k_len, past_len, attention_mask, window, device)
    }

    /// The global rotary sines and cosines for `positions`: Phi-3's `longrope` picks its short
    /// or long frequencies by the largest position (`max(position_ids) + 1` past the pretraining
    /// context: long) and scales sines and cosines by its attention factor, in f32.
    fn global_cos_sin(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let (Some(longrope), Some(long)) = (&self.config.longrope, &self.long_inv_freq) else {
            return rotary_cos_sin(&self.inv_freq, positions, kind);
        };
        let max_position = positions.max().int64_value(&[]);
        let inv_freq = if longrope.is_long(max_position) {
            long
        } else {
            &self.inv_freq
        };
        let (cos, sin) = rotary_cos_sin(inv_freq, positions, Kind::Float);
        let factor = longrope.attention_factor;
        ((cos * factor).to_kind(kind), (sin * factor).to_kind(kind))
    }

    /// The dtype of the rotary sines and cosines: the activations', but OLMo-2's stay in f32
    /// (its rotation runs in f32 and casts q and k back).
    fn rotary_kind(&self, activations: Kind) -> Kind {
        match self.config.family {
            lens_core::LlamaFamily::Olmo2 => Kind::Float,
            _ => activations,
        }
    }

    /// The rotary sines and cosines for `positions`, with their sites on the rotary module
    /// (Gemma 3's local ones have none: the module's sites carry the global layers', as the
    /// Python bridge's cache ends up holding).
    fn rotary<T: Tap>(&self, tap: &T, x: &Tensor, positions: &Tensor) -> ModelResult<Rotary> {
        let rotary_in = tap.at(Site::RotaryIn, x.shallow_clone())?;
        let kind = self.rotary_kind(rotary_in.kind());
        let (cos, sin) = self.global_cos_sin(positions, kind);
        let global = (tap.at(Site::RotaryCos, cos)?, tap.at(Site::RotarySin, sin)?);
        let local = self
            .local_inv_freq
            .as_ref()
            .map(|f| rotary_cos_sin(f, positions, kind));
        Ok(Rotary { global, local })
    }
}

/// `cap * tanh(logits / cap)` (Gemma's `final_logit_softcapping`).
fn soft_cap(logits: Tensor, cap: Option<f64>) -> Tensor {
    match cap {
        Some(cap) => (logits / cap).tanh() * cap,
        None => logits,
    }
}

/// The parts of a fused projection: consecutive row blocks of `sizes` rows, as views sharing
/// its storage (so gradients reach the fused parameter).
fn split_rows(fused: &LinearParams, sizes: &[i64]) -> Vec<LinearParams> {
    let mut offset = 0;
    sizes
        .iter()
        .map(|&rows| {
            let part = LinearParams {
                weight: fused.weight.narrow(0, offset, rows),
                bias: fused.bias.as_ref().map(|b| b.narrow(0, offset, rows)),
            };
            offset += rows;
            part
        })
        .collect()
}

decoder_api!(
    LlamaForCausalLM,
    LlamaConfig,
    LlamaParams,
    embed_tokens,
    llama_config
);

impl RotaryDecoder for LlamaForCausalLM {
    fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }

    fn device(&self) -> Device {
        LlamaForCausalLM::device(self)
    }

    fn eos_token_id(&self) -> Option<i64> {
        self.config.eos_token_ids.first().copied()
    }

    fn cache_restart_length(&self) -> Option<i64> {
        self.config
            .longrope
            .as_ref()
            .map(|l| l.original_max_position_embeddings)
    }

    fn pass<T: Tap>(
        &self,
        tap: &T,
        inputs: &CheckedInputs,
        mut cache: Option<&mut KvCache>,
        output_hidden_states: bool,
        stop_at_layer: Option<usize>,
    ) -> ModelResult<PassOutput> {
        let c = &self.config;
        let past_len = cache.as_ref().map_or(0, |c| c.len());
        let q_len = inputs.ids.size()[1];
        let k_len = past_len + q_len;
        let device = self.device();
        // One mask per distinct window (global, and the sliding one where layers slide).
        let masks: Vec<(Option<i64>, AttentionMask)> = distinct(&c.layer_windows)
            .into_iter()
            .map(|w| {
                let m = self.layer_mask(q_len, k_len, past_len, inputs.mask.as_ref(), w, device);
                (w, m)
            })
            .collect();
        let ids = tap.at(Site::EmbedIn, inputs.ids.shallow_clone())?;
        let x = tap.at(Site::EmbedOut, self.embed_ids(&ids))?;
        let rotary = self.rotary(tap, &x, &inputs.positions)?;
        let block = |l: usize, x: Tensor| {
            let mask = &masks
                .iter()
                .find(|(w, _)| *w == c.layer_windows[l])
                .ok_or_else(|| ModelError::InvalidInput(format!("no mask for layer {l}")))?
                .1;
            let layer = &self.params.layers[l];
            let rotary = rotary.of_layer(c, l);
            self.block(tap, l, layer, x, rotary, mask, cache.as_deref_mut())
        };
        let final_norm = |x: Tensor| self.rms_norm(tap, Site::LnFinal, x, &self.params.norm);
        let mut output = blocks_then_head(
            tap,
            x,
            self.params.layers.len(),
            stop_at_layer,
            output_hidden_states,
            block,
            final_norm,
            |x| self.unembed(x),
        )?;
        // The soft cap follows the unembedding's hook, as in HF and TransformerLens.
        output.logits = output
            .logits
            .map(|logits| soft_cap(logits, c.final_logit_softcapping));
        Ok(output)
    }

    fn n_layers(&self) -> usize {
        self.params.layers.len()
    }

    fn embedding(&self) -> &Tensor {
        &self.params.embed_tokens
    }

    /// The token embeddings, times Gemma's `sqrt(hidden_size)` in the embedding's dtype (HF's
    /// scaled embedding module).
    fn embed_ids(&self, ids: &Tensor) -> Tensor {
        let x = Tensor::embedding(&self.params.embed_tokens, ids, -1, false, false);
        match self.config.embed_scale {
            Some(scale) => x * Tensor::from(scale).to_kind(self.params.embed_tokens.kind()),
            None => x,
        }
    }

    /// The generic components, with Gemma 2's and 3's `ln1_post` and `ln2_post` after each
    /// block's `ln2`.
    fn component_names(&self) -> Vec<String> {
        let mut names = crate::hf::forward::component_names(self.params.layers.len(), false);
        if self.config.norm_placement == NormPlacement::BeforeAndAfter {
            for l in (0..self.params.layers.len()).rev() {
                let at = names
                    .iter()
                    .position(|n| *n == format!("blocks.{l}.mlp"))
                    .unwrap_or(names.len());
                names.insert(at, format!("blocks.{l}.ln2_post"));
                names.insert(at, format!("blocks.{l}.ln1_post"));
            }
        }
        names
    }

    fn unembed(&self, x: &Tensor) -> Tensor {
        x.linear(self.params.unembedding(), self.params.lm_head_bias.as_ref())
    }

    fn run_part<T: Tap>(&self, tap: &T, part: Part<'_>, x: &Tensor) -> Option<ModelResult<Tensor>> {
        Some(match part {
            Part::LnFinal => {
                self.rms_norm(tap, Site::LnFinal, x.shallow_clone(), &self.params.norm)
            }
            Part::Block(l, name) => {
                let layer = self.params.layers.get(l)?;
                return self.run_block_component(tap, l, layer, name, x);
            }
        })
    }
}

/// Components one at a time, as the suite's `all_components` compares them with the bridge's.
impl LlamaForCausalLM {
    /// One part of block `l` (`""` for the whole block), or `None` for an unknown part (or a
    /// norm this layer does not have).
    fn run_block_component<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &LlamaLayerParams,
        part: &str,
        x: &Tensor,
    ) -> Option<ModelResult<Tensor>> {
        let placement = self.config.norm_placement;
        let (batch, len) = (x.size()[0], x.size()[1]);
        let rotary_and_mask = || {
            let positions = mask::arange_positions(batch, len, 0, x.device());
            let kind = self.rotary_kind(x.kind());
            let (cos, sin) = match (&self.local_inv_freq, self.config.layer_windows[l]) {
                (Some(local), Some(_)) => rotary_cos_sin(local, &positions, kind),
                _ => self.global_cos_sin(&positions, kind),
            };
            let window = self.config.layer_windows[l];
            let mask = self.layer_mask(len, len, 0, None, window, x.device());
            (cos, sin, mask)
        };
        let norm = |site: fn(LnSite) -> BlockSite, w: Option<&Tensor>| {
            w.map(|w| self.rms_norm(tap, |ln| Site::Block(l, site(ln)), x.shallow_clone(), w))
        };
        let (ln1, ln2) = match placement {
            NormPlacement::After => (
                Some(&layer.post_attention_layernorm),
                layer.post_feedforward_layernorm.as_ref(),
            ),
            _ => (
                layer.input_layernorm.as_ref(),
                layer.pre_mlp_norm(placement),
            ),
        };
        let post = |w| {
            (placement == NormPlacement::BeforeAndAfter)
                .then_some(w)
                .flatten()
        };
        Some(match part {
            "" => {
                let (cos, sin, mask) = rotary_and_mask();
                self.block(tap, l, layer, x.shallow_clone(), (&cos, &sin), &mask, None)
            }
            "attn" => {
                let (cos, sin, mask) = rotary_and_mask();
                self.attention(tap, l, layer, x, (&cos, &sin), &mask, None)
            }
            "ln1" => return norm(BlockSite::Ln1, ln1),
            "ln2" => return norm(BlockSite::Ln2, ln2),
            "ln1_post" => {
                return norm(
                    BlockSite::Ln1Post,
                    post(Some(&layer.post_attention_layernorm)),
                )
            }
            "ln2_post" => {
                return norm(
                    BlockSite::Ln2Post,
                    post(layer.post_feedforward_layernorm.as_ref()),
                )
            }
            "mlp" => self.mlp(tap, l, layer, x.shallow_clone()),
            _ => return None,
        })
    }
}

/// The Llama-family config of `config`, or [`ModelError::Unsupported`].
pub(crate) fn llama_config(config: &HfConfig) -> ModelResult<LlamaConfig> {
    config.as_llama().cloned().ok_or_else(|| {
        ModelError::Unsupported(format!(
            "architecture {} is not a Llama-family model",
            config.architecture()
        ))
    })
}

/// The distinct values of `windows`, in first-seen order.
fn distinct(windows: &[Option<i64>]) -> Vec<Option<i64>> {
    let mut out: Vec<Option<i64>> = Vec::new();
    for w in windows {
        if !out.contains(w) {
            out.push(*w);
        }
    }
    out
}

/// An RMSNorm with its sites: HF's computation (in f32, `x * rsqrt(mean(x^2) + eps)`, then the
/// weight as `scale` says: Llama's `w * normed.to(dtype)`, OLMo-2's `(w * normed).to(dtype)`,
/// Gemma's `(normed * (1 + w)).to(dtype)`) unless a hook on `hook_scale` or `hook_normalized`
/// edits its value; then the output is the weight applied to `hook_normalized`, from
/// TransformerLens's decomposed form (`hook_scale(sqrt(mean(x^2) + eps))`,
/// `hook_normalized(x / scale)`, in f32). Hooks that only read see the decomposed values and
/// leave the output as with no hook.
pub(crate) fn rms_norm<T: Tap>(
    tap: &T,
    site: impl Fn(LnSite) -> Site,
    x: Tensor,
    weight: &Tensor,
    eps: f64,
    scale: RmsScale,
) -> ModelResult<Tensor> {
    let x = tap.at(site(LnSite::In), x)?;
    let kind = x.kind();
    let weighted = |normed: &Tensor| match scale {
        RmsScale::Weight => weight * normed.to_kind(kind),
        RmsScale::WeightInF32 => (weight * normed).to_kind(kind),
        RmsScale::OnePlusWeight => (normed * (weight.to_kind(Kind::Float) + 1.0)).to_kind(kind),
    };
    let hf = |x: &Tensor| {
        let h = x.to_kind(Kind::Float);
        let variance = h.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        weighted(&(h * (variance + eps).rsqrt()))
    };
    let out = if tap.hooked(site(LnSite::Scale)) || tap.hooked(site(LnSite::Normalized)) {
        let h = x.to_kind(Kind::Float);
        let norm_scale = (h.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float) + eps).sqrt();
        let norm_scale = tap.at_noting_edits(site(LnSite::Scale), norm_scale)?;
        let normalized =
            tap.at_noting_edits(site(LnSite::Normalized), h / &norm_scale.activation)?;
        if norm_scale.untouched && normalized.untouched {
            hf(&x)
        } else {
            weighted(&normalized.activation)
        }
    } else {
        hf(&x)
    };
    tap.at(site(LnSite::Out), out)
}

/// `cos` and `sin` `[b, q, rotary_dim]` for `positions` `[b, q]`, computed in f32 and cast to
/// `kind` (the frequencies concatenated with themselves: half-split pairs).
pub(crate) fn rotary_cos_sin(
    inv_freq: &Tensor,
    positions: &Tensor,
    kind: Kind,
) -> (Tensor, Tensor) {
    let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * inv_freq.view([1, 1, -1]);
    let emb = Tensor::cat(&[&freqs, &freqs], -1);
    (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
}

/// `apply_rotary_pos_emb` for one of q, k `[b, h, q, d]`: `x * cos + rotate_half(x) * sin`.
pub(crate) fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let rotated = Tensor::cat(&[-x.narrow(3, half, half), x.narrow(3, 0, half)], -1);
    x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1)
}
