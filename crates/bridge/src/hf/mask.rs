//! Causal and padding masks, and position ids, as HuggingFace computes them.

use tch::{Device, Kind, Tensor};

use crate::tap::MaskStyle;

/// Which keys each query may attend to, built once per pass and shared by every layer.
pub(crate) struct AttentionMask {
    /// `[b | 1, 1, q, k]` booleans, true where query `i` (absolute position `past_len + i`) may
    /// attend to key `j`: `j <= past_len + i` and key `j` is not padding.
    allowed: Tensor,
    /// `!allowed`, where TransformerLens writes `-inf`; `None` when nothing is blocked (one
    /// new position without a padding mask, as in each step of cached generation: the causal
    /// mask allows every earlier key).
    blocked: Option<Tensor>,
    /// `[b, 1, q, 1]`, true for a query with no allowed key (a left-padding position); `None`
    /// without a padding mask, where the causal mask always allows the query's own position.
    no_key: Option<Tensor>,
    /// GPT-Neo's local layers: `[1, 1, q, k]`, the causal window its attention applies by
    /// replacing scores (`where(window, s, finfo.min)`) before HuggingFace's additive causal and
    /// padding mask (`additive`) is added, so that a query with no real key spreads over the
    /// window's padding only, as HF's does.
    structural: Option<(Tensor, Tensor)>,
}

impl AttentionMask {
    /// The mask for `q_len` queries after `past_len` cached positions, over `k_len` keys.
    pub(crate) fn new(
        q_len: i64,
        k_len: i64,
        past_len: i64,
        attention_mask: Option<&Tensor>,
        device: Device,
    ) -> Self {
        Self::with_window(q_len, k_len, past_len, attention_mask, None, device)
    }

    /// [`AttentionMask::new`], and with a sliding `window` only the last `window` keys up to
    /// each query's own position (HuggingFace's `sliding_window_overlay`: key `j` is allowed for
    /// query `i` when `i - window < j <= i`).
    pub(crate) fn with_window(
        q_len: i64,
        k_len: i64,
        past_len: i64,
        attention_mask: Option<&Tensor>,
        window: Option<i64>,
        device: Device,
    ) -> Self {
        let q_pos = Tensor::arange_start(past_len, past_len + q_len, (Kind::Int64, device));
        let k_pos = Tensor::arange(k_len, (Kind::Int64, device));
        let mut causal = k_pos.unsqueeze(0).le_tensor(&q_pos.unsqueeze(1));
        if let Some(window) = window {
            let recent = k_pos.unsqueeze(0).gt_tensor(&(q_pos.unsqueeze(1) - window));
            causal = causal.logical_and(&recent);
        }
        let causal = causal.view([1, 1, q_len, k_len]);
        let blocks = attention_mask.is_some() || q_len > 1 || window.is_some_and(|w| w < k_len);
        Self::of_structure(causal, attention_mask, blocks)
    }

    /// The mask of `[1, 1, q, k]` allowed pairs `structure` with `attention_mask`'s padding keys
    /// taken out; `blocks`: whether anything may be blocked (else `-inf` writes are skipped).
    fn of_structure(structure: Tensor, attention_mask: Option<&Tensor>, blocks: bool) -> Self {
        let k_len = structure.size()[3];
        let (allowed, no_key) = match attention_mask {
            Some(mask) => {
                let keys = mask.ne(0).view([mask.size()[0], 1, 1, k_len]);
                let allowed = structure.logical_and(&keys);
                let no_key = allowed.any_dim(-1, true).logical_not();
                (allowed, Some(no_key))
            }
            None => (structure, None),
        };
        let blocked = blocks.then(|| allowed.logical_not());
        AttentionMask {
            allowed,
            blocked,
            no_key,
            structural: None,
        }
    }

    /// Gemma 3's `use_bidirectional_attention`: every key (a global layer) or, with a `window`,
    /// the keys less than `window` positions away on either side (transformers'
    /// `_bidirectional_window_overlay` joined with its sliding causal mask); padding keys
    /// masked.
    pub(crate) fn bidirectional(
        q_len: i64,
        k_len: i64,
        past_len: i64,
        attention_mask: Option<&Tensor>,
        window: Option<i64>,
        device: Device,
    ) -> Self {
        let q_pos = Tensor::arange_start(past_len, past_len + q_len, (Kind::Int64, device));
        let k_pos = Tensor::arange(k_len, (Kind::Int64, device));
        let distance = (k_pos.unsqueeze(0) - q_pos.unsqueeze(1)).abs();
        let near = match window {
            Some(window) => distance.lt(window),
            None => distance.ge(0),
        };
        Self::of_structure(near.view([1, 1, q_len, k_len]), attention_mask, true)
    }

    /// GPT-Neo's attention: the causal mask (with a `window` of keys on its local layers)
    /// applied by HuggingFace as a replacement of the scores outside it, then its causal and
    /// padding mask added. Allowed keys (and TransformerLens's `-inf` style) are those of
    /// [`AttentionMask::with_window`].
    pub(crate) fn replacing(
        q_len: i64,
        k_len: i64,
        past_len: i64,
        attention_mask: Option<&Tensor>,
        window: Option<i64>,
        device: Device,
    ) -> Self {
        let full = Self::with_window(q_len, k_len, past_len, attention_mask, window, device);
        let causal = Self::with_window(q_len, k_len, past_len, attention_mask, None, device);
        let window_only = Self::with_window(q_len, k_len, past_len, None, window, device);
        AttentionMask {
            structural: Some((window_only.allowed, causal.allowed)),
            ..full
        }
    }
}

/// `torch.finfo(kind).min`, the value HuggingFace's eager attention adds at masked positions.
pub(crate) fn finfo_min(kind: Kind) -> f64 {
    match kind {
        Kind::Half => -65504.0,
        Kind::BFloat16 => -3.389_531_389_251_535_5e38,
        Kind::Double => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// Applies the mask to `scores` `[b, h, q, k]` in `style`. `mask_kind` is the kind HuggingFace
/// builds its additive mask in (the model's). TransformerLens's `-inf` is written in place: the
/// scores are this pass's own fresh tensor, and no backward function keeps them (the product and
/// the scalar scaling that make them save only their inputs), so this saves a copy of
/// `[b, h, q, k]` per layer.
pub(crate) fn apply(
    scores: Tensor,
    mask: &AttentionMask,
    style: MaskStyle,
    mask_kind: Kind,
) -> Tensor {
    match style {
        MaskStyle::HfAdditiveMin => {
            let zero = Tensor::zeros([], (scores.kind(), scores.device()));
            let min = Tensor::full([], finfo_min(mask_kind), (scores.kind(), scores.device()));
            match &mask.structural {
                Some((window, additive)) => {
                    let floor = Tensor::full(
                        [],
                        finfo_min(scores.kind()),
                        (scores.kind(), scores.device()),
                    );
                    scores.where_self(window, &floor) + zero.where_self(additive, &min)
                }
                None => scores + zero.where_self(&mask.allowed, &min),
            }
        }
        MaskStyle::NegInf => match &mask.blocked {
            Some(blocked) => {
                let mut scores = scores;
                let _ = scores.masked_fill_(blocked, f64::NEG_INFINITY);
                scores
            }
            None => scores,
        },
    }
}

/// Softmax over keys in `style`: HuggingFace's plain softmax, or TransformerLens's, in which a
/// query with no allowed key gets an all-zero row without passing through NaN (so gradients
/// stay finite there too).
pub(crate) fn softmax(scores: &Tensor, mask: &AttentionMask, style: MaskStyle) -> Tensor {
    match (style, &mask.no_key) {
        (MaskStyle::NegInf, Some(no_key)) => scores
            .masked_fill(no_key, 0.0)
            .softmax(-1, scores.kind())
            .masked_fill(no_key, 0.0),
        _ => scores.softmax(-1, scores.kind()),
    }
}

/// The position ids HuggingFace's `generate` computes for a (left-padded) batch:
/// `cumsum(mask) - 1`, with padding positions set to 1. `[b, p]` int64.
pub fn hf_position_ids(attention_mask: &Tensor) -> Tensor {
    let mask = attention_mask.to_kind(Kind::Int64);
    (mask.cumsum(-1, Kind::Int64) - 1).masked_fill(&mask.eq(0), 1)
}

/// Position ids `past_len..past_len + len` for every row, `[batch, len]` int64.
pub(crate) fn arange_positions(batch: i64, len: i64, past_len: i64, device: Device) -> Tensor {
    Tensor::arange_start(past_len, past_len + len, (Kind::Int64, device))
        .unsqueeze(0)
        .expand([batch, len], false)
}
