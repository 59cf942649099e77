//! HuggingFace's next-token loss (labels with `-100` ignored). The bridge's TransformerLens loss
//! is lens-core's `lm_cross_entropy_loss`, shared with the HookedTransformer.

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
