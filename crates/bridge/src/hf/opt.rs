//! HuggingFace's `OPTForCausalLM`, operation by operation as transformers 5.9.0 computes it in
//! eager mode: token embeddings (projected in when `word_embed_proj_dim` differs from the
//! width), learned positions looked up at `position + 2` with positions counted from the
//! attention mask (`cumsum(mask) * mask - 1`, padding at -1), LayerNorms before each sublayer
//! (or after, for OPT-350m), queries scaled by `d_head^-0.5` before the product, an f32
//! softmax, a ReLU MLP, the decoder's final LayerNorm (pre-LN models), the projection out and an
//! `lm_head` without a bias; HF's loss, KV cache and `output_hidden_states`. No hooks.

use lens_core::model::{ModelError, ModelResult};
use lens_core::{HfConfig, OptConfig, Weights, OPT_POSITION_OFFSET};
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
use crate::tap::{BlockSite, LinSite, LnSite, Projection, Site, Tap};

/// One `OPTDecoderLayer` (`model.decoder.layers.{i}`).
#[derive(Debug)]
pub struct OptLayerParams {
    /// `self_attn_layer_norm`.
    pub self_attn_layer_norm: LayerNormParams,
    /// `self_attn.q_proj`, `[d, d]`.
    pub q_proj: LinearParams,
    /// `self_attn.k_proj`.
    pub k_proj: LinearParams,
    /// `self_attn.v_proj`.
    pub v_proj: LinearParams,
    /// `self_attn.out_proj`.
    pub out_proj: LinearParams,
    /// `final_layer_norm` (the layer's, before or after its MLP).
    pub final_layer_norm: LayerNormParams,
    /// `fc1`, `[ffn_dim, d]`.
    pub fc1: LinearParams,
    /// `fc2`, `[d, ffn_dim]`.
    pub fc2: LinearParams,
}

/// Every parameter of an `OPTForCausalLM`, under HuggingFace's names.
#[derive(Debug)]
pub struct OptParams {
    /// `model.decoder.embed_tokens.weight`, `[vocab, word_embed_proj_dim]`.
    pub embed_tokens: Tensor,
    /// `model.decoder.embed_positions.weight`, `[max_position_embeddings + 2, d]`.
    pub embed_positions: Tensor,
    /// `model.decoder.project_in.weight`, `[d, word_embed_proj_dim]`, when projected.
    pub project_in: Option<Tensor>,
    /// `model.decoder.project_out.weight`, `[word_embed_proj_dim, d]`, when projected.
    pub project_out: Option<Tensor>,
    /// `model.decoder.layers`.
    pub layers: Vec<OptLayerParams>,
    /// `model.decoder.final_layer_norm`, when the model has one.
    pub final_layer_norm: Option<LayerNormParams>,
    /// `lm_head.weight`; `None` while tied to `embed_tokens`.
    pub lm_head: Option<Tensor>,
    /// A bias of the unembedding, `[vocab]`: HuggingFace's OPT has none; the bridge adds a
    /// zero one (TransformerLens's `b_U`).
    pub lm_head_bias: Option<Tensor>,
    /// LayerNorms have parameters (`layer_norm_elementwise_affine`); otherwise their weights
    /// and biases here are constant ones and zeros, not parameters.
    affine: bool,
}

/// A LayerNorm's two parameters under `name.weight` and `name.bias`, when it has them.
fn push_norm<'a>(
    out: &mut Vec<(String, &'a Tensor)>,
    affine: bool,
    name: String,
    ln: &'a LayerNormParams,
) {
    if affine {
        out.push((format!("{name}.weight"), &ln.weight));
        out.push((format!("{name}.bias"), &ln.bias));
    }
}

impl OptParams {
    /// Takes every tensor a model with `config` needs out of `weights` (shapes checked),
    /// converted to `kind` on `device`, as leaves that require gradients. Errors name the
    /// missing or mis-shaped tensor.
    pub fn from_weights(
        config: &OptConfig,
        weights: &mut Weights,
        device: Device,
        kind: Kind,
    ) -> ModelResult<Self> {
        let (d, m, v, p) = (
            config.hidden_size,
            config.ffn_dim,
            config.vocab_size,
            config.word_embed_proj_dim,
        );
        let affine = config.layer_norm_elementwise_affine;
        let norm = |weights: &mut Weights, name: &str| -> ModelResult<LayerNormParams> {
            if affine {
                let mut take = |n: &str, shape: &[i64]| take_leaf(weights, n, shape, device, kind);
                take_layer_norm(&mut take, name, d)
            } else {
                Ok(LayerNormParams {
                    weight: Tensor::ones([d], (kind, device)),
                    bias: Tensor::zeros([d], (kind, device)),
                })
            }
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers as usize);
        for l in 0..config.num_hidden_layers {
            let prefix = format!("model.decoder.layers.{l}");
            let self_attn_layer_norm = norm(weights, &format!("{prefix}.self_attn_layer_norm"))?;
            let final_layer_norm = norm(weights, &format!("{prefix}.final_layer_norm"))?;
            let mut take = |n: &str, shape: &[i64]| take_leaf(weights, n, shape, device, kind);
            let mut linear = |s: &str, n_out: i64, n_in: i64| {
                let name = format!("{prefix}.{s}");
                take_linear(&mut take, &name, [n_out, n_in], config.enable_bias)
            };
            layers.push(OptLayerParams {
                self_attn_layer_norm,
                q_proj: linear("self_attn.q_proj", d, d)?,
                k_proj: linear("self_attn.k_proj", d, d)?,
                v_proj: linear("self_attn.v_proj", d, d)?,
                out_proj: linear("self_attn.out_proj", d, d)?,
                final_layer_norm,
                fc1: linear("fc1", m, d)?,
                fc2: linear("fc2", d, m)?,
            });
        }
        let final_layer_norm = if config.has_final_layer_norm() {
            Some(norm(weights, "model.decoder.final_layer_norm")?)
        } else {
            None
        };
        let mut take = |name: &str, shape: &[i64]| take_leaf(weights, name, shape, device, kind);
        let (project_in, project_out) = if config.projects() {
            (
                Some(take("model.decoder.project_in.weight", &[d, p])?),
                Some(take("model.decoder.project_out.weight", &[p, d])?),
            )
        } else {
            (None, None)
        };
        let embed_tokens = take("model.decoder.embed_tokens.weight", &[v, p])?;
        let embed_positions = take(
            "model.decoder.embed_positions.weight",
            &[config.max_position_embeddings + OPT_POSITION_OFFSET, d],
        )?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(take("lm_head.weight", &[v, p])?)
        };
        Ok(OptParams {
            embed_tokens,
            embed_positions,
            project_in,
            project_out,
            layers,
            final_layer_norm,
            lm_head,
            lm_head_bias: None,
            affine,
        })
    }

    /// The unembedding, `[vocab, word_embed_proj_dim]` (`embed_tokens` while tied).
    pub fn unembedding(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Every parameter under its HuggingFace name (`lm_head.weight` only when untied; the
    /// bridge's `lm_head.bias` when present), in `named_parameters()` order.
    pub fn named(&self) -> Vec<(String, &Tensor)> {
        let mut out: Vec<(String, &Tensor)> = vec![
            (
                "model.decoder.embed_tokens.weight".into(),
                &self.embed_tokens,
            ),
            (
                "model.decoder.embed_positions.weight".into(),
                &self.embed_positions,
            ),
        ];
        if let Some(w) = &self.project_out {
            out.push(("model.decoder.project_out.weight".into(), w));
        }
        if let Some(w) = &self.project_in {
            out.push(("model.decoder.project_in.weight".into(), w));
        }
        if let Some(ln) = &self.final_layer_norm {
            push_norm(
                &mut out,
                self.affine,
                "model.decoder.final_layer_norm".into(),
                ln,
            );
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let p = |s: &str| format!("model.decoder.layers.{l}.{s}");
            let mut layer_out: Vec<(String, &Tensor)> = Vec::new();
            for (name, lin) in [
                ("self_attn.k_proj", &layer.k_proj),
                ("self_attn.v_proj", &layer.v_proj),
                ("self_attn.q_proj", &layer.q_proj),
                ("self_attn.out_proj", &layer.out_proj),
            ] {
                layer_out.push((p(&format!("{name}.weight")), &lin.weight));
                if let Some(b) = &lin.bias {
                    layer_out.push((p(&format!("{name}.bias")), b));
                }
            }
            push_norm(
                &mut layer_out,
                self.affine,
                p("self_attn_layer_norm"),
                &layer.self_attn_layer_norm,
            );
            for (name, lin) in [("fc1", &layer.fc1), ("fc2", &layer.fc2)] {
                layer_out.push((p(&format!("{name}.weight")), &lin.weight));
                if let Some(b) = &lin.bias {
                    layer_out.push((p(&format!("{name}.bias")), b));
                }
            }
            push_norm(
                &mut layer_out,
                self.affine,
                p("final_layer_norm"),
                &layer.final_layer_norm,
            );
            out.extend(layer_out);
        }
        if let Some(w) = &self.lm_head {
            out.push(("lm_head.weight".into(), w));
        }
        if let Some(b) = &self.lm_head_bias {
            out.push(("lm_head.bias".into(), b));
        }
        out
    }

    /// Gives the projection behind `name` (`model.decoder.layers.{l}.self_attn.q_proj.bias`,
    /// ..., `fc1.bias`, `fc2.bias`) a zero bias that requires gradients; `false` for any other
    /// name. Weight processing uses this where it makes a missing bias non-zero
    /// (`enable_bias: false`).
    pub fn add_zero_bias(&mut self, name: &str) -> bool {
        let Some((layer, rest)) = layer_part(name, "model.decoder.layers") else {
            return false;
        };
        let Some(layer) = self.layers.get_mut(layer) else {
            return false;
        };
        let linear = match rest {
            "self_attn.q_proj.bias" => &mut layer.q_proj,
            "self_attn.k_proj.bias" => &mut layer.k_proj,
            "self_attn.v_proj.bias" => &mut layer.v_proj,
            "self_attn.out_proj.bias" => &mut layer.out_proj,
            "fc1.bias" => &mut layer.fc1,
            "fc2.bias" => &mut layer.fc2,
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

/// HuggingFace's OPT causal language model (eager attention, eval mode).
pub struct OptForCausalLM {
    config: OptConfig,
    params: OptParams,
}

impl std::fmt::Debug for OptForCausalLM {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OptForCausalLM")
            .field("layers", &self.config.num_hidden_layers)
            .field("hidden_size", &self.config.hidden_size)
            .field("pre_layer_norm", &self.config.do_layer_norm_before)
            .field("kind", &self.kind())
            .field("device", &self.device())
            .finish()
    }
}

impl OptForCausalLM {
    /// A model from a parsed config and its checkpoint's tensors (HuggingFace names).
    pub fn from_weights(
        config: OptConfig,
        mut weights: Weights,
        device: Device,
        kind: Kind,
    ) -> ModelResult<Self> {
        input::check_device(device)?;
        input::check_float_kind(kind)?;
        let params = OptParams::from_weights(&config, &mut weights, device, kind)?;
        Ok(OptForCausalLM { config, params })
    }

    /// The learned position embeddings of `positions` (`-1` for padding), looked up at
    /// `position + 2`.
    fn position_embeddings(&self, positions: &Tensor) -> Tensor {
        Tensor::embedding(
            &self.params.embed_positions,
            &(positions + OPT_POSITION_OFFSET),
            -1,
            false,
            false,
        )
    }

    /// The decoder's final LayerNorm (pre-LN models), then `project_out` (projected ones).
    fn final_norm_and_projection<T: Tap>(&self, tap: &T, x: Tensor) -> ModelResult<Tensor> {
        let x = match &self.params.final_layer_norm {
            Some(ln) => layer_norm(tap, Site::LnFinal, x, ln, 1e-5)?,
            None => x,
        };
        self.project_out(tap, x)
    }

    /// One `OPTDecoderLayer`. Pre-LN: `h = x + attn(ln1(x))`, `h + mlp(ln2(h))`; post-LN:
    /// `h = ln1(x + attn(x))`, `ln2(h + mlp(h))`. OPT's LayerNorms have HF's default epsilon,
    /// 1e-5.
    fn block<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &OptLayerParams,
        x: Tensor,
        mask: &AttentionMask,
        cache: Option<&mut KvCache>,
    ) -> ModelResult<Tensor> {
        let s = |site: BlockSite| Site::Block(l, site);
        let pre = self.config.do_layer_norm_before;
        let ln2 = |x: Tensor| {
            layer_norm(
                tap,
                |site| s(BlockSite::Ln2(site)),
                x,
                &layer.final_layer_norm,
                1e-5,
            )
        };
        let resid_pre = tap.at(s(BlockSite::In), x)?;
        let attended = self.attention(tap, l, layer, &resid_pre, mask, cache)?;
        let resid_mid = tap.at(s(BlockSite::ResidMid), &resid_pre + attended)?;
        let resid_mid = if pre {
            resid_mid
        } else {
            self.ln1(tap, l, layer, resid_mid)?
        };
        let mlp_input = if tap.paths().use_hook_mlp_in {
            tap.at(s(BlockSite::MlpIn), resid_mid.copy())?
        } else {
            resid_mid.shallow_clone()
        };
        let mlp_input = if pre { ln2(mlp_input)? } else { mlp_input };
        let mlp_out = self.mlp(tap, l, layer, mlp_input)?;
        let out = resid_mid + mlp_out;
        let out = if pre { out } else { ln2(out)? };
        tap.at(s(BlockSite::Out), out)
    }

    fn ln1<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &OptLayerParams,
        x: Tensor,
    ) -> ModelResult<Tensor> {
        layer_norm(
            tap,
            |site| Site::Block(l, BlockSite::Ln1(site)),
            x,
            &layer.self_attn_layer_norm,
            1e-5,
        )
    }

    /// `OPTAttention` from the block's input (`self_attn_layer_norm` included before it in a
    /// pre-LN model).
    fn attention<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &OptLayerParams,
        resid_pre: &Tensor,
        mask: &AttentionMask,
        cache: Option<&mut KvCache>,
    ) -> ModelResult<Tensor> {
        let c = &self.config;
        let pre = c.do_layer_norm_before;
        let input = |x: Tensor| {
            if pre {
                self.ln1(tap, l, layer, x)
            } else {
                Ok(x)
            }
        };
        let h = c.num_attention_heads;
        let projections = [(&layer.q_proj, h), (&layer.k_proj, h), (&layer.v_proj, h)];
        let [q, k, v] =
            attention::separate_qkv(tap, l, resid_pre, input, projections, c.head_dim())?;
        attention::attend(
            tap,
            l,
            (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)),
            cache,
            mask,
            Scores::QueryScaled,
            resid_pre.kind(),
            &layer.out_proj,
        )
    }

    /// The MLP, `fc2(act(fc1(x)))`.
    fn mlp<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &OptLayerParams,
        x: Tensor,
    ) -> ModelResult<Tensor> {
        let s = |site: BlockSite| Site::Block(l, site);
        let x = tap.at(s(BlockSite::MlpCompIn), x)?;
        let x = tap.at(s(BlockSite::MlpFc(LinSite::In)), x)?;
        let pre = tap.at(s(BlockSite::MlpFc(LinSite::Out)), layer.fc1.apply(&x))?;
        let post = tap.at(
            s(BlockSite::MlpProj(LinSite::In)),
            self.config.activation_function.apply(&pre),
        )?;
        let out = tap.at(s(BlockSite::MlpProj(LinSite::Out)), layer.fc2.apply(&post))?;
        tap.at(s(BlockSite::MlpCompOut), out)
    }
}

decoder_api!(
    OptForCausalLM,
    OptConfig,
    OptParams,
    embed_tokens,
    opt_config
);

impl RotaryDecoder for OptForCausalLM {
    fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }

    fn device(&self) -> Device {
        OptForCausalLM::device(self)
    }

    fn eos_token_id(&self) -> Option<i64> {
        self.config.eos_token_id
    }

    /// The position table has `max_position_embeddings` rows after its offset.
    fn max_positions(&self) -> i64 {
        self.config.max_position_embeddings
    }

    /// OPT counts positions from the attention mask in its forward too (`cumsum(mask) * mask -
    /// 1`, so padding is at -1), when no position ids are given.
    fn checked_inputs(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        past_len: i64,
    ) -> ModelResult<CheckedInputs> {
        let device = self.device();
        let limit = self.max_positions();
        let ids = input::tokens(input_ids, self.vocab_size(), limit, past_len, device)?;
        let (batch, q_len) = (ids.size()[0], ids.size()[1]);
        let mask = input::attention_mask(attention_mask, batch, past_len + q_len, device)?;
        let positions = match (position_ids, &mask) {
            (Some(p), _) => input::position_ids(p, batch, q_len, limit, device)?,
            (None, Some(mask)) => {
                let mask = mask.to_kind(Kind::Int64);
                (mask.cumsum(1, Kind::Int64) * &mask - 1).narrow(1, past_len, q_len)
            }
            (None, None) => crate::hf::mask::arange_positions(batch, q_len, past_len, device),
        };
        Ok(CheckedInputs {
            ids,
            mask,
            positions,
        })
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
        let embeds = tap.at(
            Site::EmbedOut,
            Tensor::embedding(&self.params.embed_tokens, &ids, -1, false, false),
        )?;
        let embeds = self.project_in(tap, embeds)?;
        let positions = tap.at(Site::PosEmbedIn, inputs.positions.shallow_clone())?;
        let pos_embeds = tap.at(Site::PosEmbedOut, self.position_embeddings(&positions))?;
        let x = embeds + pos_embeds;
        let n_layers = self.params.layers.len();
        let block = |l: usize, x: Tensor| {
            let layer = &self.params.layers[l];
            self.block(tap, l, layer, x, &mask, cache.as_deref_mut())
        };
        let final_norm = |x: Tensor| self.final_norm_and_projection(tap, x);
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

    fn learned_positions(&self) -> Option<&Tensor> {
        Some(&self.params.embed_positions)
    }

    fn has_final_norm(&self) -> bool {
        self.params.final_layer_norm.is_some()
    }

    fn project_in<T: Tap>(&self, tap: &T, embeds: Tensor) -> ModelResult<Tensor> {
        project(tap, Projection::In, self.params.project_in.as_ref(), embeds)
    }

    fn project_out<T: Tap>(&self, tap: &T, x: Tensor) -> ModelResult<Tensor> {
        project(tap, Projection::Out, self.params.project_out.as_ref(), x)
    }

    /// Position `p` is at row `p + 2`.
    fn position_offset(&self) -> i64 {
        OPT_POSITION_OFFSET
    }

    fn embedding(&self) -> &Tensor {
        &self.params.embed_tokens
    }

    fn unembed(&self, x: &Tensor) -> Tensor {
        x.linear(self.params.unembedding(), self.params.lm_head_bias.as_ref())
    }

    fn run_part<T: Tap>(&self, tap: &T, part: Part<'_>, x: &Tensor) -> Option<ModelResult<Tensor>> {
        Some(match part {
            Part::LnFinal => match &self.params.final_layer_norm {
                Some(ln) => layer_norm(tap, Site::LnFinal, x.shallow_clone(), ln, 1e-5),
                None => return None,
            },
            Part::Block(l, name) => {
                let layer = self.params.layers.get(l)?;
                return self.run_block_component(tap, l, layer, name, x);
            }
        })
    }
}

/// Components one at a time, as the suite's `all_components` compares them with the bridge's.
impl OptForCausalLM {
    /// One part of block `l` (`""` for the whole block), or `None` for an unknown part.
    fn run_block_component<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &OptLayerParams,
        part: &str,
        x: &Tensor,
    ) -> Option<ModelResult<Tensor>> {
        let s = |site: BlockSite| Site::Block(l, site);
        let len = x.size()[1];
        let mask = || AttentionMask::new(len, len, 0, None, x.device());
        let norm = |site: fn(LnSite) -> BlockSite, params: &LayerNormParams| {
            layer_norm(tap, |ln| s(site(ln)), x.shallow_clone(), params, 1e-5)
        };
        Some(match part {
            "" => self.block(tap, l, layer, x.shallow_clone(), &mask(), None),
            "attn" => self.attention(tap, l, layer, x, &mask(), None),
            "ln1" => norm(BlockSite::Ln1, &layer.self_attn_layer_norm),
            "ln2" => norm(BlockSite::Ln2, &layer.final_layer_norm),
            "mlp" => self.mlp(tap, l, layer, x.shallow_clone()),
            _ => return None,
        })
    }
}

/// `x` through OPT's `project_in` or `project_out` (a bias-free linear map), its input and
/// output at their sites, where the model has it.
fn project<T: Tap>(
    tap: &T,
    which: Projection,
    weight: Option<&Tensor>,
    x: Tensor,
) -> ModelResult<Tensor> {
    let Some(w) = weight else { return Ok(x) };
    let x = tap.at(Site::Projection(which, LinSite::In), x)?;
    tap.at(
        Site::Projection(which, LinSite::Out),
        x.linear(w, None::<&Tensor>),
    )
}

/// The OPT config of `config`, or [`ModelError::Unsupported`].
pub(crate) fn opt_config(config: &HfConfig) -> ModelResult<OptConfig> {
    config.as_opt().cloned().ok_or_else(|| {
        ModelError::Unsupported(format!(
            "architecture {} is not an OPT model",
            config.architecture()
        ))
    })
}
