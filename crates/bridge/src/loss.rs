//! Next-token losses: HuggingFace's (labels with `-100` ignored) and TransformerLens's (pairs of
//! real tokens under an attention mask).

use tch::{Kind, Reduction, Tensor};

/// The label HuggingFace ignores.
pub const IGNORE_INDEX: i64 = -100;

/// HuggingFace's `ForCausalLMLoss`: logits in f32, labels shifted left (the last position gets
/// `-100`), mean cross-entropy over the labels that are not `-100`.
pub(crate) fn hf_causal_lm_loss(logits: &Tensor, labels: &Tensor) -> Tensor {
    let logits = logits.to_kind(Kind::Float);
    let vocab = logits.size()[2];
    let (batch, len) = (labels.size()[0], labels.size()[1]);
    let labels = labels.to_kind(Kind::Int64).to_device(logits.device());
    let shifted = Tensor::cat(
        &[
            labels.narrow(1, 1, len - 1),
            Tensor::full([batch, 1], IGNORE_INDEX, (Kind::Int64, logits.device())),
        ],
        1,
    );
    logits.reshape([-1, vocab]).cross_entropy_loss::<Tensor>(
        &shifted.reshape([-1]),
        None,
        Reduction::Mean,
        IGNORE_INDEX,
        0.0,
    )
}

/// TransformerLens's `lm_cross_entropy_loss`: the negative log-probability of each next token,
/// `[b, p - 1]`, or its mean. With a mask only pairs whose current and next tokens are both real
/// count (masked entries of the per-token loss are 0).
pub(crate) fn tl_loss(
    logits: &Tensor,
    tokens: &Tensor,
    attention_mask: Option<&Tensor>,
    per_token: bool,
) -> Tensor {
    let len = logits.size()[1];
    let log_probs = logits.log_softmax(-1, Kind::Float);
    let predicted = log_probs
        .narrow(1, 0, len - 1)
        .gather(-1, &tokens.narrow(1, 1, len - 1).unsqueeze(-1), false)
        .squeeze_dim(-1);
    match attention_mask {
        Some(mask) => {
            let pairs =
                (mask.narrow(1, 0, len - 1) * mask.narrow(1, 1, len - 1)).to_kind(Kind::Float);
            let masked = -(predicted * &pairs);
            if per_token {
                masked
            } else {
                masked.sum(Kind::Float) / pairs.sum(Kind::Float)
            }
        }
        None if per_token => -predicted,
        None => -predicted.mean(Kind::Float),
    }
}
