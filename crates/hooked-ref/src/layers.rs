//! The computations of one block, each activation passed through its hook point.

use hookpoint::HookPoint;
use lens_core::config::{NormPlacement, QkNorm};
use tch::{Kind, Tensor};

use crate::config::HookedTransformerConfig;
use crate::error::Result;
use crate::hooks::{BlockHooks, LnHooks};
use crate::params::{AttentionParams, BlockParams, LayerNormParams, MlpParams};

/// Keys and values of earlier positions, `[b, k_len, h, dh]` each, as they came out of the hooks.
#[derive(Debug)]
pub struct LayerKv {
    /// Keys.
    pub k: Tensor,
    /// Values.
    pub v: Tensor,
}

/// What attention masks: the attention mask over all key positions (cached ones included), or
/// none (every position is a real token).
pub(crate) struct MaskInfo<'a> {
    pub attention_mask: Option<&'a Tensor>,
}

/// The block's norm as TransformerLens computes it. LayerNorm: centre,
/// `hook_scale(sqrt(mean(x^2) + eps))`, `hook_normalized(x / scale)`, then `* w + b` unless
/// folded (LNPre). RMSNorm: the same without centring, computed in f32 (cast back after
/// `hook_normalized`), then `* w` unless folded (RMSPre).
pub(crate) fn layer_norm(
    cfg: &HookedTransformerConfig,
    x: &Tensor,
    params: Option<&LayerNormParams>,
    hooks: &LnHooks,
) -> Result<Tensor> {
    let eps = cfg.eps;
    let normalized = if cfg.normalization_type.centres() {
        let centred = x - x.mean_dim(-1, true, Kind::Float).to_kind(x.kind());
        let scale = (centred.square().mean_dim(-1, true, Kind::Float) + eps)
            .sqrt()
            .to_kind(x.kind());
        let scale = hooks.scale.run(scale)?;
        hooks.normalized.run(centred / scale)?
    } else {
        let kind = x.kind();
        let h = x.to_kind(Kind::Float);
        let scale = hooks
            .scale
            .run((h.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float) + eps).sqrt())?;
        let normalized = hooks.normalized.run(h / scale)?;
        // A weight kept in f32 in a half-precision model (Gemma's `1 + w`, which the model's
        // dtype would round: up to 0.4% in bf16) multiplies before the cast back, as HF's
        // Gemma does; TransformerLens rounds it to the model's dtype and multiplies after.
        if let Some(LayerNormParams { w, b: None }) = params {
            if w.kind() == Kind::Float && kind != Kind::Float {
                return Ok((normalized * w).to_kind(kind));
            }
        }
        normalized.to_kind(kind)
    };
    Ok(match params {
        Some(LayerNormParams { w, b: Some(b) }) => normalized * w + b,
        Some(LayerNormParams { w, b: None }) => normalized * w,
        None => normalized,
    })
}

/// One block: `resid_pre -> attn -> resid_mid -> mlp -> resid_post`, or with
/// `parallel_attn_mlp` `resid_post = resid_pre + attn(ln1(resid_pre)) + mlp(ln2(resid_pre))`.
/// Gemma 2 and 3 normalise each sublayer's output too (`ln1_post`, `ln2_post`, before
/// `hook_attn_out` / `hook_mlp_out`); OLMo-2 only its output, with `ln1` and `ln2`, its
/// sublayers reading the residual stream itself.
pub(crate) fn block(
    cfg: &HookedTransformerConfig,
    layer: i64,
    params: &BlockParams,
    hooks: &BlockHooks,
    resid: Tensor,
    mask: &MaskInfo,
    kv: Option<&mut LayerKv>,
) -> Result<Tensor> {
    if cfg.norms_on_residual {
        return block_with_norms_on_residual(cfg, layer, params, hooks, resid, mask, kv);
    }
    let after_only = cfg.norm_placement == NormPlacement::After;
    let resid_pre = hooks.resid_pre.run(resid)?;
    let attn_out = attention(cfg, layer, params, hooks, &resid_pre, mask, kv)?;
    let attn_out = match (after_only, &hooks.ln1_post) {
        (true, _) => layer_norm(cfg, &attn_out, params.ln1.as_ref(), &hooks.ln1)?,
        (false, Some(ln1_post)) => layer_norm(cfg, &attn_out, params.ln1_post.as_ref(), ln1_post)?,
        (false, None) => attn_out,
    };
    let attn_out = hooks.attn_out.run(attn_out)?;
    // The MLP reads the residual after attention, or in a parallel block the block's input.
    let mlp_source = match &hooks.resid_mid {
        Some(resid_mid) => resid_mid.run(&resid_pre + &attn_out)?,
        None => resid_pre.shallow_clone(),
    };
    let mlp_in = if cfg.use_hook_mlp_in {
        hooks.mlp_in.run(mlp_source.copy())?
    } else {
        mlp_source.shallow_clone()
    };
    let normalized = if after_only {
        mlp_in
    } else {
        layer_norm(cfg, &mlp_in, params.ln2.as_ref(), &hooks.ln2)?
    };
    let mlp_out = mlp(cfg, &params.mlp, hooks, &normalized)?;
    let mlp_out = match (after_only, &hooks.ln2_post) {
        (true, _) => layer_norm(cfg, &mlp_out, params.ln2.as_ref(), &hooks.ln2)?,
        (false, Some(ln2_post)) => layer_norm(cfg, &mlp_out, params.ln2_post.as_ref(), ln2_post)?,
        (false, None) => mlp_out,
    };
    let mlp_out = hooks.mlp_out.run(mlp_out)?;
    let resid_post = if hooks.resid_mid.is_some() {
        mlp_source + mlp_out
    } else {
        resid_pre + attn_out + mlp_out
    };
    Ok(hooks.resid_post.run(resid_post)?)
}

/// OPT-350m's post-LN block: `resid_mid = hook_resid_mid(resid_pre + attn(resid_pre))`,
/// `h = ln1(resid_mid)`, `resid_post = ln2(h + mlp(h))`. The MLP reads (and `hook_mlp_in` sees)
/// the normalised `h`, which is also what it adds to.
fn block_with_norms_on_residual(
    cfg: &HookedTransformerConfig,
    layer: i64,
    params: &BlockParams,
    hooks: &BlockHooks,
    resid: Tensor,
    mask: &MaskInfo,
    kv: Option<&mut LayerKv>,
) -> Result<Tensor> {
    let resid_pre = hooks.resid_pre.run(resid)?;
    let attn_out = attention(cfg, layer, params, hooks, &resid_pre, mask, kv)?;
    let attn_out = hooks.attn_out.run(attn_out)?;
    let sum = &resid_pre + &attn_out;
    let resid_mid = match &hooks.resid_mid {
        Some(hook) => hook.run(sum)?,
        None => sum,
    };
    let normalized = layer_norm(cfg, &resid_mid, params.ln1.as_ref(), &hooks.ln1)?;
    let mlp_in = if cfg.use_hook_mlp_in {
        hooks.mlp_in.run(normalized.copy())?
    } else {
        normalized.shallow_clone()
    };
    let mlp_out = hooks.mlp_out.run(mlp(cfg, &params.mlp, hooks, &mlp_in)?)?;
    let resid_post = layer_norm(
        cfg,
        &(normalized + mlp_out),
        params.ln2.as_ref(),
        &hooks.ln2,
    )?;
    Ok(hooks.resid_post.run(resid_post)?)
}

/// The MLP. Plain: `hook_post(act(hook_pre(x W_in + b_in))) W_out + b_out`. Gated:
/// `hook_pre(x W_gate [+ b_gate])`, `hook_pre_linear(x W_in + b_in)`,
/// `hook_post(act(pre) * pre_linear)`, then `W_out`, `b_out`. (TransformerLens adds `b_in` after
/// the product; every checkpoint TransformerLens converts has `b_in = 0`, where the two agree,
/// and a Llama with `mlp_bias` biases its up projection, which is what `b_in` is here.)
fn mlp(
    cfg: &HookedTransformerConfig,
    params: &MlpParams,
    hooks: &BlockHooks,
    x: &Tensor,
) -> Result<Tensor> {
    let post = match (&params.W_gate, &hooks.mlp_pre_linear) {
        (Some(w_gate), Some(pre_linear_hook)) => {
            let gate = x.matmul(w_gate);
            let gate = match &params.b_gate {
                Some(b) => gate + b,
                None => gate,
            };
            let pre = hooks.mlp_pre.run(gate)?;
            let pre_linear = pre_linear_hook.run(x.matmul(&params.W_in) + &params.b_in)?;
            hooks.mlp_post.run(cfg.act_fn.apply(&pre) * pre_linear)?
        }
        _ => {
            let pre = hooks.mlp_pre.run(x.matmul(&params.W_in) + &params.b_in)?;
            hooks.mlp_post.run(cfg.act_fn.apply(&pre))?
        }
    };
    Ok(post.matmul(&params.W_out) + &params.b_out)
}

/// `x [b, p, d] . W [h, d, dh] + b [h, dh] -> [b, p, h, dh]`.
fn project(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    let (h, d, dh) = (w.size()[0], w.size()[1], w.size()[2]);
    let flat = w.permute([1, 0, 2]).reshape([d, h * dh]);
    let mut shape = x.size();
    shape.pop();
    shape.extend([h, dh]);
    x.matmul(&flat).reshape(shape.as_slice()) + b
}

/// Per-head input `x [b, p, h, d] . W [h, d, dh] + b -> [b, p, h, dh]`.
fn project_per_head(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    Tensor::einsum("bphd,hdk->bphk", &[x, w], None::<&[i64]>) + b
}

/// The three attention inputs after ln1: one normalised residual shared by q, k and v (ln1 and
/// its hooks run once), or, with `use_split_qkv_input` / `use_attn_in`, per-head copies each
/// with its own hook and its own ln1 pass.
fn qkv(
    cfg: &HookedTransformerConfig,
    params: &BlockParams,
    hooks: &BlockHooks,
    resid_pre: &Tensor,
) -> Result<[Tensor; 3]> {
    let a = &params.attn;
    // OLMo-2's `ln1` follows attention, OPT-350m's the residual addition: attention's input
    // is the residual stream itself.
    let ln = |x: &Tensor| match cfg.norm_placement {
        _ if cfg.norms_on_residual => Ok(x.shallow_clone()),
        NormPlacement::After => Ok(x.shallow_clone()),
        _ => layer_norm(cfg, x, params.ln1.as_ref(), &hooks.ln1),
    };
    if !(cfg.use_split_qkv_input || cfg.use_attn_in) {
        let x = ln(resid_pre)?;
        return Ok([
            project(&x, &a.W_Q, &a.b_Q),
            project(&x, &a.W_K, &a.b_K),
            project(&x, &a.W_V, &a.b_V),
        ]);
    }
    // Keys and values have one input per key/value head (TransformerLens's split inputs with
    // grouped heads).
    let per_head = |n: i64| resid_pre.unsqueeze(2).repeat([1, 1, n, 1]);
    let inputs: [Tensor; 3] = if cfg.use_split_qkv_input {
        [
            hooks.q_input.run(per_head(cfg.n_heads))?,
            hooks.k_input.run(per_head(cfg.n_kv_heads()))?,
            hooks.v_input.run(per_head(cfg.n_kv_heads()))?,
        ]
    } else {
        let shared = hooks.attn_in.run(per_head(cfg.n_heads))?;
        [shared.shallow_clone(), shared.shallow_clone(), shared]
    };
    let [q_in, k_in, v_in] = inputs;
    Ok([
        project_per_head(&ln(&q_in)?, &a.W_Q, &a.b_Q),
        project_per_head(&ln(&k_in)?, &a.W_K, &a.b_K),
        project_per_head(&ln(&v_in)?, &a.W_V, &a.b_V),
    ])
}

/// The norm of queries or keys `[b, p, h, dh]`, as TransformerLens applies it: per head over
/// `[b * p * h, dh]` rows (Qwen3, Gemma 3, Phi; its hooks see that shape), or over the whole
/// projection `[b, p, h * dh]` (OLMo-2); then back. An RMSNorm, or a LayerNorm where the norm
/// has a bias (Phi's `qk_layernorm`).
fn qk_norm(
    cfg: &HookedTransformerConfig,
    x: Tensor,
    norm: Option<&LayerNormParams>,
    hooks: Option<&LnHooks>,
) -> Result<Tensor> {
    let (Some(norm), Some(hooks)) = (norm, hooks) else {
        return Ok(x);
    };
    let shape = x.size();
    let rows = match cfg.qk_norm {
        QkNorm::Projection => x.reshape([shape[0], shape[1], -1]),
        _ => x.reshape([-1, cfg.d_head]),
    };
    let norm_cfg = HookedTransformerConfig {
        normalization_type: if norm.b.is_some() {
            crate::config::NormType::LayerNorm
        } else {
            crate::config::NormType::Rms
        },
        ..cfg.clone()
    };
    Ok(layer_norm(&norm_cfg, &rows, Some(norm), hooks)?.reshape(shape.as_slice()))
}

/// `repeat_interleave` of key/value heads `[b, k, h_kv, dh]` for the query heads sharing them.
fn repeat_heads(x: &Tensor, groups: i64) -> Tensor {
    if groups == 1 {
        return x.shallow_clone();
    }
    x.repeat_interleave_self_int(groups, Some(2), None)
}

fn attention(
    cfg: &HookedTransformerConfig,
    layer: i64,
    params: &BlockParams,
    hooks: &BlockHooks,
    resid_pre: &Tensor,
    mask: &MaskInfo,
    kv: Option<&mut LayerKv>,
) -> Result<Tensor> {
    let [q, k, v] = qkv(cfg, params, hooks, resid_pre)?;
    let a = &params.attn;
    let q = hooks.q.run(q)?;
    let k = hooks.k.run(k)?;
    let v = hooks.v.run(v)?;
    let q = qk_norm(cfg, q, a.q_norm.as_ref(), hooks.q_norm.as_ref())?;
    let mut k = qk_norm(cfg, k, a.k_norm.as_ref(), hooks.k_norm.as_ref())?;
    let mut v = v;
    // The cache holds keys before rotation (TransformerLens rotates all keys on every pass).
    let past_len = match kv {
        Some(cache) => {
            let past = cache.k.size()[1];
            k = Tensor::cat(&[&cache.k, &k], 1);
            v = Tensor::cat(&[&cache.v, &v], 1);
            cache.k = k.shallow_clone();
            cache.v = v.shallow_clone();
            past
        }
        None => 0,
    };
    let window = cfg.windows.get(layer as usize).copied().flatten();
    // Gemma 3's local layers rotate with their own base.
    let rotary = match (&cfg.rotary_local, window) {
        (Some(local), Some(_)) => Some(local),
        _ => cfg.rotary.as_ref(),
    };
    let (q, k) = match (rotary, &hooks.rot_q, &hooks.rot_k) {
        (Some(rotary), Some(rot_q), Some(rot_k)) => (
            rot_q.run(crate::rotary::apply(
                rotary,
                cfg.longrope.as_ref(),
                &q,
                past_len,
                mask.attention_mask,
            ))?,
            rot_k.run(crate::rotary::apply(
                rotary,
                cfg.longrope.as_ref(),
                &k,
                0,
                mask.attention_mask,
            ))?,
        ),
        _ => (q, k),
    };
    let groups = cfg.n_heads / cfg.n_kv_heads();
    let (k, v) = (repeat_heads(&k, groups), repeat_heads(&v, groups));
    // [b, h, q, dh] . [b, h, dh, k] -> [b, h, q, k]
    let scores = q.transpose(1, 2).matmul(&k.permute([0, 2, 3, 1])) / cfg.attn_scale(layer);
    let scores = match cfg.attn_scores_soft_cap {
        Some(cap) => (scores / cap).tanh() * cap,
        None => scores,
    };
    let masked = masked_positions(
        &scores,
        past_len,
        mask.attention_mask,
        window,
        cfg.bidirectional,
    );
    let scores = hooks
        .attn_scores
        .run(scores.masked_fill(&masked, f64::NEG_INFINITY))?;
    let pattern = hooks.pattern.run(masked_softmax(&scores, &masked))?;
    // [b, h, q, k] . [b, h, k, dh] -> [b, h, q, dh] -> [b, q, h, dh]
    let z = hooks.z.run(
        pattern
            .matmul(&v.transpose(1, 2))
            .transpose(1, 2)
            .contiguous(),
    )?;
    output(cfg, &params.attn, hooks, &z)
}

/// `[b|1, 1, q, k]` booleans, true where a query may not attend: later positions (causal),
/// padding keys, and with a sliding `window` keys `window` or more positions back. With
/// `bidirectional` (Gemma 3's), later keys are allowed too, within the window where there is one.
fn masked_positions(
    scores: &Tensor,
    past_len: i64,
    attention_mask: Option<&Tensor>,
    window: Option<i64>,
    bidirectional: bool,
) -> Tensor {
    let (q_len, k_len) = (scores.size()[2], scores.size()[3]);
    let device = scores.device();
    let q_pos = Tensor::arange_start(past_len, past_len + q_len, (Kind::Int64, device));
    let k_pos = Tensor::arange(k_len, (Kind::Int64, device));
    let offset = k_pos.unsqueeze(0) - q_pos.unsqueeze(1);
    let blocked = match (bidirectional, window) {
        (true, Some(window)) => offset.abs().ge(window),
        (true, None) => offset.lt(i64::MIN),
        (false, Some(window)) => offset.gt(0).logical_or(&offset.le(-window)),
        (false, None) => offset.gt(0),
    };
    let causal = blocked.view([1, 1, q_len, k_len]);
    match attention_mask {
        Some(mask) => causal.logical_or(&mask.eq(0).view([mask.size()[0], 1, 1, k_len])),
        None => causal,
    }
}

/// Softmax over keys in which a query with every key masked (a padding query) gets an all-zero
/// row, as TransformerLens's NaN -> 0, but without producing NaN on the way (so its gradients
/// stay finite too).
fn masked_softmax(scores: &Tensor, masked: &Tensor) -> Tensor {
    let no_key = masked.all_dim(-1, true);
    scores
        .masked_fill(&no_key, 0.0)
        .softmax(-1, scores.kind())
        .masked_fill(&no_key, 0.0)
}

/// Attention output: with `use_attn_result`, each head's result `[b, p, h, d]` is hooked and summed.
fn output(
    cfg: &HookedTransformerConfig,
    a: &AttentionParams,
    hooks: &BlockHooks,
    z: &Tensor,
) -> Result<Tensor> {
    if cfg.use_attn_result {
        let result = Tensor::einsum("bphk,hkd->bphd", &[z, &a.W_O], None::<&[i64]>);
        let result = hooks.result.run(result)?;
        return Ok(result.sum_dim_intlist([2i64].as_slice(), false, result.kind()) + &a.b_O);
    }
    let (b, p, h, dh) = (z.size()[0], z.size()[1], z.size()[2], z.size()[3]);
    Ok(z.reshape([b, p, h * dh])
        .matmul(&a.W_O.reshape([h * dh, cfg.d_model]))
        + &a.b_O)
}

/// Positional embedding rows for `tokens` after `past_len` cached positions. With an attention
/// mask, positions count real tokens only (`cumsum(mask) - 1`, pads at 0) and pad rows are zeroed,
/// as TransformerLens does.
pub(crate) fn positional(
    w_pos: &Tensor,
    hook: &HookPoint,
    q_len: i64,
    past_len: i64,
    attention_mask: Option<&Tensor>,
    batch: i64,
) -> Result<Tensor> {
    let device = w_pos.device();
    let pos_embed = match attention_mask {
        None => {
            let positions = Tensor::arange_start(past_len, past_len + q_len, (Kind::Int64, device));
            w_pos
                .index_select(0, &positions)
                .unsqueeze(0)
                .expand([batch, q_len, w_pos.size()[1]], false)
        }
        Some(mask) => {
            let positions = (mask.cumsum(1, Kind::Int64) - 1)
                .clamp_min(0)
                .narrow(1, past_len, q_len);
            let rows = w_pos
                .index_select(0, &positions.reshape([-1]))
                .reshape([batch, q_len, -1]);
            let keep = mask
                .narrow(1, past_len, q_len)
                .unsqueeze(-1)
                .to_kind(rows.kind());
            rows * keep
        }
    };
    Ok(hook.run(pos_embed.contiguous())?)
}
