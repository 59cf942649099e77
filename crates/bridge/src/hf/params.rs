//! GPT-2's parameters under their HuggingFace names and in HuggingFace's layouts: `Conv1D`
//! weights are `[in, out]`, `attn.c_attn` fuses q, k and v into `[d, 3d]`, and `lm_head` is
//! `wte` itself when the embeddings are tied.

use lens_core::model::{ModelError, ModelResult};
use lens_core::{Gpt2Config, Weights};
use std::sync::Mutex;

use tch::{Device, Kind, Tensor};

use crate::hf::llama::LinearParams;

/// Takes `name` out of `weights` (its shape checked), converted to `kind` on `device`, as a
/// leaf that requires gradients: how every family loads its parameters.
pub(crate) fn take_leaf(
    weights: &mut Weights,
    name: &str,
    shape: &[i64],
    device: Device,
    kind: Kind,
) -> ModelResult<Tensor> {
    let t = weights.take_shaped(name, shape)?;
    Ok(t.f_to_device(device)?
        .f_to_kind(kind)?
        .detach()
        .set_requires_grad(true))
}

/// A LayerNorm's `{name}.weight` and `{name}.bias`, `[width]` each, loaded by `take` (a
/// family's [`take_leaf`] on its weights).
pub(crate) fn take_layer_norm(
    take: &mut impl FnMut(&str, &[i64]) -> ModelResult<Tensor>,
    name: &str,
    width: i64,
) -> ModelResult<LayerNormParams> {
    Ok(LayerNormParams {
        weight: take(&format!("{name}.weight"), &[width])?,
        bias: take(&format!("{name}.bias"), &[width])?,
    })
}

/// A `torch.nn.Linear`'s `{name}.weight` `[n_out, n_in]` and, with `bias`, its `{name}.bias`
/// `[n_out]`, loaded by `take`.
pub(crate) fn take_linear(
    take: &mut impl FnMut(&str, &[i64]) -> ModelResult<Tensor>,
    name: &str,
    [n_out, n_in]: [i64; 2],
    bias: bool,
) -> ModelResult<LinearParams> {
    Ok(LinearParams {
        weight: take(&format!("{name}.weight"), &[n_out, n_in])?,
        bias: if bias {
            Some(take(&format!("{name}.bias"), &[n_out])?)
        } else {
            None
        },
    })
}

/// The parameter called `name` among `named` (a family's `named()`), sharing storage; the
/// unembedding `unembedding` for `lm_head_name` (the embedding itself while tied). `None` for a
/// name the model does not have.
pub(crate) fn find_parameter(
    named: Vec<(String, &Tensor)>,
    name: &str,
    lm_head_name: &str,
    unembedding: &Tensor,
) -> Option<Tensor> {
    if name == lm_head_name {
        return Some(unembedding.shallow_clone());
    }
    named
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t.shallow_clone())
}

/// `name` under `prefix` (`model.layers`) as its layer index and the rest
/// (`model.layers.3.self_attn.q_proj.bias` is `(3, "self_attn.q_proj.bias")`).
pub(crate) fn layer_part<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('.')?;
    let (layer, part) = rest.split_once('.')?;
    Some((layer.parse().ok()?, part))
}

/// A LayerNorm's weight and bias, `[d]` each.
#[derive(Debug)]
pub struct LayerNormParams {
    /// `weight`.
    pub weight: Tensor,
    /// `bias`.
    pub bias: Tensor,
}

/// A `Conv1D`: `y = x . weight + bias` with `weight` `[in, out]`.
#[derive(Debug)]
pub struct Conv1dParams {
    /// `weight`, `[in, out]`.
    pub weight: Tensor,
    /// `bias`, `[out]`.
    pub bias: Tensor,
}

/// One `GPT2Block` (`transformer.h.{i}`).
#[derive(Debug)]
pub struct BlockParams {
    /// `ln_1`.
    pub ln_1: LayerNormParams,
    /// `attn.c_attn`, `[d, 3d]` (q, k, v in that order along the output axis).
    pub c_attn: Conv1dParams,
    /// `attn.c_proj`, `[d, d]`.
    pub attn_c_proj: Conv1dParams,
    /// `ln_2`.
    pub ln_2: LayerNormParams,
    /// `mlp.c_fc`, `[d, d_mlp]`.
    pub c_fc: Conv1dParams,
    /// `mlp.c_proj`, `[d_mlp, d]`.
    pub mlp_c_proj: Conv1dParams,
}

/// Every parameter of a `GPT2LMHeadModel`.
#[derive(Debug)]
pub struct Gpt2Params {
    /// `transformer.wte.weight`, `[vocab, d]`.
    pub wte: Tensor,
    /// `transformer.wpe.weight`, `[n_positions, d]`.
    pub wpe: Tensor,
    /// `transformer.h`.
    pub h: Vec<BlockParams>,
    /// `transformer.ln_f`.
    pub ln_f: LayerNormParams,
    /// `lm_head.weight`, `[vocab, d]`; `None` while tied to `wte`.
    pub lm_head: Option<Tensor>,
    /// A bias of the unembedding, `[vocab]`. HF's GPT-2 has none; the TransformerBridge adds a
    /// zero one (TransformerLens's `b_U`) that weight processing may change.
    pub lm_head_bias: Option<Tensor>,
    /// The bias tensor last found all zero, and its storage's version then.
    zero_bias_seen: Mutex<Option<(Tensor, i64)>>,
}

impl Gpt2Params {
    /// Takes every tensor a `GPT2LMHeadModel` with `config` needs out of `weights`, checking
    /// shapes, converted to `kind` on `device`, as leaves that require gradients.
    ///
    /// Errors name the missing or mis-shaped tensor.
    pub fn from_weights(
        config: &Gpt2Config,
        weights: &mut Weights,
        device: Device,
        kind: Kind,
    ) -> ModelResult<Self> {
        let (d, m, v) = (config.n_embd, config.d_mlp(), config.vocab_size);
        let mut take = |name: &str, shape: &[i64]| take_leaf(weights, name, shape, device, kind);
        let wte = take("transformer.wte.weight", &[v, d])?;
        let wpe = take("transformer.wpe.weight", &[config.n_positions, d])?;
        let mut h = Vec::with_capacity(config.n_layer as usize);
        for l in 0..config.n_layer {
            let p = |s: &str| format!("transformer.h.{l}.{s}");
            let mut ln = |s: &str| take_layer_norm(&mut take, &p(s), d);
            let ln_1 = ln("ln_1")?;
            let ln_2 = ln("ln_2")?;
            let mut conv = |s: &str, n_in: i64, n_out: i64| -> ModelResult<Conv1dParams> {
                Ok(Conv1dParams {
                    weight: take(&p(&format!("{s}.weight")), &[n_in, n_out])?,
                    bias: take(&p(&format!("{s}.bias")), &[n_out])?,
                })
            };
            h.push(BlockParams {
                ln_1,
                c_attn: conv("attn.c_attn", d, 3 * d)?,
                attn_c_proj: conv("attn.c_proj", d, d)?,
                ln_2,
                c_fc: conv("mlp.c_fc", d, m)?,
                mlp_c_proj: conv("mlp.c_proj", m, d)?,
            });
        }
        let ln_f = LayerNormParams {
            weight: take("transformer.ln_f.weight", &[d])?,
            bias: take("transformer.ln_f.bias", &[d])?,
        };
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(take("lm_head.weight", &[v, d])?)
        };
        Ok(Gpt2Params {
            wte,
            wpe,
            h,
            ln_f,
            lm_head,
            lm_head_bias: None,
            zero_bias_seen: Mutex::new(None),
        })
    }

    /// Whether adding `bias` (the unembedding bias) to the logits would change nothing: it is
    /// all zero and no gradient is being recorded for it. Zero is checked once per tensor and
    /// version of its storage, so a write through a TransformerLens view (in place) or a new
    /// tensor is seen. The zero `b_U` the bridge adds then costs no pass over the logits.
    pub(crate) fn unembed_bias_is_inert(&self, bias: &Tensor) -> bool {
        if bias.requires_grad() && hookpoint::grad_enabled() {
            return false;
        }
        let Some(version) = hookpoint::tensor_version(bias) else {
            return false;
        };
        let mut seen = self
            .zero_bias_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((tensor, at)) = seen.as_ref() {
            if *at == version && tensor.is_set_to(bias) {
                return true;
            }
        }
        let zero = i64::try_from(bias.count_nonzero(None::<i64>)).is_ok_and(|n| n == 0);
        *seen = zero.then(|| (bias.shallow_clone(), version));
        zero
    }

    /// The unembedding matrix `[vocab, d]`: `lm_head.weight`, or `wte` while tied.
    pub fn unembed_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.wte)
    }

    /// Whether `lm_head` is `wte`.
    pub fn is_tied(&self) -> bool {
        self.lm_head.is_none()
    }

    /// Every parameter with its HuggingFace name (`lm_head.weight` only when untied; the
    /// bridge's `lm_head.bias` when present), in `named_parameters()` order.
    pub fn named(&self) -> Vec<(String, &Tensor)> {
        let mut out: Vec<(String, &Tensor)> = vec![
            ("transformer.wte.weight".into(), &self.wte),
            ("transformer.wpe.weight".into(), &self.wpe),
        ];
        for (l, b) in self.h.iter().enumerate() {
            let p = |s: &str| format!("transformer.h.{l}.{s}");
            out.push((p("ln_1.weight"), &b.ln_1.weight));
            out.push((p("ln_1.bias"), &b.ln_1.bias));
            out.push((p("attn.c_attn.weight"), &b.c_attn.weight));
            out.push((p("attn.c_attn.bias"), &b.c_attn.bias));
            out.push((p("attn.c_proj.weight"), &b.attn_c_proj.weight));
            out.push((p("attn.c_proj.bias"), &b.attn_c_proj.bias));
            out.push((p("ln_2.weight"), &b.ln_2.weight));
            out.push((p("ln_2.bias"), &b.ln_2.bias));
            out.push((p("mlp.c_fc.weight"), &b.c_fc.weight));
            out.push((p("mlp.c_fc.bias"), &b.c_fc.bias));
            out.push((p("mlp.c_proj.weight"), &b.mlp_c_proj.weight));
            out.push((p("mlp.c_proj.bias"), &b.mlp_c_proj.bias));
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

    /// The parameter called `name` (a HuggingFace name), sharing storage with the model's.
    pub fn get(&self, name: &str) -> ModelResult<Tensor> {
        if name == "lm_head.weight" {
            return Ok(self.unembed_weight().shallow_clone());
        }
        self.named()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
            .ok_or_else(|| {
                ModelError::InvalidInput(format!(
                    "'{name}' is not a parameter of this GPT2LMHeadModel"
                ))
            })
    }

    /// The floating-point kind of the parameters.
    pub fn kind(&self) -> Kind {
        self.wte.kind()
    }

    /// The device of the parameters.
    pub fn device(&self) -> Device {
        self.wte.device()
    }
}
