//! HuggingFace's `GPTNeoXForCausalLM` (Pythia, GPT-NeoX-20B), operation by operation as
//! transformers 5.9.0 computes it in eager mode: LayerNorms with biases, a fused
//! `query_key_value` whose rows are interleaved per head (`[h0: q k v][h1: q k v]...`), rotary
//! embeddings on the first `rotary_dim` dimensions of each head (half-split pairs, cosines in
//! f32 cast to the model's dtype), scores scaled by `head_dim^-0.5` with an f32 softmax, a plain
//! GELU MLP, and attention and MLP in parallel off the block's input (`use_parallel_residual`)
//! or in sequence; HF's additive `finfo.min` masks, its position ids, loss, KV cache (keys after
//! rotation) and `output_hidden_states`. No hooks.

use lens_core::model::{ModelError, ModelResult};
use lens_core::{GptNeoxConfig, HfConfig, Weights};
use tch::{Device, Kind, Tensor};

use crate::hf::attention::{self, Scores};
use crate::hf::decoder::{blocks_then_head, decoder_api, Part, RotaryDecoder};
use crate::hf::forward::{self, layer_norm, PassOutput};
use crate::hf::kv_cache::KvCache;
use crate::hf::llama::{rotary_cos_sin, rotate, LinearParams};
use crate::hf::mask::{self, AttentionMask};
use crate::hf::model::CheckedInputs;
use crate::hf::params::LayerNormParams;
use crate::hf::params::{find_parameter, layer_part, take_layer_norm, take_leaf, take_linear};
use crate::input;
use crate::tap::{BlockSite, LinSite, Site, Tap};

/// One `GPTNeoXLayer` (`gpt_neox.layers.{i}`).
#[derive(Debug)]
pub struct GptNeoxLayerParams {
    /// `input_layernorm`, before attention.
    pub input_layernorm: LayerNormParams,
    /// `post_attention_layernorm`, before the MLP.
    pub post_attention_layernorm: LayerNormParams,
    /// `attention.query_key_value`, `[3 d, d]`, rows interleaved per head.
    pub query_key_value: LinearParams,
    /// `attention.dense`, `[d, d]`.
    pub dense: LinearParams,
    /// `mlp.dense_h_to_4h`, `[d_mlp, d]`.
    pub dense_h_to_4h: LinearParams,
    /// `mlp.dense_4h_to_h`, `[d, d_mlp]`.
    pub dense_4h_to_h: LinearParams,
}

/// Every parameter of a `GPTNeoXForCausalLM`, under HuggingFace's names.
#[derive(Debug)]
pub struct GptNeoxParams {
    /// `gpt_neox.embed_in.weight`, `[vocab, d]`.
    pub embed_in: Tensor,
    /// `gpt_neox.layers`.
    pub layers: Vec<GptNeoxLayerParams>,
    /// `gpt_neox.final_layer_norm`.
    pub final_layer_norm: LayerNormParams,
    /// `embed_out.weight`, `[vocab, d]`; `None` while tied to `embed_in`.
    pub embed_out: Option<Tensor>,
    /// A bias of the unembedding, `[vocab]`. HuggingFace's GPT-NeoX has none; the
    /// TransformerBridge adds a zero one (TransformerLens's `b_U`).
    pub embed_out_bias: Option<Tensor>,
}

impl GptNeoxParams {
    /// Takes every tensor a model with `config` needs out of `weights` (shapes checked),
    /// converted to `kind` on `device`, as leaves that require gradients. The buffers older
    /// checkpoints carry (`attention.bias`, `attention.masked_bias`, `rotary_emb.inv_freq`) are
    /// not read, as HuggingFace ignores them. Errors name the missing or mis-shaped tensor.
    pub fn from_weights(
        config: &GptNeoxConfig,
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
        let mut layers = Vec::with_capacity(config.num_hidden_layers as usize);
        for l in 0..config.num_hidden_layers {
            let p = |s: &str| format!("gpt_neox.layers.{l}.{s}");
            let mut norm = |s: &str| take_layer_norm(&mut take, &p(s), d);
            let input_layernorm = norm("input_layernorm")?;
            let post_attention_layernorm = norm("post_attention_layernorm")?;
            let mut linear = |s: &str, n_out: i64, n_in: i64, bias: bool| {
                take_linear(&mut take, &p(s), [n_out, n_in], bias)
            };
            let attention_bias = config.attention_bias;
            layers.push(GptNeoxLayerParams {
                input_layernorm,
                post_attention_layernorm,
                query_key_value: linear("attention.query_key_value", 3 * d, d, attention_bias)?,
                dense: linear("attention.dense", d, d, attention_bias)?,
                dense_h_to_4h: linear("mlp.dense_h_to_4h", m, d, true)?,
                dense_4h_to_h: linear("mlp.dense_4h_to_h", d, m, true)?,
            });
        }
        let embed_in = take("gpt_neox.embed_in.weight", &[v, d])?;
        let final_layer_norm = LayerNormParams {
            weight: take("gpt_neox.final_layer_norm.weight", &[d])?,
            bias: take("gpt_neox.final_layer_norm.bias", &[d])?,
        };
        let embed_out = if config.tie_word_embeddings {
            None
        } else {
            Some(take("embed_out.weight", &[v, d])?)
        };
        Ok(GptNeoxParams {
            embed_in,
            layers,
            final_layer_norm,
            embed_out,
            embed_out_bias: None,
        })
    }

    /// The unembedding, `[vocab, d]` (`embed_in` while tied).
    pub fn unembedding(&self) -> &Tensor {
        self.embed_out.as_ref().unwrap_or(&self.embed_in)
    }

    /// Every parameter under its HuggingFace name (`embed_out.weight` only when untied; the
    /// bridge's `embed_out.bias` when present), in `named_parameters()` order.
    pub fn named(&self) -> Vec<(String, &Tensor)> {
        let mut out: Vec<(String, &Tensor)> =
            vec![("gpt_neox.embed_in.weight".into(), &self.embed_in)];
        for (l, layer) in self.layers.iter().enumerate() {
            let p = |s: &str| format!("gpt_neox.layers.{l}.{s}");
            for (name, norm) in [
                ("input_layernorm", &layer.input_layernorm),
                ("post_attention_layernorm", &layer.post_attention_layernorm),
            ] {
                out.push((p(&format!("{name}.weight")), &norm.weight));
                out.push((p(&format!("{name}.bias")), &norm.bias));
            }
            for (name, lin) in [
                ("attention.query_key_value", &layer.query_key_value),
                ("attention.dense", &layer.dense),
                ("mlp.dense_h_to_4h", &layer.dense_h_to_4h),
                ("mlp.dense_4h_to_h", &layer.dense_4h_to_h),
            ] {
                out.push((p(&format!("{name}.weight")), &lin.weight));
                if let Some(bias) = &lin.bias {
                    out.push((p(&format!("{name}.bias")), bias));
                }
            }
        }
        out.push((
            "gpt_neox.final_layer_norm.weight".into(),
            &self.final_layer_norm.weight,
        ));
        out.push((
            "gpt_neox.final_layer_norm.bias".into(),
            &self.final_layer_norm.bias,
        ));
        if let Some(w) = &self.embed_out {
            out.push(("embed_out.weight".into(), w));
        }
        if let Some(b) = &self.embed_out_bias {
            out.push(("embed_out.bias".into(), b));
        }
        out
    }

    /// Gives the attention layer behind `name` (`gpt_neox.layers.{l}.attention.dense.bias` or
    /// `...query_key_value.bias`) a zero bias that requires gradients, when it has none; `false`
    /// for any other name. Weight processing uses this where it makes a missing bias non-zero.
    pub fn add_zero_bias(&mut self, name: &str) -> bool {
        let Some((layer, linear)) = layer_part(name, "gpt_neox.layers") else {
            return false;
        };
        let Some(layer) = self.layers.get_mut(layer) else {
            return false;
        };
        let linear = match linear {
            "attention.query_key_value.bias" => &mut layer.query_key_value,
            "attention.dense.bias" => &mut layer.dense,
            _ => return false,
        };
        linear.add_zero_bias();
        true
    }

    /// A parameter by its HuggingFace name, sharing storage (`embed_out.weight` is `embed_in`
    /// while tied). `None` for a name the model does not have.
    pub fn get(&self, name: &str) -> Option<Tensor> {
        find_parameter(self.named(), name, "embed_out.weight", self.unembedding())
    }
}

/// HuggingFace's GPT-NeoX causal language model (eager attention, eval mode).
pub struct GptNeoxForCausalLM {
    config: GptNeoxConfig,
    params: GptNeoxParams,
    /// The rotary inverse frequencies `[rotary_dim / 2]`, f32, as the rotary module's buffer.
    inv_freq: Tensor,
}

impl std::fmt::Debug for GptNeoxForCausalLM {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GptNeoxForCausalLM")
            .field("layers", &self.config.num_hidden_layers)
            .field("hidden_size", &self.config.hidden_size)
            .field("parallel", &self.config.use_parallel_residual)
            .field("kind", &self.kind())
            .field("device", &self.device())
            .finish()
    }
}

impl GptNeoxForCausalLM {
    /// A model from a parsed config and its checkpoint's tensors (HuggingFace names).
    pub fn from_weights(
        config: GptNeoxConfig,
        mut weights: Weights,
        device: Device,
        kind: Kind,
    ) -> ModelResult<Self> {
        input::check_device(device)?;
        input::check_float_kind(kind)?;
        let params = GptNeoxParams::from_weights(&config, &mut weights, device, kind)?;
        let inv_freq =
            config
                .rope
                .scaling
                .inverse_frequencies(config.rope.theta, config.rotary_dim(), device);
        Ok(GptNeoxForCausalLM {
            config,
            params,
            inv_freq,
        })
    }

    /// One `GPTNeoXLayer`. Parallel: `mlp(post_attention_layernorm(x)) + attn(input_layernorm(x))
    /// + x`; sequential: `h = attn(input_layernorm(x)) + x`, then `mlp(post_attention_layernorm(h))
    /// + h`. (A parallel block has no `hook_resid_mid`: no residual exists between the two.)
    #[allow(clippy::too_many_arguments)]
    fn block<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &GptNeoxLayerParams,
        x: Tensor,
        rotary: (&Tensor, &Tensor),
        mask: &AttentionMask,
        cache: Option<&mut KvCache>,
    ) -> ModelResult<Tensor> {
        let s = |site: BlockSite| Site::Block(l, site);
        let eps = self.config.layer_norm_eps;
        let resid_pre = tap.at(s(BlockSite::In), x)?;
        let attended = self.attention(tap, l, layer, &resid_pre, rotary, mask, cache)?;
        let parallel = self.config.use_parallel_residual;
        let mlp_source = if parallel {
            resid_pre.shallow_clone()
        } else {
            tap.at(s(BlockSite::ResidMid), &attended + &resid_pre)?
        };
        let mlp_input = if tap.paths().use_hook_mlp_in {
            tap.at(s(BlockSite::MlpIn), mlp_source.copy())?
        } else {
            mlp_source.shallow_clone()
        };
        let normed = layer_norm(
            tap,
            |site| s(BlockSite::Ln2(site)),
            mlp_input,
            &layer.post_attention_layernorm,
            eps,
        )?;
        let mlp_out = self.mlp(tap, l, layer, normed)?;
        let out = if parallel {
            mlp_out + attended + resid_pre
        } else {
            mlp_out + mlp_source
        };
        tap.at(s(BlockSite::Out), out)
    }

    /// Rows of `query_key_value` for part `part` (q, k, v = 0, 1, 2): weight `[h * dh, d]`
    /// and bias `[h * dh]`, in head order.
    fn qkv_part(&self, layer: &GptNeoxLayerParams, part: i64) -> (Tensor, Option<Tensor>) {
        let c = &self.config;
        let (h, dh, d) = (c.num_attention_heads, c.head_dim(), c.hidden_size);
        let lin = &layer.query_key_value;
        let w = lin
            .weight
            .view([h, 3, dh, d])
            .select(1, part)
            .reshape([h * dh, d]);
        let b = lin
            .bias
            .as_ref()
            .map(|b| b.view([h, 3, dh]).select(1, part).reshape([h * dh]));
        (w, b)
    }

    /// q, k and v `[b, p, h, dh]` from the residual before `input_layernorm`, after their
    /// sites. While no hook edits q's, k's or v's input, `query_key_value` runs fused, as in
    /// HuggingFace; an edit makes each go through its own rows from its own input. With
    /// TransformerLens's `use_split_qkv_input` / `use_attn_in`, each has a per-head copy of the
    /// residual, normalised per head and projected per head.
    fn qkv<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &GptNeoxLayerParams,
        resid_pre: &Tensor,
    ) -> ModelResult<[Tensor; 3]> {
        let s = |site: BlockSite| Site::Block(l, site);
        let c = &self.config;
        let (h, dh) = (c.num_attention_heads, c.head_dim());
        let (batch, q_len) = (resid_pre.size()[0], resid_pre.size()[1]);
        let ln1 = |x: Tensor| {
            layer_norm(
                tap,
                |site| s(BlockSite::Ln1(site)),
                x,
                &layer.input_layernorm,
                c.layer_norm_eps,
            )
        };
        let sites: [fn(LinSite) -> BlockSite; 3] = [BlockSite::Q, BlockSite::K, BlockSite::V];
        let paths = tap.paths();
        let [q, k, v] = if paths.per_head_inputs() {
            let per_head = || resid_pre.unsqueeze(2).repeat([1, 1, h, 1]);
            let sources = if paths.use_split_qkv_input {
                [
                    tap.at(s(BlockSite::QInput), per_head())?,
                    tap.at(s(BlockSite::KInput), per_head())?,
                    tap.at(s(BlockSite::VInput), per_head())?,
                ]
            } else {
                let shared = tap.at(s(BlockSite::AttnInput), per_head())?;
                [shared.shallow_clone(), shared.shallow_clone(), shared]
            };
            let mut out = Vec::with_capacity(3);
            for (part, (src, lin)) in sources.into_iter().zip(sites).enumerate() {
                let x = tap.at(s(lin(LinSite::In)), ln1(src)?)?;
                let (w, b) = self.qkv_part(layer, part as i64);
                let w = w.view([h, dh, -1]).transpose(1, 2);
                let b = b.map(|b| b.view([h, dh]));
                out.push(forward::project_per_head(&x, &w, b.as_ref()));
            }
            <[Tensor; 3]>::try_from(out)
                .map_err(|_| ModelError::InvalidInput("three projections".into()))?
        } else {
            let x = tap.at(s(BlockSite::AttnIn), ln1(resid_pre.shallow_clone())?)?;
            let x = tap.at(s(BlockSite::Qkv(LinSite::In)), x)?;
            let inputs = [
                tap.at_noting_edits(s(BlockSite::Q(LinSite::In)), x.shallow_clone())?,
                tap.at_noting_edits(s(BlockSite::K(LinSite::In)), x.shallow_clone())?,
                tap.at_noting_edits(s(BlockSite::V(LinSite::In)), x.shallow_clone())?,
            ];
            let fused = if inputs.iter().all(|i| i.untouched) {
                layer.query_key_value.apply(&x)
            } else {
                let parts: Vec<Tensor> = inputs
                    .iter()
                    .enumerate()
                    .map(|(part, input)| {
                        let (w, b) = self.qkv_part(layer, part as i64);
                        input
                            .activation
                            .linear(&w, b.as_ref())
                            .view([batch, q_len, h, 1, dh])
                    })
                    .collect();
                Tensor::cat(&parts, 3).view([batch, q_len, 3 * h * dh])
            };
            let fused = tap.at(s(BlockSite::Qkv(LinSite::Out)), fused)?;
            // [b, p, 3 d] -> [b, p, h, 3 dh]: per head, q, k and v side by side.
            let per_head = fused.view([batch, q_len, h, 3 * dh]);
            [0, 1, 2].map(|part| per_head.narrow(-1, part * dh, dh))
        };
        Ok([
            tap.at(s(BlockSite::Q(LinSite::Out)), q)?,
            tap.at(s(BlockSite::K(LinSite::Out)), k)?,
            tap.at(s(BlockSite::V(LinSite::Out)), v)?,
        ])
    }

    /// `GPTNeoXAttention` from the residual `resid_pre` `[b, q, d]` (its `input_layernorm`
    /// included): q, k, v, their rotations, the scores, the pattern and `z` each at their site,
    /// heads on axis 2 (`[b, p, h, dh]`).
    #[allow(clippy::too_many_arguments)]
    fn attention<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &GptNeoxLayerParams,
        resid_pre: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        mask: &AttentionMask,
        cache: Option<&mut KvCache>,
    ) -> ModelResult<Tensor> {
        let s = |site: BlockSite| Site::Block(l, site);
        let c = &self.config;
        let [q, k, v] = self.qkv(tap, l, layer, resid_pre)?;
        let (cos, sin) = (
            tap.at(s(BlockSite::Cos), cos.shallow_clone())?,
            tap.at(s(BlockSite::Sin), sin.shallow_clone())?,
        );
        // Rotary over [b, h, p, dh], as HF; the hooks see [b, p, h, dh].
        let rotary_dim = c.rotary_dim();
        let q = rotate_leading(&q.transpose(1, 2), &cos, &sin, rotary_dim);
        let k = rotate_leading(&k.transpose(1, 2), &cos, &sin, rotary_dim);
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
            &layer.dense,
        )
    }

    /// `GPTNeoXMLP`: `dense_4h_to_h(act(dense_h_to_4h(x)))`.
    fn mlp<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &GptNeoxLayerParams,
        x: Tensor,
    ) -> ModelResult<Tensor> {
        let s = |site: BlockSite| Site::Block(l, site);
        let x = tap.at(s(BlockSite::MlpCompIn), x)?;
        let x = tap.at(s(BlockSite::MlpFc(LinSite::In)), x)?;
        let pre = tap.at(
            s(BlockSite::MlpFc(LinSite::Out)),
            layer.dense_h_to_4h.apply(&x),
        )?;
        let post = tap.at(
            s(BlockSite::MlpProj(LinSite::In)),
            self.config.hidden_act.apply(&pre),
        )?;
        let out = tap.at(
            s(BlockSite::MlpProj(LinSite::Out)),
            layer.dense_4h_to_h.apply(&post),
        )?;
        tap.at(s(BlockSite::MlpCompOut), out)
    }
}

decoder_api!(
    GptNeoxForCausalLM,
    GptNeoxConfig,
    GptNeoxParams,
    embed_in,
    gpt_neox_config
);

impl RotaryDecoder for GptNeoxForCausalLM {
    fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }

    fn device(&self) -> Device {
        GptNeoxForCausalLM::device(self)
    }

    fn eos_token_id(&self) -> Option<i64> {
        self.config.eos_token_id
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
        let mask = AttentionMask::new(
            q_len,
            past_len + q_len,
            past_len,
            inputs.mask.as_ref(),
            self.device(),
        );
        let ids = tap.at(Site::EmbedIn, inputs.ids.shallow_clone())?;
        let x = tap.at(
            Site::EmbedOut,
            Tensor::embedding(&self.params.embed_in, &ids, -1, false, false),
        )?;
        let rotary_in = tap.at(Site::RotaryIn, x.shallow_clone())?;
        let (cos, sin) = rotary_cos_sin(&self.inv_freq, &inputs.positions, rotary_in.kind());
        let (cos, sin) = (tap.at(Site::RotaryCos, cos)?, tap.at(Site::RotarySin, sin)?);
        let n_layers = self.params.layers.len();
        let block = |l: usize, x: Tensor| {
            let layer = &self.params.layers[l];
            self.block(tap, l, layer, x, (&cos, &sin), &mask, cache.as_deref_mut())
        };
        let eps = self.config.layer_norm_eps;
        let final_norm =
            |x: Tensor| layer_norm(tap, Site::LnFinal, x, &self.params.final_layer_norm, eps);
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
        self.params.layers.len()
    }

    fn embedding(&self) -> &Tensor {
        &self.params.embed_in
    }

    fn unembed(&self, x: &Tensor) -> Tensor {
        x.linear(
            self.params.unembedding(),
            self.params.embed_out_bias.as_ref(),
        )
    }

    fn run_part<T: Tap>(&self, tap: &T, part: Part<'_>, x: &Tensor) -> Option<ModelResult<Tensor>> {
        Some(match part {
            Part::LnFinal => layer_norm(
                tap,
                Site::LnFinal,
                x.shallow_clone(),
                &self.params.final_layer_norm,
                self.config.layer_norm_eps,
            ),
            Part::Block(l, name) => {
                let layer = self.params.layers.get(l)?;
                return self.run_block_component(tap, l, layer, name, x);
            }
        })
    }
}

/// Components one at a time, as the suite's `all_components` compares them with the bridge's.
impl GptNeoxForCausalLM {
    /// One part of block `l` (`""` for the whole block), or `None` for an unknown part.
    fn run_block_component<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &GptNeoxLayerParams,
        part: &str,
        x: &Tensor,
    ) -> Option<ModelResult<Tensor>> {
        let s = |site: BlockSite| Site::Block(l, site);
        let eps = self.config.layer_norm_eps;
        let (batch, len) = (x.size()[0], x.size()[1]);
        let rotary_and_mask = || {
            let positions = mask::arange_positions(batch, len, 0, x.device());
            let (cos, sin) = rotary_cos_sin(&self.inv_freq, &positions, x.kind());
            let mask = AttentionMask::new(len, len, 0, None, x.device());
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
            "ln1" => layer_norm(
                tap,
                |site| s(BlockSite::Ln1(site)),
                x.shallow_clone(),
                &layer.input_layernorm,
                eps,
            ),
            "ln2" => layer_norm(
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

/// `apply_rotary_pos_emb` on the first `rotary_dim` dimensions of q or k `[b, h, p, dh]`,
/// the rest passed through: `cat(x_rot * cos + rotate_half(x_rot) * sin, x_pass)`.
pub(crate) fn rotate_leading(x: &Tensor, cos: &Tensor, sin: &Tensor, rotary_dim: i64) -> Tensor {
    let dh = x.size()[3];
    if rotary_dim == 0 {
        return x.shallow_clone();
    }
    if rotary_dim == dh {
        return rotate(x, cos, sin);
    }
    let rotated = rotate(&x.narrow(3, 0, rotary_dim), cos, sin);
    Tensor::cat(&[rotated, x.narrow(3, rotary_dim, dh - rotary_dim)], -1)
}

/// The GPT-NeoX config of `config`, or [`ModelError::Unsupported`].
pub(crate) fn gpt_neox_config(config: &HfConfig) -> ModelResult<GptNeoxConfig> {
    config.as_gpt_neox().cloned().ok_or_else(|| {
        ModelError::Unsupported(format!(
            "architecture {} is not a GPT-NeoX model",
            config.architecture()
        ))
    })
}
