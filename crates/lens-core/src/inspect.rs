//! The interactive helpers of a TransformerLens notebook: how a model ranks an answer
//! (`utils.test_prompt`), the unembedding direction of a token
//! (`tokens_to_residual_directions`), and generation as a stream of tokens
//! (`generate_stream`).

use tch::{Kind, Tensor};

use crate::generation::Generation;
use crate::model::{ForwardOptions, GenerateOptions, LensModel, ModelError, ModelResult};

/// How the model scored one answer token at the position before it.
#[derive(Clone, Debug, PartialEq)]
pub struct AnswerToken {
    /// The token's text.
    pub token: String,
    /// Its id.
    pub id: i64,
    /// 0-based rank among the vocabulary (0: the model's top prediction).
    pub rank: i64,
    /// Its logit.
    pub logit: f64,
    /// Its probability.
    pub prob: f64,
}

/// What [`test_prompt`] finds: the prompt's and answer's tokens, each answer token's score, and
/// the top predictions where the first answer token is predicted.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptTest {
    /// The prompt's tokens (BOS included when prepended).
    pub prompt_tokens: Vec<String>,
    /// One entry per answer token.
    pub answer: Vec<AnswerToken>,
    /// The `top_k` predictions before the first answer token, best first: (token, logit, prob).
    pub top: Vec<(String, f64, f64)>,
}

impl std::fmt::Display for PromptTest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "Tokenized prompt: {:?}", self.prompt_tokens)?;
        for a in &self.answer {
            writeln!(
                f,
                "Rank: {:<8} Logit: {:5.2} Prob: {:6.2}% Token: |{}|",
                a.rank,
                a.logit,
                100.0 * a.prob,
                a.token
            )?;
        }
        for (i, (token, logit, prob)) in self.top.iter().enumerate() {
            writeln!(
                f,
                "Top {i}th token. Logit: {logit:5.2} Prob: {:6.2}% Token: |{token}|",
                100.0 * prob
            )?;
        }
        Ok(())
    }
}

/// TransformerLens's `test_prompt`: runs `prompt` followed by `answer` (with a space put in
/// front of the answer unless it has one, as TransformerLens's `prepend_space_to_answer`) and
/// reports each answer token's rank, logit and probability where it is predicted, and the
/// `top_k` predictions for the first one. Returns the result instead of printing it (its
/// `Display` prints what TransformerLens prints).
///
/// Errors: the model has no tokenizer; the answer has no tokens; the model's errors.
pub fn test_prompt(
    model: &dyn LensModel,
    prompt: &str,
    answer: &str,
    top_k: usize,
) -> ModelResult<PromptTest> {
    let tokenizer = model.tokenizer().ok_or_else(|| {
        ModelError::Unsupported(format!("{} has no tokenizer", model.model_name()))
    })?;
    let answer = if answer.starts_with(' ') {
        answer.to_owned()
    } else {
        format!(" {answer}")
    };
    let prompt_ids = tokenizer.to_tokens(&[prompt], None, None, true)?.ids;
    let answer_ids = tokenizer.encode(&answer)?;
    if answer_ids.is_empty() {
        return Err(ModelError::InvalidInput(format!(
            "the answer {answer:?} has no tokens"
        )));
    }
    let prompt_len = prompt_ids.size()[1];
    let tokens = Tensor::cat(
        &[prompt_ids, Tensor::from_slice(&answer_ids).view([1, -1])],
        1,
    )
    .to_device(model.device());
    let logits = tch::no_grad(|| model.forward(&tokens, &ForwardOptions::default()))?
        .logits
        .ok_or_else(|| ModelError::InvalidInput("the model returned no logits".into()))?
        .get(0)
        .to_kind(Kind::Double);
    let probs = logits.softmax(-1, Kind::Double);
    let decode = |id: i64| {
        tokenizer
            .to_single_str_token(id)
            .unwrap_or_else(|_| format!("<{id}>"))
    };
    let answer = answer_ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let at = prompt_len + i as i64 - 1;
            let row = logits.get(at);
            let logit = row.double_value(&[id]);
            AnswerToken {
                token: decode(id),
                id,
                rank: row.gt(logit).sum(Kind::Int64).int64_value(&[]),
                logit,
                prob: probs.get(at).double_value(&[id]),
            }
        })
        .collect();
    let first = logits.get(prompt_len - 1);
    let k = (top_k as i64).min(first.size()[0]);
    let (values, indices) = first.topk(k, -1, true, true);
    let top = (0..k)
        .map(|i| {
            let id = indices.int64_value(&[i]);
            (
                decode(id),
                values.double_value(&[i]),
                probs.get(prompt_len - 1).double_value(&[id]),
            )
        })
        .collect();
    Ok(PromptTest {
        prompt_tokens: tokenizer.to_str_tokens(prompt, None)?,
        answer,
        top,
    })
}

/// The unembedding directions of `tokens` (any shape of ids): `W_U[:, token]`, shaped
/// `[..., d_model]` (TransformerLens's `tokens_to_residual_directions`; fold the final norm
/// first to read them in the residual stream's units). Where the residual stream is projected
/// before the unembedding (OPT-350m), the directions are `W_project_out W_U[:, token]`.
///
/// Errors: an id outside the vocabulary.
pub fn tokens_to_residual_directions(
    model: &dyn LensModel,
    tokens: &Tensor,
) -> ModelResult<Tensor> {
    let w_u = model.tl_weight("unembed.W_U")?;
    let has_projection = model
        .tl_weight_names()
        .iter()
        .any(|name| name == "unembed.W_project_out");
    let w_u = if has_projection {
        model.tl_weight("unembed.W_project_out")?.matmul(&w_u)
    } else {
        w_u
    };
    let d_vocab = w_u.size()[1];
    let ids = tokens.to_kind(Kind::Int64).to_device(w_u.device());
    let (lo, hi) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
    if lo < 0 || hi >= d_vocab {
        return Err(ModelError::InvalidInput(format!(
            "token ids must be in 0..{d_vocab}; got {lo}..={hi}"
        )));
    }
    let flat = w_u.transpose(0, 1).index_select(0, &ids.reshape([-1]));
    let mut shape = ids.size();
    shape.push(w_u.size()[0]);
    Ok(flat.reshape(shape.as_slice()))
}

/// Generation as an iterator (TransformerLens's `generate_stream`): each item is the next token
/// of every row, `[b]`, as soon as it is chosen, with `options`' sampling and EOS rules (greedy:
/// the tokens [`LensModel::generate`] returns). Each step runs the model over the whole sequence
/// so far (no KV cache), so a stream costs what `use_past_kv_cache: false` costs; for the fastest
/// generation of whole continuations use [`LensModel::generate`]. There is no padding mask: give
/// one prompt, or prompts of one length.
///
/// Errors (before the first token): as [`LensModel::generate`]'s checks of `tokens`; each item
/// carries the model's errors.
pub fn generate_stream<'m>(
    model: &'m dyn LensModel,
    tokens: &Tensor,
    options: &GenerateOptions,
) -> ModelResult<impl Iterator<Item = ModelResult<Tensor>> + 'm> {
    let default_eos = model
        .tokenizer()
        .and_then(|t| t.eos_token_id())
        .unwrap_or(model.dims().d_vocab - 1);
    let tokens = tokens.to_device(model.device());
    let mut generation = Generation::new(&tokens, None, options, default_eos)?;
    Ok(std::iter::from_fn(move || {
        generation.step(|all, _, _| {
            let _no_grad = tch::no_grad_guard();
            let out = model.forward(all, &ForwardOptions::default())?;
            Ok(out.logits()?.select(1, -1))
        })
    }))
}
