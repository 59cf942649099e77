//! HuggingFace's parallel-block decoders, `GPTJForCausalLM` and `PhiForCausalLM`, operation by
//! operation as transformers 5.9.0 computes them in eager mode: one LayerNorm per block whose
//! output feeds attention and the MLP, summed as `(attn + mlp) + residual`; separate q/k/v
//! projections (biased in Phi, grouped key/value heads in Phi); rotary embeddings on the first
//! `rotary_dim` dimensions of each head, in adjacent pairs (GPT-J, sines and cosines from its
//! f32 table cast to the model's dtype, scores in f32 divided by `sqrt(d_head)`) or half-split
//! pairs (Phi, scores scaled by `d_head^-0.5` in the model's dtype); Phi's optional q/k
//! LayerNorms; a GELU MLP; an unembedding with a bias; HF's additive `finfo.min` masks, its
//! position ids, loss, KV cache (keys after rotation) and `output_hidden_states`. No hooks.

use lens_core::model::{ModelError, ModelResult};
use lens_core::{HfConfig, ParallelConfig, ParallelFamily, Weights};
use tch::{Device, Kind, Tensor};

use crate::hf::attention::{self, Scores};
use crate::hf::decoder::{blocks_then_head, decoder_api, Part, RotaryDecoder};
use crate::hf::forward::{layer_norm, PassOutput};
use crate::hf::kv_cache::KvCache;
use crate::hf::llama::{rotary_cos_sin, rotate, LinearParams};
use crate::hf::mask::{self, AttentionMask};
use crate::hf::model::CheckedInputs;
use crate::hf::params::{
    find_parameter, layer_part, take_layer_norm, take_leaf, take_linear, LayerNormParams,
};
use crate::input;
use crate::tap::{BlockSite, LinSite, LnSite, Site, Tap};

/// One block (`transformer.h.{i}` / `model.layers.{i}`).
#[derive(Debug)]
pub struct ParallelLayerParams {
    /// `ln_1` / `input_layernorm`, read by attention and the MLP alike.
    pub norm: LayerNormParams,
    /// `q_proj`, `[heads * dh, d]`.
    pub q_proj: LinearParams,
    /// `k_proj`, `[kv heads * dh, d]`.
    pub k_proj: LinearParams,
    /// `v_proj`, `[kv heads * dh, d]`.
    pub v_proj: LinearParams,
    /// `out_proj` (GPT-J) / `dense` (Phi), `[d, heads * dh]`.
    pub out_proj: LinearParams,
    /// Phi's `q_layernorm`, `[dh]` each, with `qk_layernorm`.
    pub q_layernorm: Option<LayerNormParams>,
    /// Phi's `k_layernorm`.
    pub k_layernorm: Option<LayerNormParams>,
    /// `fc_in` / `fc1`, `[d_mlp, d]`.
    pub fc_in: LinearParams,
    /// `fc_out` / `fc2`, `[d, d_mlp]`.
    pub fc_out: LinearParams,
}

/// Every parameter of a `GPTJForCausalLM` or `PhiForCausalLM`, under HuggingFace's names.
#[derive(Debug)]
pub struct ParallelParams {
    family: ParallelFamily,
    /// The token embedding, `[vocab, d]`.
    pub embedding: Tensor,
    /// The blocks.
    pub layers: Vec<ParallelLayerParams>,
    /// `ln_f` / `final_layernorm`.
    pub final_norm: LayerNormParams,
    /// `lm_head.weight`, `[vocab, d]`; `None` while tied to the embedding.
    pub lm_head: Option<Tensor>,
    /// `lm_head.bias`, `[vocab]` (the head's own, tied or not).
    pub lm_head_bias: Tensor,
}

/// Where a family keeps its parameters: prefixes and module names.
struct Names {
    embedding: &'static str,
    layers: &'static str,
    norm: &'static str,
    attn: &'static str,
    out_proj: &'static str,
    fc_in: &'static str,
    fc_out: &'static str,
    final_norm: &'static str,
}

fn names(family: ParallelFamily) -> Names {
    match family {
        ParallelFamily::GptJ => Names {
            embedding: "transformer.wte.weight",
            layers: "transformer.h",
            norm: "ln_1",
            attn: "attn",
            out_proj: "out_proj",
            fc_in: "mlp.fc_in",
            fc_out: "mlp.fc_out",
            final_norm: "transformer.ln_f",
        },
        ParallelFamily::Phi => Names {
            embedding: "model.embed_tokens.weight",
            layers: "model.layers",
            norm: "input_layernorm",
            attn: "self_attn",
            out_proj: "dense",
            fc_in: "mlp.fc1",
            fc_out: "mlp.fc2",
            final_norm: "model.final_layernorm",
        },
    }
}

/// A LayerNorm's two parameters under `name.weight` and `name.bias`.
fn push_norm<'a>(out: &mut Vec<(String, &'a Tensor)>, name: String, ln: &'a LayerNormParams) {
    out.push((format!("{name}.weight"), &ln.weight));
    out.push((format!("{name}.bias"), &ln.bias));
}

impl ParallelParams {
    /// Takes every tensor a model with `config` needs out of `weights` (shapes checked),
    /// converted to `kind` on `device`, as leaves that require gradients. The buffers older
    /// GPT-J checkpoints carry (`attn.bias`, `attn.masked_bias`) are not read, as HuggingFace
    /// ignores them. Errors name the missing or mis-shaped tensor.
    pub fn from_weights(
        config: &ParallelConfig,
        weights: &mut Weights,
        device: Device,
        kind: Kind,
    ) -> ModelResult<Self> {
        let n = names(config.family);
        let (d, m, v) = (
            config.hidden_size,
            config.intermediate_size,
            config.vocab_size,
        );
        let dh = config.head_dim;
        let (q_width, kv_width) = (
            config.num_attention_heads * dh,
            config.num_key_value_heads * dh,
        );
        let attention_bias = config.family == ParallelFamily::Phi;
        let mut take = |name: &str, shape: &[i64]| take_leaf(weights, name, shape, device, kind);
        let mut layers = Vec::with_capacity(config.num_hidden_layers as usize);
        for l in 0..config.num_hidden_layers {
            let p = |s: &str| format!("{}.{l}.{s}", n.layers);
            let mut norm = |s: &str, width: i64| take_layer_norm(&mut take, &p(s), width);
            let layer_norm = norm(n.norm, d)?;
            let (q_layernorm, k_layernorm) = if config.qk_layernorm {
                let q = norm(&format!("{}.q_layernorm", n.attn), dh)?;
                (Some(q), Some(norm(&format!("{}.k_layernorm", n.attn), dh)?))
            } else {
                (None, None)
            };
            let mut linear = |s: &str, n_out: i64, n_in: i64, bias: bool| {
                take_linear(&mut take, &p(s), [n_out, n_in], bias)
            };
            let attn = |s: &str| format!("{}.{s}", n.attn);
            layers.push(ParallelLayerParams {
                norm: layer_norm,
                q_proj: linear(&attn("q_proj"), q_width, d, attention_bias)?,
                k_proj: linear(&attn("k_proj"), kv_width, d, attention_bias)?,
                v_proj: linear(&attn("v_proj"), kv_width, d, attention_bias)?,
                out_proj: linear(&attn(n.out_proj), d, q_width, attention_bias)?,
                q_layernorm,
                k_layernorm,
                fc_in: linear(n.fc_in, m, d, true)?,
                fc_out: linear(n.fc_out, d, m, true)?,
            });
        }
        let embedding = take(n.embedding, &[v, d])?;
        let final_norm = LayerNormParams {
            weight: take(&format!("{}.weight", n.final_norm), &[d])?,
            bias: take(&format!("{}.bias", n.final_norm), &[d])?,
        };
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(take("lm_head.weight", &[v, d])?)
        };
        let lm_head_bias = take("lm_head.bias", &[v])?;
        Ok(ParallelParams {
            family: config.family,
            embedding,
            layers,
            final_norm,
            lm_head,
            lm_head_bias,
        })
    }

    /// The unembedding, `[vocab, d]` (the embedding while tied).
    pub fn unembedding(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embedding)
    }

    /// Every parameter under its HuggingFace name (`lm_head.weight` only when untied), in
    /// `named_parameters()` order.
    pub fn named(&self) -> Vec<(String, &Tensor)> {
        let n = names(self.family);
        let mut out: Vec<(String, &Tensor)> = vec![(n.embedding.into(), &self.embedding)];

        for (l, layer) in self.layers.iter().enumerate() {
            let p = |s: &str| format!("{}.{l}.{s}", n.layers);
            let attn = |s: &str| p(&format!("{}.{s}", n.attn));
            let mut layer_out: Vec<(String, &Tensor)> = Vec::new();
            layer_out.push((p(&format!("{}.weight", n.norm)), &layer.norm.weight));
            layer_out.push((p(&format!("{}.bias", n.norm)), &layer.norm.bias));
            for (name, lin) in [
                (attn("q_proj"), &layer.q_proj),
                (attn("k_proj"), &layer.k_proj),
                (attn("v_proj"), &layer.v_proj),
                (attn(n.out_proj), &layer.out_proj),
                (p(n.fc_in), &layer.fc_in),
                (p(n.fc_out), &layer.fc_out),
            ] {
                layer_out.push((format!("{name}.weight"), &lin.weight));
                if let Some(bias) = &lin.bias {
                    layer_out.push((format!("{name}.bias"), bias));
                }
            }
            for (name, norm) in [
                (attn("q_layernorm"), &layer.q_layernorm),
                (attn("k_layernorm"), &layer.k_layernorm),
            ] {
                if let Some(norm) = norm {
                    push_norm(&mut layer_out, name, norm);
                }
            }
            out.extend(layer_out);
        }
        push_norm(&mut out, n.final_norm.into(), &self.final_norm);
        if let Some(w) = &self.lm_head {
            out.push(("lm_head.weight".into(), w));
        }
        out.push(("lm_head.bias".into(), &self.lm_head_bias));
        out
    }

    /// Gives the attention projection behind `name` (`...q_proj.bias`, `...out_proj.bias`, ...)
    /// a zero bias that requires gradients, when it has none; `false` for any other name.
    /// Weight processing uses this where it makes a missing bias non-zero (folding GPT-J's
    /// LayerNorm bias into the queries, keys and values).
    pub fn add_zero_bias(&mut self, name: &str) -> bool {
        let n = names(self.family);
        let Some((layer, rest)) = layer_part(name, n.layers) else {
            return false;
        };
        let Some(layer) = self.layers.get_mut(layer) else {
            return false;
        };
        let Some(projection) = rest
            .strip_prefix(&format!("{}.", n.attn))
            .and_then(|p| p.strip_suffix(".bias"))
        else {
            return false;
        };
        let linear = match projection {
            "q_proj" => &mut layer.q_proj,
            "k_proj" => &mut layer.k_proj,
            "v_proj" => &mut layer.v_proj,
            p if p == n.out_proj => &mut layer.out_proj,
            _ => return false,
        };
        linear.add_zero_bias();
        true
    }

    /// A parameter by its HuggingFace name, sharing storage (`lm_head.weight` is the embedding
    /// while tied). `None` for a name the model does not have.
    pub fn get(&self, name: &str) -> Option<Tensor> {
        find_parameter(self.named(), name, "lm_head.weight", self.unembedding())
    }
}

/// HuggingFace's `GPTJForCausalLM` or `PhiForCausalLM` (eager attention, eval mode).
pub struct ParallelForCausalLM {
    config: ParallelConfig,
    params: ParallelParams,
    /// The rotary inverse frequencies `[rotary_dim / 2]`, f32.
    inv_freq: Tensor,
}

impl std::fmt::Debug for ParallelForCausalLM {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelForCausalLM")
            .field("family", &self.config.family)
            .field("layers", &self.config.num_hidden_layers)
            .field("hidden_size", &self.config.hidden_size)
            .field("kind", &self.kind())
            .field("device", &self.device())
            .finish()
    }
}

impl ParallelForCausalLM {
    /// A model from a parsed config and its checkpoint's tensors (HuggingFace names).
    pub fn from_weights(
        config: ParallelConfig,
        mut weights: Weights,
        device: Device,
        kind: Kind,
    ) -> ModelResult<Self> {
        input::check_device(device)?;
        input::check_float_kind(kind)?;
        let params = ParallelParams::from_weights(&config, &mut weights, device, kind)?;
        let inv_freq =
            config
                .rope
                .scaling
                .inverse_frequencies(config.rope.theta, config.rotary_dim, device);
        Ok(ParallelForCausalLM {
            config,
            params,
            inv_freq,
        })
    }

    /// The rotary cosines and sines `[b, q, rotary_dim]` of `positions`, in `kind`, laid out
    /// for the family's pairs: each frequency twice in a row (GPT-J's adjacent pairs, its table
    /// `sin | cos` per position indexed and each half repeated) or the frequencies twice over
    /// (Phi's halves).
    fn rotary(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        match self.config.family {
            ParallelFamily::GptJ => {
                let angles =
                    positions.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq.view([1, 1, -1]);
                let twice = |t: Tensor| t.to_kind(kind).repeat_interleave_self_int(2, -1, None);
                (twice(angles.cos()), twice(angles.sin()))
            }
            ParallelFamily::Phi => rotary_cos_sin(&self.inv_freq, positions, kind),
        }
    }

    /// The rotary cosines and sines of `positions`: Phi's rotary module has sites (it takes the
    /// embeddings, for their dtype); GPT-J's table does not.
    fn rotary_sites<T: Tap>(
        &self,
        tap: &T,
        embeddings: &Tensor,
        positions: &Tensor,
    ) -> ModelResult<(Tensor, Tensor)> {
        match self.config.family {
            ParallelFamily::GptJ => Ok(self.rotary(positions, embeddings.kind())),
            ParallelFamily::Phi => {
                let rotary_in = tap.at(Site::RotaryIn, embeddings.shallow_clone())?;
                let (cos, sin) = self.rotary(positions, rotary_in.kind());
                Ok((tap.at(Site::RotaryCos, cos)?, tap.at(Site::RotarySin, sin)?))
            }
        }
    }

    /// One block: `(attn(ln(x)) + mlp(ln(x))) + x`, HF's order. The bridge's `ln1` (attention's
    /// input) and `ln2` (the MLP's) are the one LayerNorm, computed for each branch, as
    /// TransformerLens's HookedTransformer holds it twice; the values are HF's.
    #[allow(clippy::too_many_arguments)]
    fn block<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &ParallelLayerParams,
        x: Tensor,
        rotary: (&Tensor, &Tensor),
        mask: &AttentionMask,
        cache: Option<&mut KvCache>,
    ) -> ModelResult<Tensor> {
        let s = |site: BlockSite| Site::Block(l, site);
        let resid_pre = tap.at(s(BlockSite::In), x)?;
        let attended = self.attention(tap, l, layer, &resid_pre, rotary, mask, cache)?;
        let mlp_input = if tap.paths().use_hook_mlp_in {
            tap.at(s(BlockSite::MlpIn), resid_pre.copy())?
        } else {
            resid_pre.shallow_clone()
        };
        let normed = layer_norm(
            tap,
            |site| s(BlockSite::Ln2(site)),
            mlp_input,
            &layer.norm,
            self.config.layer_norm_eps,
        )?;
        let mlp_out = self.mlp(tap, l, layer, normed)?;
        tap.at(s(BlockSite::Out), attended + mlp_out + resid_pre)
    }

    /// The attention from the block's input `resid_pre` (its LayerNorm included): q, k, v,
    /// Phi's q/k norms, the rotations, the scores, the pattern and `z` each at their site.
    #[allow(clippy::too_many_arguments)]
    fn attention<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &ParallelLayerParams,
        resid_pre: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        mask: &AttentionMask,
        cache: Option<&mut KvCache>,
    ) -> ModelResult<Tensor> {
        let s = |site: BlockSite| Site::Block(l, site);
        let c = &self.config;
        let ln1 = |x: Tensor| {
            layer_norm(
                tap,
                |site| s(BlockSite::Ln1(site)),
                x,
                &layer.norm,
                c.layer_norm_eps,
            )
        };
        let projections = [
            (&layer.q_proj, c.num_attention_heads),
            (&layer.k_proj, c.num_key_value_heads),
            (&layer.v_proj, c.num_key_value_heads),
        ];
        let [q, k, v] = attention::separate_qkv(tap, l, resid_pre, ln1, projections, c.head_dim)?;
        // Phi's q/k LayerNorms over each head's vector, before the rotation; their sites see
        // `[b * p * h, dh]` rows, as the HookedTransformer's (the norm is the same per row).
        let head_norm =
            |x: Tensor, norm: Option<&LayerNormParams>, site: fn(LnSite) -> BlockSite| match norm {
                Some(norm) => {
                    let shape = x.size();
                    let rows = x.reshape([-1, c.head_dim]);
                    ModelResult::Ok(
                        layer_norm(tap, |ln| s(site(ln)), rows, norm, c.layer_norm_eps)?
                            .reshape(shape.as_slice()),
                    )
                }
                None => Ok(x),
            };
        let q = head_norm(q, layer.q_layernorm.as_ref(), BlockSite::QNorm)?;
        let k = head_norm(k, layer.k_layernorm.as_ref(), BlockSite::KNorm)?;
        // Phi's attention takes the rotary module's tables (sites of their own); GPT-J's looks
        // its table up itself.
        let (cos, sin) = match c.family {
            ParallelFamily::Phi => (
                tap.at(s(BlockSite::Cos), cos.shallow_clone())?,
                tap.at(s(BlockSite::Sin), sin.shallow_clone())?,
            ),
            ParallelFamily::GptJ => (cos.shallow_clone(), sin.shallow_clone()),
        };
        // Rotary over [b, h, p, dh]; the hooks see [b, p, h, dh].
        let rotate_part = |x: &Tensor| self.rotate_leading(&x.transpose(1, 2), &cos, &sin);
        let q = tap
            .at(s(BlockSite::RotQ), rotate_part(&q).transpose(1, 2))?
            .transpose(1, 2);
        let k = tap
            .at(s(BlockSite::RotK), rotate_part(&k).transpose(1, 2))?
            .transpose(1, 2);
        let scores = match c.family {
            ParallelFamily::GptJ => Scores::UpcastDivided,
            ParallelFamily::Phi => Scores::Scaled,
        };
        attention::attend(
            tap,
            l,
            (q, k, v.transpose(1, 2)),
            cache,
            mask,
            scores,
            resid_pre.kind(),
            &layer.out_proj,
        )
    }

    /// The rotation of the first `rotary_dim` dimensions of q or k `[b, h, p, dh]`, the rest
    /// passed through: GPT-J's `rotate_every_two` on adjacent pairs, Phi's `rotate_half`.
    fn rotate_leading(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let (dh, r) = (x.size()[3], self.config.rotary_dim);
        if r == 0 {
            return x.shallow_clone();
        }
        let x_rot = x.narrow(3, 0, r);
        let rotated = match self.config.family {
            ParallelFamily::GptJ => {
                let even = x_rot.slice(3, 0, r, 2);
                let odd = x_rot.slice(3, 1, r, 2);
                let every_two = Tensor::stack(&[-odd, even], -1).flatten(-2, -1);
                &x_rot * cos.unsqueeze(1) + every_two * sin.unsqueeze(1)
            }
            ParallelFamily::Phi => rotate(&x_rot, cos, sin),
        };
        if r == dh {
            rotated
        } else {
            Tensor::cat(&[rotated, x.narrow(3, r, dh - r)], -1)
        }
    }

    /// The MLP, `fc_out(act(fc_in(x)))`.
    fn mlp<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &ParallelLayerParams,
        x: Tensor,
    ) -> ModelResult<Tensor> {
        let s = |site: BlockSite| Site::Block(l, site);
        let x = tap.at(s(BlockSite::MlpCompIn), x)?;
        let x = tap.at(s(BlockSite::MlpFc(LinSite::In)), x)?;
        let pre = tap.at(s(BlockSite::MlpFc(LinSite::Out)), layer.fc_in.apply(&x))?;
        let post = tap.at(
            s(BlockSite::MlpProj(LinSite::In)),
            self.config.hidden_act.apply(&pre),
        )?;
        let out = tap.at(
            s(BlockSite::MlpProj(LinSite::Out)),
            layer.fc_out.apply(&post),
        )?;
        tap.at(s(BlockSite::MlpCompOut), out)
    }
}

decoder_api!(
    ParallelForCausalLM,
    ParallelConfig,
    ParallelParams,
    embedding,
    parallel_config
);

impl RotaryDecoder for ParallelForCausalLM {
    fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }

    fn device(&self) -> Device {
        ParallelForCausalLM::device(self)
    }

    fn eos_token_id(&self) -> Option<i64> {
        self.config.eos_token_id
    }

    /// GPT-J's sinusoid table has `n_positions` rows (HF fails past them); Phi has no limit.
    fn max_positions(&self) -> i64 {
        match self.config.family {
            ParallelFamily::GptJ => self.config.max_position_embeddings,
            ParallelFamily::Phi => i64::MAX,
        }
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
            Tensor::embedding(&self.params.embedding, &ids, -1, false, false),
        )?;
        let (cos, sin) = self.rotary_sites(tap, &x, &inputs.positions)?;
        let n_layers = self.params.layers.len();
        let block = |l: usize, x: Tensor| {
            let layer = &self.params.layers[l];
            self.block(tap, l, layer, x, (&cos, &sin), &mask, cache.as_deref_mut())
        };
        let eps = self.config.layer_norm_eps;
        let final_norm =
            |x: Tensor| layer_norm(tap, Site::LnFinal, x, &self.params.final_norm, eps);
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
        &self.params.embedding
    }

    fn unembed(&self, x: &Tensor) -> Tensor {
        x.linear(self.params.unembedding(), Some(&self.params.lm_head_bias))
    }

    fn run_part<T: Tap>(&self, tap: &T, part: Part<'_>, x: &Tensor) -> Option<ModelResult<Tensor>> {
        Some(match part {
            Part::LnFinal => layer_norm(
                tap,
                Site::LnFinal,
                x.shallow_clone(),
                &self.params.final_norm,
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
impl ParallelForCausalLM {
    /// One part of block `l` (`""` for the whole block), or `None` for an unknown part.
    fn run_block_component<T: Tap>(
        &self,
        tap: &T,
        l: usize,
        layer: &ParallelLayerParams,
        part: &str,
        x: &Tensor,
    ) -> Option<ModelResult<Tensor>> {
        let s = |site: BlockSite| Site::Block(l, site);
        let eps = self.config.layer_norm_eps;
        let (batch, len) = (x.size()[0], x.size()[1]);
        let rotary_and_mask = || {
            let positions = mask::arange_positions(batch, len, 0, x.device());
            let (cos, sin) = self.rotary(&positions, x.kind());
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
            "ln1" | "ln2" => {
                let site = if part == "ln1" {
                    BlockSite::Ln1 as fn(LnSite) -> BlockSite
                } else {
                    BlockSite::Ln2
                };
                layer_norm(tap, |ln| s(site(ln)), x.shallow_clone(), &layer.norm, eps)
            }
            "mlp" => self.mlp(tap, l, layer, x.shallow_clone()),
            _ => return None,
        })
    }
}

/// The GPT-J or Phi config of `config`, or [`ModelError::Unsupported`].
pub(crate) fn parallel_config(config: &HfConfig) -> ModelResult<ParallelConfig> {
    config.as_parallel().cloned().ok_or_else(|| {
        ModelError::Unsupported(format!(
            "architecture {} is neither GPT-J nor Phi",
            config.architecture()
        ))
    })
}
