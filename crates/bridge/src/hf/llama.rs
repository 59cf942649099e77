//! HuggingFace's Llama-family decoders, `LlamaForCausalLM`, `MistralForCausalLM`,
//! `Qwen2ForCausalLM` and `Qwen3ForCausalLM`, operation by operation as transformers 5.9.0
//! computes them in eager mode: RMSNorm in f32 cast back, rotary embeddings (default, `linear`
//! and `llama3` frequencies, half-split pairs), grouped-query attention, sliding windows per
//! layer, Qwen3's per-head q/k RMSNorm, a SwiGLU MLP, tied or untied embeddings; HF's additive
//! `finfo.min` masks, its position ids, loss, KV cache and `output_hidden_states`. No hooks.

use lens_core::model::{ModelError, ModelResult};
use lens_core::{HfConfig, LlamaConfig, Weights};
use tch::{Device, Kind, Tensor};

use crate::hf::attention::{self, Scores};
use crate::hf::decoder::{blocks_then_head, decoder_api, Part, RotaryDecoder};
use crate::hf::forward::PassOutput;
use crate::hf::kv_cache::KvCache;
use crate::hf::mask::{self, AttentionMask};
use crate::hf::model::CheckedInputs;
use crate::hf::params::{find_parameter, layer_part, take_leaf};
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

/// One decoder layer (`model.layers.{i}`).
#[derive(Debug)]
pub struct LlamaLayerParams {
    /// `input_layernorm.weight`, `[d]`.
    pub input_layernorm: Tensor,
    /// `self_attn.q_proj`, `[n_heads * d_head, d]`.
    pub q_proj: LinearParams,
    /// `self_attn.k_proj`, `[n_kv_heads * d_head, d]`.
    pub k_proj: LinearParams,
    /// `self_attn.v_proj`, `[n_kv_heads * d_head, d]`.
    pub v_proj: LinearParams,
    /// `self_attn.o_proj`, `[d, n_heads * d_head]`.
    pub o_proj: LinearParams,
    /// Qwen3's `self_attn.q_norm.weight`, `[d_head]`.
    pub q_norm: Option<Tensor>,
    /// Qwen3's `self_attn.k_norm.weight`, `[d_head]`.
    pub k_norm: Option<Tensor>,
    /// `post_attention_layernorm.weight`, `[d]`.
    pub post_attention_layernorm: Tensor,
    /// `mlp.gate_proj`, `[d_mlp, d]`.
    pub gate_proj: LinearParams,
    /// `mlp.up_proj`, `[d_mlp, d]`.
    pub up_proj: LinearParams,
    /// `mlp.down_proj`, `[d, d_mlp]`.
    pub down_proj: LinearParams,
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
                Ok::<_, ModelError>(LinearParams {
                    weight: take(&p(&format!("{s}.weight")), &[n_out, n_in])?,
                    bias: if bias {
                        Some(take(&p(&format!("{s}.bias")), &[n_out])?)
                    } else {
                        None
                    },
                })
            };
            let q_proj = linear("self_attn.q_proj", q_width, d, config.qkv_bias)?;
            let k_proj = linear("self_attn.k_proj", kv_width, d, config.qkv_bias)?;
            let v_proj = linear("self_attn.v_proj", kv_width, d, config.qkv_bias)?;
            let o_proj = linear("self_attn.o_proj", d, q_width, config.o_bias)?;
            let gate_proj = linear("mlp.gate_proj", m, d, config.mlp_bias)?;
            let up_proj = linear("mlp.up_proj", m, d, config.mlp_bias)?;
            let down_proj = linear("mlp.down_proj", d, m, config.mlp_bias)?;
            let (q_norm, k_norm) = if config.qk_norm {
                (
                    Some(take(&p("self_attn.q_norm.weight"), &[config.head_dim])?),
                    Some(take(&p("self_attn.k_norm.weight"), &[config.head_dim])?),
                )
            } else {
                (None, None)
            };
            layers.push(LlamaLayerParams {
                input_layernorm: take(&p("input_layernorm.weight"), &[d])?,
                q_proj,
                k_proj,
                v_proj,
                o_proj,
                q_norm,
                k_norm,
                post_attention_layernorm: take(&p("post_attention_layernorm.weight"), &[d])?,
                gate_proj,
                up_proj,
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
            out.push((p("input_layernorm.weight"), &layer.input_layernorm));
            for (name, lin) in [
                ("self_attn.q_proj", &layer.q_proj),
                ("self_attn.k_proj", &layer.k_proj),
                ("self_attn.v_proj", &layer.v_proj),
                ("self_attn.o_proj", &layer.o_proj),
                ("mlp.gate_proj", &layer.gate_proj),
                ("mlp.up_proj", &layer.up_proj),
                ("mlp.down_proj", &layer.down_proj),
            ] {
                out.push((p(&format!("{name}.weight")), &lin.weight));
                if let Some(bias) = &lin.bias {
                    out.push((p(&format!("{name}.bias")), bias));
                }
            }
            for (name, norm) in [
                ("self_attn.q_norm", &layer.q_norm),
                ("self_attn.k_norm", &layer.k_norm),
            ] {
                if let Some(w) = norm {
                    out.push((p(&format!("{name}.weight")), w));
                }
            }
            out.push((
                p("post_attention_layernorm.weight"),
                &layer.post_attention_layernorm,
            ));
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
        let linear = match linear {
            "self_attn.q_proj.bias" => &mut layer.q_proj,
            "self_attn.k_proj.bias" => &mut layer.k_proj,
            "self_attn.v_proj.bias" => &mut layer.v_proj,
            "self_attn.o_proj.bias" => &mut layer.o_proj,
            "mlp.gate_proj.bias" => &mut layer.gate_proj,
            "mlp.up_proj.bias" => &mut layer.up_proj,
            "mlp.down_proj.bias" => &mut layer.down_proj,
            _ => return false,
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
    /// The rotary inverse frequencies `[d_head / 2]`, f32, as the rotary module's buffer.
    inv_freq: Tensor,
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
        let inv_freq = inverse_frequencies(&config, device);
        Ok(LlamaForCausalLM {
            config,
            params,
            inv_freq,
        })
    }

    /// One decoder layer: `x + attn(input_layernorm(x))`, then
    /// `+ mlp(post_attention_layernorm(.))`.
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
        let eps = self.config.rms_norm_eps;
        let resid_pre = tap.at(s(BlockSite::In), x)?;
        let attended = self.attention(tap, l, layer, &resid_pre, rotary, mask, cache)?;
        let resid_mid = tap.at(s(BlockSite::ResidMid), &resid_pre + attended)?;
        let mlp_input = if tap.paths().use_hook_mlp_in {
            tap.at(s(BlockSite::MlpIn), resid_mid.copy())?
        } else {
            resid_mid.shallow_clone()
        };
        let normed = rms_norm(
            tap,
            |site| s(BlockSite::Ln2(site)),
            mlp_input,
            &layer.post_attention_layernorm,
            eps,
        )?;
        let mlp_out = self.mlp(tap, l, layer, normed)?;
        tap.at(s(BlockSite::Out), &resid_mid + mlp_out)
    }

    /// q, k and v `[b, p, heads, dh]` from the residual before `input_layernorm`, after their
    /// sites. With TransformerLens's `use_split_qkv_input`, each has its own per-head copy of
    /// the residual (`hook_q_input` with a query-head axis, `hook_k_input` / `hook_v_input` with
    /// a key/value-head axis), normalised per head (so `ln1`'s sites see each of the three) and
    /// projected per head.
    fn qkv<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &LlamaLayerParams,
        resid_pre: &Tensor,
    ) -> ModelResult<[Tensor; 3]> {
        let c = &self.config;
        let ln1 = |x: Tensor| {
            rms_norm(
                tap,
                |site| Site::Block(l, BlockSite::Ln1(site)),
                x,
                &layer.input_layernorm,
                c.rms_norm_eps,
            )
        };
        let projections = [
            (&layer.q_proj, c.num_attention_heads),
            (&layer.k_proj, c.num_key_value_heads),
            (&layer.v_proj, c.num_key_value_heads),
        ];
        attention::separate_qkv(tap, l, resid_pre, ln1, projections, c.head_dim)
    }

    /// Attention from the residual `resid_pre` `[b, q, d]` (its `input_layernorm` included):
    /// q, k, v, their rotations, the scores, the pattern and `z` each at their site, heads on
    /// axis 2 (`[b, p, h, dh]`).
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
        // Qwen3's q/k norms over each head's vector; their sites see `[b * p * heads, dh]`, as
        // TransformerLens's hooks do (the values are HF's: the norm is over the last axis).
        let head_norm = |x: Tensor, w: Option<&Tensor>, site: fn(LnSite) -> BlockSite| match w {
            Some(w) => {
                let shape = x.size();
                let rows = x.reshape([-1, c.head_dim]);
                Ok::<_, ModelError>(
                    rms_norm(tap, |ln| s(site(ln)), rows, w, c.rms_norm_eps)?
                        .reshape(shape.as_slice()),
                )
            }
            None => Ok(x),
        };
        let (q, k) = if c.qk_norm {
            (
                tap.at(
                    s(BlockSite::QNormed),
                    head_norm(q, layer.q_norm.as_ref(), BlockSite::QNorm)?,
                )?,
                tap.at(
                    s(BlockSite::KNormed),
                    head_norm(k, layer.k_norm.as_ref(), BlockSite::KNorm)?,
                )?,
            )
        } else {
            (q, k)
        };
        let (cos, sin) = (
            tap.at(s(BlockSite::Cos), cos.shallow_clone())?,
            tap.at(s(BlockSite::Sin), sin.shallow_clone())?,
        );
        // Rotary over [b, h, p, dh], as HF; the hooks see [b, p, h, dh].
        let q = rotate(&q.transpose(1, 2), &cos, &sin);
        let k = rotate(&k.transpose(1, 2), &cos, &sin);
        let q = tap
            .at(s(BlockSite::RotQ), q.transpose(1, 2))?
            .transpose(1, 2);
        let k = tap
            .at(s(BlockSite::RotK), k.transpose(1, 2))?
            .transpose(1, 2);
        let v = v.transpose(1, 2);
        attention::attend(
            tap,
            l,
            (q, k, v),
            cache,
            mask,
            Scores::Scaled,
            resid_pre.kind(),
            &layer.o_proj,
        )
    }

    /// The gated MLP, `down(act(gate(x)) * up(x))`, each projection's input and output at its
    /// site.
    fn mlp<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &LlamaLayerParams,
        x: Tensor,
    ) -> ModelResult<Tensor> {
        let s = |site: BlockSite| Site::Block(l, site);
        let x = tap.at(s(BlockSite::MlpCompIn), x)?;
        let gate_in = tap.at(s(BlockSite::MlpGate(LinSite::In)), x.shallow_clone())?;
        let gate = tap.at(
            s(BlockSite::MlpGate(LinSite::Out)),
            layer.gate_proj.apply(&gate_in),
        )?;
        let up_in = tap.at(s(BlockSite::MlpFc(LinSite::In)), x)?;
        let up = tap.at(
            s(BlockSite::MlpFc(LinSite::Out)),
            layer.up_proj.apply(&up_in),
        )?;
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
                let m = AttentionMask::with_window(
                    q_len,
                    k_len,
                    past_len,
                    inputs.mask.as_ref(),
                    w,
                    device,
                );
                (w, m)
            })
            .collect();
        let ids = tap.at(Site::EmbedIn, inputs.ids.shallow_clone())?;
        let x = tap.at(
            Site::EmbedOut,
            Tensor::embedding(&self.params.embed_tokens, &ids, -1, false, false),
        )?;
        let rotary_in = tap.at(Site::RotaryIn, x.shallow_clone())?;
        let (cos, sin) = rotary_cos_sin(&self.inv_freq, &inputs.positions, rotary_in.kind());
        let (cos, sin) = (tap.at(Site::RotaryCos, cos)?, tap.at(Site::RotarySin, sin)?);
        let block = |l: usize, x: Tensor| {
            let mask = &masks
                .iter()
                .find(|(w, _)| *w == c.layer_windows[l])
                .ok_or_else(|| ModelError::InvalidInput(format!("no mask for layer {l}")))?
                .1;
            let layer = &self.params.layers[l];
            self.block(tap, l, layer, x, (&cos, &sin), mask, cache.as_deref_mut())
        };
        let final_norm =
            |x: Tensor| rms_norm(tap, Site::LnFinal, x, &self.params.norm, c.rms_norm_eps);
        blocks_then_head(
            tap,
            x,
            self.params.layers.len(),
            stop_at_layer,
            output_hidden_states,
            block,
            final_norm,
            |x| self.unembed(x),
        )
    }

    fn n_layers(&self) -> usize {
        self.params.layers.len()
    }

    fn embedding(&self) -> &Tensor {
        &self.params.embed_tokens
    }

    fn unembed(&self, x: &Tensor) -> Tensor {
        x.linear(self.params.unembedding(), self.params.lm_head_bias.as_ref())
    }

    fn run_part<T: Tap>(&self, tap: &T, part: Part<'_>, x: &Tensor) -> Option<ModelResult<Tensor>> {
        Some(match part {
            Part::LnFinal => rms_norm(
                tap,
                Site::LnFinal,
                x.shallow_clone(),
                &self.params.norm,
                self.config.rms_norm_eps,
            ),
            Part::Block(l, name) => {
                let layer = self.params.layers.get(l)?;
                return self.run_block_component(tap, l, layer, name, x);
            }
        })
    }
}

/// Components one at a time, as the suite's `all_components` compares them with the bridge's.
impl LlamaForCausalLM {
    /// One part of block `l` (`""` for the whole block), or `None` for an unknown part.
    fn run_block_component<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &LlamaLayerParams,
        part: &str,
        x: &Tensor,
    ) -> Option<ModelResult<Tensor>> {
        let s = |site: BlockSite| Site::Block(l, site);
        let eps = self.config.rms_norm_eps;
        let (batch, len) = (x.size()[0], x.size()[1]);
        let rotary_and_mask = || {
            let positions = mask::arange_positions(batch, len, 0, x.device());
            let (cos, sin) = rotary_cos_sin(&self.inv_freq, &positions, x.kind());
            let window = self.config.layer_windows[l];
            let mask = AttentionMask::with_window(len, len, 0, None, window, x.device());
            (cos, sin, mask)
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
            "ln1" => rms_norm(
                tap,
                |site| s(BlockSite::Ln1(site)),
                x.shallow_clone(),
                &layer.input_layernorm,
                eps,
            ),
            "ln2" => rms_norm(
                tap,
                |site| s(BlockSite::Ln2(site)),
                x.shallow_clone(),
                &layer.post_attention_layernorm,
                eps,
            ),
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

/// `LlamaRMSNorm` with its sites: HF's computation (in f32, `x * rsqrt(mean(x^2) + eps)`, cast
/// back, times the weight) unless a hook on `hook_scale` or `hook_normalized` edits its value;
/// then the output is `w * hook_normalized`, from TransformerLens's decomposed form
/// (`hook_scale(sqrt(mean(x^2) + eps))`, `hook_normalized(x / scale)`, in f32, cast back).
/// Hooks that only read see the decomposed values and leave the output as with no hook.
fn rms_norm<T: Tap>(
    tap: &T,
    site: impl Fn(LnSite) -> Site,
    x: Tensor,
    weight: &Tensor,
    eps: f64,
) -> ModelResult<Tensor> {
    let x = tap.at(site(LnSite::In), x)?;
    let kind = x.kind();
    let hf = |x: &Tensor| {
        let h = x.to_kind(Kind::Float);
        let variance = h.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        weight * (h * (variance + eps).rsqrt()).to_kind(kind)
    };
    let out = if tap.hooked(site(LnSite::Scale)) || tap.hooked(site(LnSite::Normalized)) {
        let h = x.to_kind(Kind::Float);
        let scale = (h.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float) + eps).sqrt();
        let scale = tap.at_noting_edits(site(LnSite::Scale), scale)?;
        let normalized = tap.at_noting_edits(site(LnSite::Normalized), h / &scale.activation)?;
        if scale.untouched && normalized.untouched {
            hf(&x)
        } else {
            weight * normalized.activation.to_kind(kind)
        }
    } else {
        hf(&x)
    };
    tap.at(site(LnSite::Out), out)
}

/// The rotary inverse frequencies of `ROPE_INIT_FUNCTIONS` in f32 (see
/// [`lens_core::RopeScaling::inverse_frequencies`]).
fn inverse_frequencies(config: &LlamaConfig, device: Device) -> Tensor {
    config
        .rope
        .scaling
        .inverse_frequencies(config.rope.theta, config.head_dim, device)
}

/// `cos` and `sin` `[b, q, d_head]` for `positions` `[b, q]`, computed in f32 and cast to `kind`
/// (the frequencies concatenated with themselves: half-split pairs).
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
