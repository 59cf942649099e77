//! GPT-2's forward pass, written once, HuggingFace's `GPT2LMHeadModel` operation by operation,
//! with a [`Tap`] at every site. The raw HF model runs it with [`crate::tap::NoTap`]; the
//! TransformerBridge with its hook points.

use lens_core::model::{ModelError, ModelResult};
use lens_core::Gpt2Config;
use tch::{Kind, Tensor};

use crate::hf::kv_cache::KvCache;
use crate::hf::mask::{self, AttentionMask};
use crate::hf::params::{BlockParams, Conv1dParams, Gpt2Params, LayerNormParams};
use crate::tap::{BlockSite, LinSite, LnSite, Site, Tap};

/// The inputs of one pass.
pub(crate) struct PassInput<'a> {
    /// `[b, q]` int64 token ids on the model's device.
    pub input_ids: &'a Tensor,
    /// `[b, q]` int64 position ids.
    pub position_ids: &'a Tensor,
    /// `[b, past + q]`, 1 for real tokens and 0 for padding; `None`: every token is real.
    pub attention_mask: Option<&'a Tensor>,
    /// Keys and values of earlier positions; the new ones are appended.
    pub cache: Option<&'a mut KvCache>,
    /// Stop before this block and return the residual stream.
    pub stop_at_layer: Option<usize>,
    /// Collect HuggingFace's `hidden_states`.
    pub output_hidden_states: bool,
}

/// The results of one pass.
pub(crate) struct PassOutput {
    /// Logits `[b, q, vocab]` (absent when the pass stopped early).
    pub logits: Option<Tensor>,
    /// The residual stream before block `stop_at_layer`, when the pass stopped early.
    pub residual: Option<Tensor>,
    /// HuggingFace's `hidden_states`: the input of every block, then `ln_f`'s output.
    pub hidden_states: Vec<Tensor>,
}

/// `Conv1D.forward`: `addmm(bias, x.view(-1, in), weight).view(.., out)`.
pub(crate) fn conv1d(x: &Tensor, c: &Conv1dParams) -> Tensor {
    conv1d_parts(x, &c.weight, &c.bias)
}

fn conv1d_parts(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Tensor {
    let mut shape = x.size();
    let n_in = shape.pop().unwrap_or(1);
    shape.push(weight.size()[1]);
    bias.addmm(&x.reshape([-1, n_in]), weight)
        .reshape(shape.as_slice())
}

/// A LayerNorm. HuggingFace's fused `layer_norm` computes the output unless a hook on
/// `hook_scale` or `hook_normalized` edits its value (or has a backward hook, which needs those
/// values in the graph): then the output is `hook_normalized * w + b`, from TransformerLens's
/// decomposed form (centre, `hook_scale(sqrt(mean(x^2) + eps))`, `hook_normalized(x / scale)`, in
/// f32 for half-precision models, cast back). Hooks that only read see the decomposed values and
/// leave the output exactly as with no hook at all.
pub(crate) fn layer_norm<T: Tap>(
    tap: &T,
    site: impl Fn(LnSite) -> Site,
    x: Tensor,
    params: &LayerNormParams,
    eps: f64,
) -> ModelResult<Tensor> {
    let x = tap.at(site(LnSite::In), x)?;
    let fused = |x: &Tensor| {
        let d = x.size().last().copied().unwrap_or(0);
        x.layer_norm([d], Some(&params.weight), Some(&params.bias), eps, true)
    };
    let out = if tap.hooked(site(LnSite::Scale)) || tap.hooked(site(LnSite::Normalized)) {
        let kind = x.kind();
        let xf = match kind {
            Kind::Half | Kind::BFloat16 => x.to_kind(Kind::Float),
            _ => x.shallow_clone(),
        };
        let centred = &xf - xf.mean_dim(-1, true, xf.kind());
        let scale = (centred.square().mean_dim(-1, true, xf.kind()) + eps).sqrt();
        let scale = tap.at_noting_edits(site(LnSite::Scale), scale)?;
        let normalized =
            tap.at_noting_edits(site(LnSite::Normalized), centred / &scale.activation)?;
        if scale.untouched && normalized.untouched {
            fused(&x)
        } else {
            (normalized.activation * &params.weight + &params.bias).to_kind(kind)
        }
    } else {
        fused(&x)
    };
    tap.at(site(LnSite::Out), out)
}

/// The whole model: embeddings, blocks, `ln_f`, `lm_head`.
pub(crate) fn forward<T: Tap>(
    cfg: &Gpt2Config,
    p: &Gpt2Params,
    tap: &T,
    input: PassInput<'_>,
) -> ModelResult<PassOutput> {
    let PassInput {
        input_ids,
        position_ids,
        attention_mask,
        mut cache,
        stop_at_layer,
        output_hidden_states,
    } = input;
    let past_len = cache.as_ref().map_or(0, |c| c.len());
    let ids = tap.at(Site::EmbedIn, input_ids.shallow_clone())?;
    let embeds = tap.at(
        Site::EmbedOut,
        Tensor::embedding(&p.wte, &ids, -1, false, false),
    )?;
    let positions = tap.at(Site::PosEmbedIn, position_ids.shallow_clone())?;
    let pos_embeds = tap.at(
        Site::PosEmbedOut,
        Tensor::embedding(&p.wpe, &positions, -1, false, false),
    )?;
    let mut hidden = embeds + pos_embeds;

    let q_len = input_ids.size()[1];
    let allowed = AttentionMask::new(
        q_len,
        past_len + q_len,
        past_len,
        attention_mask,
        hidden.device(),
    );
    let n_layer = p.h.len();
    let stop = stop_at_layer.unwrap_or(n_layer).min(n_layer);
    let mut hidden_states = Vec::new();
    for (l, bp) in p.h.iter().enumerate().take(stop) {
        if output_hidden_states {
            hidden_states.push(hidden.shallow_clone());
        }
        hidden = block(cfg, l, bp, tap, hidden, &allowed, cache.as_deref_mut())?;
    }
    if stop < n_layer {
        return Ok(PassOutput {
            logits: None,
            residual: Some(hidden),
            hidden_states,
        });
    }
    let normed = layer_norm(tap, Site::LnFinal, hidden, &p.ln_f, cfg.layer_norm_epsilon)?;
    if output_hidden_states {
        hidden_states.push(normed.shallow_clone());
    }
    let x = tap.at(Site::UnembedIn, normed)?;
    let logits = tap.at(Site::UnembedOut, unembed(p, &x))?;
    Ok(PassOutput {
        logits: Some(logits),
        residual: None,
        hidden_states,
    })
}

/// `lm_head`, with the bias the bridge adds (`b_U`) inside the same product (`addmm`: no second
/// pass over the `[b, p, vocab]` logits to add it), or left out while it is zero and needs no
/// gradient (then even the copy of the bias into the output is saved; adding zeros changes no
/// bit).
fn unembed(p: &Gpt2Params, x: &Tensor) -> Tensor {
    let bias = p
        .lm_head_bias
        .as_ref()
        .filter(|bias| !p.unembed_bias_is_inert(bias));
    x.linear(p.unembed_weight(), bias)
}

/// One `GPT2Block`: `x + attn(ln_1(x))`, then `+ mlp(ln_2(.))`.
fn block<T: Tap>(
    cfg: &Gpt2Config,
    l: usize,
    bp: &BlockParams,
    tap: &T,
    x: Tensor,
    allowed: &AttentionMask,
    cache: Option<&mut KvCache>,
) -> ModelResult<Tensor> {
    let s = |site: BlockSite| Site::Block(l, site);
    let resid_pre = tap.at(s(BlockSite::In), x)?;
    let attn_out = attention(cfg, l, bp, tap, &resid_pre, allowed, cache)?;
    let resid_mid = tap.at(s(BlockSite::ResidMid), attn_out + &resid_pre)?;
    let mlp_input = if tap.paths().use_hook_mlp_in {
        tap.at(s(BlockSite::MlpIn), resid_mid.copy())?
    } else {
        resid_mid.shallow_clone()
    };
    let normed = layer_norm(
        tap,
        |site| s(BlockSite::Ln2(site)),
        mlp_input,
        &bp.ln_2,
        cfg.layer_norm_epsilon,
    )?;
    let mlp_out = mlp(cfg, l, bp, tap, normed)?;
    tap.at(s(BlockSite::Out), resid_mid + mlp_out)
}

/// `GPT2MLP`: `c_proj(act(c_fc(x)))`.
fn mlp<T: Tap>(
    cfg: &Gpt2Config,
    l: usize,
    bp: &BlockParams,
    tap: &T,
    x: Tensor,
) -> ModelResult<Tensor> {
    let s = |site: BlockSite| Site::Block(l, site);
    let x = tap.at(s(BlockSite::MlpCompIn), x)?;
    let x = tap.at(s(BlockSite::MlpFc(LinSite::In)), x)?;
    let pre = tap.at(s(BlockSite::MlpFc(LinSite::Out)), conv1d(&x, &bp.c_fc))?;
    let post = tap.at(
        s(BlockSite::MlpProj(LinSite::In)),
        cfg.activation_function.apply(&pre),
    )?;
    let out = tap.at(
        s(BlockSite::MlpProj(LinSite::Out)),
        conv1d(&post, &bp.mlp_c_proj),
    )?;
    tap.at(s(BlockSite::MlpCompOut), out)
}

/// `[b, p, d]` -> `[b, p, h, dh]`.
fn split_heads(x: &Tensor, n_head: i64) -> Tensor {
    let mut shape = x.size();
    let d = shape.pop().unwrap_or(0);
    shape.extend([n_head, d / n_head]);
    x.reshape(shape.as_slice())
}

/// Per-head projection `x [b, p, h, d] . W [h, d, dh] + b [h, dh]` (TransformerLens's
/// `complex_attn_linear`), for the per-head input paths of every architecture.
pub(crate) fn project_per_head(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
    let projected = Tensor::einsum("bphd,hdk->bphk", &[x, w], None::<&[i64]>);
    match b {
        Some(b) => projected + b,
        None => projected,
    }
}

/// Queries, keys and values `[b, p, h, dh]` each, after their hooks.
fn qkv<T: Tap>(
    cfg: &Gpt2Config,
    l: usize,
    bp: &BlockParams,
    tap: &T,
    resid_pre: &Tensor,
) -> ModelResult<[Tensor; 3]> {
    let s = |site: BlockSite| Site::Block(l, site);
    let (d, h) = (cfg.n_embd, cfg.n_head);
    let eps = cfg.layer_norm_epsilon;
    let ln1 = |x: Tensor| layer_norm(tap, |site| s(BlockSite::Ln1(site)), x, &bp.ln_1, eps);
    let slice_w = |i: i64| bp.c_attn.weight.narrow(1, i * d, d);
    let slice_b = |i: i64| bp.c_attn.bias.narrow(0, i * d, d);
    let paths = tap.paths();
    let [q, k, v] = if paths.per_head_inputs() {
        // TransformerLens's per-head inputs: the pre-ln1 residual repeated along a head axis,
        // hooked, normalised per head, projected per head.
        let per_head = || resid_pre.unsqueeze(2).repeat([1, 1, h, 1]);
        let [q_src, k_src, v_src] = if paths.use_split_qkv_input {
            [
                tap.at(s(BlockSite::QInput), per_head())?,
                tap.at(s(BlockSite::KInput), per_head())?,
                tap.at(s(BlockSite::VInput), per_head())?,
            ]
        } else {
            let shared = tap.at(s(BlockSite::AttnInput), per_head())?;
            [shared.shallow_clone(), shared.shallow_clone(), shared]
        };
        let head_w = |i: i64| slice_w(i).view([d, h, d / h]).permute([1, 0, 2]);
        let head_b = |i: i64| slice_b(i).view([h, d / h]);
        let mut out = Vec::with_capacity(3);
        for (i, (src, lin)) in [
            (q_src, BlockSite::Q as fn(LinSite) -> BlockSite),
            (k_src, BlockSite::K),
            (v_src, BlockSite::V),
        ]
        .into_iter()
        .enumerate()
        {
            let x = tap.at(s(lin(LinSite::In)), ln1(src)?)?;
            out.push(project_per_head(
                &x,
                &head_w(i as i64),
                Some(&head_b(i as i64)),
            ));
        }
        let [q, k, v]: [Tensor; 3] = out
            .try_into()
            .map_err(|_| ModelError::InvalidInput("three projections".into()))?;
        [q, k, v]
    } else {
        let x = ln1(resid_pre.shallow_clone())?;
        let x = tap.at(s(BlockSite::AttnIn), x)?;
        let x = tap.at(s(BlockSite::Qkv(LinSite::In)), x)?;
        // The bridge's q, k and v each have a hookable input. While no hook edits them (the
        // usual case, also when hooks only read), c_attn runs fused, as in HuggingFace; an
        // edit makes q, k and v each go through its own slice of c_attn, from its own input.
        let q_in = tap.at_noting_edits(s(BlockSite::Q(LinSite::In)), x.shallow_clone())?;
        let k_in = tap.at_noting_edits(s(BlockSite::K(LinSite::In)), x.shallow_clone())?;
        let v_in = tap.at_noting_edits(s(BlockSite::V(LinSite::In)), x.shallow_clone())?;
        let fused = if q_in.untouched && k_in.untouched && v_in.untouched {
            conv1d(&x, &bp.c_attn)
        } else {
            let q = conv1d_parts(&q_in.activation, &slice_w(0), &slice_b(0));
            let k = conv1d_parts(&k_in.activation, &slice_w(1), &slice_b(1));
            let v = conv1d_parts(&v_in.activation, &slice_w(2), &slice_b(2));
            Tensor::cat(&[q, k, v], -1)
        };
        let fused = tap.at(s(BlockSite::Qkv(LinSite::Out)), fused)?;
        let parts = fused.split(d, -1);
        let [q, k, v]: [Tensor; 3] = parts
            .try_into()
            .map_err(|_| ModelError::InvalidInput("c_attn output is not [.., 3 d]".into()))?;
        [split_heads(&q, h), split_heads(&k, h), split_heads(&v, h)]
    };
    Ok([
        tap.at(s(BlockSite::Q(LinSite::Out)), q)?,
        tap.at(s(BlockSite::K(LinSite::Out)), k)?,
        tap.at(s(BlockSite::V(LinSite::Out)), v)?,
    ])
}

/// `GPT2Attention` with eager attention.
fn attention<T: Tap>(
    cfg: &Gpt2Config,
    l: usize,
    bp: &BlockParams,
    tap: &T,
    resid_pre: &Tensor,
    allowed: &AttentionMask,
    cache: Option<&mut KvCache>,
) -> ModelResult<Tensor> {
    let s = |site: BlockSite| Site::Block(l, site);
    let (d, h) = (cfg.n_embd, cfg.n_head);
    let dh = d / h;
    let [q, k, v] = qkv(cfg, l, bp, tap, resid_pre)?;
    // [b, p, h, dh] -> [b, h, p, dh]
    let (query, key, value) = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2));
    let (key, value) = match cache {
        Some(cache) => cache.append(l, key, value),
        None => (key, value),
    };
    let style = tap.mask_style();
    let model_kind = value.kind();
    let scores = if cfg.reorder_and_upcast_attn {
        // `_upcast_and_reordered_attn`: scores in f32 with the scale applied in the product.
        let mut scale = 1.0;
        if cfg.scale_attn_weights {
            scale /= (dh as f64).sqrt();
        }
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (l + 1) as f64;
        }
        query
            .to_kind(Kind::Float)
            .matmul(&key.to_kind(Kind::Float).transpose(-1, -2))
            * scale
    } else {
        let mut scores = query.matmul(&key.transpose(-1, -2));
        if cfg.scale_attn_weights {
            scores = &scores / (dh as f64).sqrt();
        }
        if cfg.scale_attn_by_inverse_layer_idx {
            scores = &scores / (l + 1) as f64;
        }
        scores
    };
    let scores = tap.at(
        s(BlockSite::AttnScores),
        mask::apply(scores, allowed, style, model_kind),
    )?;
    let pattern = mask::softmax(&scores, allowed, style).to_kind(model_kind);
    let pattern = tap.at(s(BlockSite::Pattern), pattern)?;
    // [b, h, q, k] . [b, h, k, dh] -> [b, h, q, dh] -> [b, q, h, dh]
    let z = pattern.matmul(&value).transpose(1, 2).contiguous();
    let z = tap.at(s(BlockSite::O(LinSite::In)), z)?;
    let out = if tap.paths().use_attn_result {
        let w_o = bp.attn_c_proj.weight.view([h, dh, d]);
        let result = Tensor::einsum("bphk,hkd->bphd", &[&z, &w_o], None::<&[i64]>);
        let result = tap.at(s(BlockSite::Result), result)?;
        result.sum_dim_intlist([2i64].as_slice(), false, result.kind()) + &bp.attn_c_proj.bias
    } else {
        let mut shape = z.size();
        shape.truncate(2);
        shape.push(d);
        conv1d(&z.reshape(shape.as_slice()), &bp.attn_c_proj)
    };
    let out = tap.at(s(BlockSite::O(LinSite::Out)), out)?;
    let out = tap.at(s(BlockSite::HiddenStates), out)?;
    tap.at(s(BlockSite::AttnOut), out)
}

/// The components a model runs one at a time, for `n_layer` blocks: `embed`, `pos_embed` where
/// positions are learned, each block and its `ln1`, `attn`, `ln2` and `mlp`, `ln_final`,
/// `unembed`.
pub(crate) fn component_names(n_layer: usize, learned_positions: bool) -> Vec<String> {
    let mut names = vec!["embed".to_owned()];
    if learned_positions {
        names.push("pos_embed".to_owned());
    }
    for l in 0..n_layer {
        for part in ["", ".ln1", ".attn", ".ln2", ".mlp"] {
            names.push(format!("blocks.{l}{part}"));
        }
    }
    names.extend(["ln_final".to_owned(), "unembed".to_owned()]);
    names
}

/// `blocks.{l}` or `blocks.{l}.{part}` as `(l, part)` (`part` empty for the whole block).
pub(crate) fn block_component(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("blocks.")?;
    let (layer, part) = rest.split_once('.').unwrap_or((rest, ""));
    Some((layer.parse().ok()?, part))
}

/// Runs one component on its own: `embed` on token ids, `pos_embed` on position ids,
/// `blocks.{l}` (the whole block), `blocks.{l}.attn` (from the residual: ln_1 and attention, with
/// a causal mask), `blocks.{l}.ln1` / `ln2` / `mlp`, `ln_final` and `unembed` on hidden states
/// `[b, p, d]`.
pub(crate) fn component<T: Tap>(
    cfg: &Gpt2Config,
    p: &Gpt2Params,
    tap: &T,
    name: &str,
    x: &Tensor,
) -> ModelResult<Tensor> {
    let eps = cfg.layer_norm_epsilon;
    let causal = || {
        let len = x.size()[1];
        AttentionMask::new(len, len, 0, None, x.device())
    };
    match name {
        "embed" => {
            let ids = tap.at(Site::EmbedIn, x.shallow_clone())?;
            tap.at(
                Site::EmbedOut,
                Tensor::embedding(&p.wte, &ids, -1, false, false),
            )
        }
        "pos_embed" => {
            let positions = tap.at(Site::PosEmbedIn, x.shallow_clone())?;
            tap.at(
                Site::PosEmbedOut,
                Tensor::embedding(&p.wpe, &positions, -1, false, false),
            )
        }
        "ln_final" => layer_norm(tap, Site::LnFinal, x.shallow_clone(), &p.ln_f, eps),
        "unembed" => {
            let x = tap.at(Site::UnembedIn, x.shallow_clone())?;
            tap.at(Site::UnembedOut, unembed(p, &x))
        }
        _ => {
            let unknown = || {
                ModelError::InvalidInput(format!(
                    "unknown component '{name}'; components are {:?}",
                    component_names(p.h.len(), true)
                ))
            };
            let (l, part) = block_component(name).ok_or_else(unknown)?;
            let bp = p.h.get(l).ok_or_else(unknown)?;
            let s = |site: BlockSite| Site::Block(l, site);
            match part {
                "" => block(cfg, l, bp, tap, x.shallow_clone(), &causal(), None),
                "attn" => attention(cfg, l, bp, tap, x, &causal(), None),
                "ln1" => layer_norm(
                    tap,
                    |site| s(BlockSite::Ln1(site)),
                    x.shallow_clone(),
                    &bp.ln_1,
                    eps,
                ),
                "ln2" => layer_norm(
                    tap,
                    |site| s(BlockSite::Ln2(site)),
                    x.shallow_clone(),
                    &bp.ln_2,
                    eps,
                ),
                "mlp" => mlp(cfg, l, bp, tap, x.shallow_clone()),
                _ => Err(unknown()),
            }
        }
    }
}
