//! What `tl-bench cache` writes for Python: which hook names, the gradient of which scalar, and
//! the metadata in the file's header.
//!
//! The file is a safetensors file: `tokens` `[1, p]`, `logits` `[1, p, d_vocab]`, one entry per
//! hook (and `<name>_grad` per hook with `--grad-of`), and header metadata (see [`metadata`]).
//! Loading it into a TransformerLens `ActivationCache` is shown in the README.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

use clap::ValueEnum;
use hookpoint::ActivationCache;
use lens_core::model::{lm_cross_entropy_loss, ForwardOutput, ModelError, ModelResult};
use lens_core::Tokenizer;
use tch::{Kind, Tensor};

/// Which hook names a cache file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Names {
    /// TransformerLens's names and shapes: the keys a `HookedTransformer` cache has
    /// (`blocks.0.attn.hook_z` as `[b, p, h, d_head]`).
    Tl,
    /// The bridge's canonical component names (`blocks.0.attn.o.hook_in`).
    Bridge,
    /// Both; an activation reachable under two names is written under each.
    Both,
}

impl Names {
    /// The `--names` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Names::Tl => "tl",
            Names::Bridge => "bridge",
            Names::Both => "both",
        }
    }
}

/// The entries of `cache` under the names asked for. `tl_names` are the TransformerLens hook
/// names of the model (a `HookedTransformer`'s registry for its configuration); with gradients
/// recorded, each name's `_grad` entry follows it. A TransformerLens name the cache cannot
/// resolve (a gated hook whose option is off) is left out, as TransformerLens leaves it out.
pub fn select_entries(
    cache: &ActivationCache,
    names: Names,
    tl_names: &[String],
) -> Vec<(String, Tensor)> {
    let mut chosen: BTreeSet<String> = BTreeSet::new();
    if matches!(names, Names::Bridge | Names::Both) {
        chosen.extend(cache.keys().map(str::to_owned));
    }
    if matches!(names, Names::Tl | Names::Both) {
        for name in tl_names {
            for key in [name.clone(), format!("{name}_grad")] {
                if cache.contains(key.as_str()) {
                    chosen.insert(key);
                }
            }
        }
    }
    chosen
        .into_iter()
        .filter_map(|name| {
            let tensor = cache.get(name.as_str()).ok()?.shallow_clone();
            Some((name, tensor))
        })
        .collect()
}

/// A token of a gradient target: an id, or text that must be exactly one token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenRef {
    /// A token id (the argument was an integer).
    Id(i64),
    /// A token's text, e.g. ` Paris` (leading spaces count).
    Text(String),
}

impl TokenRef {
    fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("a token is empty".to_owned());
        }
        Ok(match text.parse::<i64>() {
            Ok(id) => TokenRef::Id(id),
            Err(_) => TokenRef::Text(text.to_owned()),
        })
    }

    fn resolve(&self, tokenizer: Option<&Tokenizer>, d_vocab: i64) -> ModelResult<i64> {
        let id = match self {
            TokenRef::Id(id) => *id,
            TokenRef::Text(text) => tokenizer
                .ok_or_else(|| {
                    ModelError::InvalidInput(format!(
                        "token '{text}' needs a tokenizer.json; give its id instead"
                    ))
                })?
                .to_single_token(text)?,
        };
        if !(0..d_vocab).contains(&id) {
            return Err(ModelError::InvalidInput(format!(
                "token id {id} is outside the vocabulary (0..{d_vocab})"
            )));
        }
        Ok(id)
    }
}

impl fmt::Display for TokenRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenRef::Id(id) => write!(f, "{id}"),
            TokenRef::Text(text) => write!(f, "{text}"),
        }
    }
}

/// The scalar whose gradient `tl-bench cache --grad-of` records at every hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GradOf {
    /// `loss`: the mean next-token cross-entropy (TransformerLens's `loss`).
    Loss,
    /// `logit:TOKEN[@POS]`: the logit of one token at one position (default the last).
    Logit {
        /// The token.
        token: TokenRef,
        /// The position; negative counts from the end.
        pos: i64,
    },
    /// `logit-diff:A,B[@POS]`: `logit[A] - logit[B]` at one position (default the last).
    LogitDiff {
        /// The token whose logit counts positively.
        a: TokenRef,
        /// The token whose logit is subtracted.
        b: TokenRef,
        /// The position; negative counts from the end.
        pos: i64,
    },
    /// `sum-last-logprobs`: the log-probabilities of the last position, summed over the
    /// vocabulary (non-zero after weight processing).
    SumLastLogProbs,
    /// `sum-last-logits`: the logits of the last position, summed. After weight processing its
    /// gradient is exactly zero (center_unembed makes every row of W_U sum to zero): use another
    /// target on processed models.
    SumLastLogits,
}

/// Splits `TEXT@POS` into the text and the position (default -1, the last); an `@` not
/// followed by an integer belongs to the text.
fn split_position(text: &str) -> (&str, i64) {
    text.rsplit_once('@')
        .and_then(|(head, pos)| Some((head, pos.parse::<i64>().ok()?)))
        .unwrap_or((text, -1))
}

impl FromStr for GradOf {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let usage = "use loss, logit:TOKEN[@POS], logit-diff:A,B[@POS], sum-last-logprobs or \
                     sum-last-logits";
        match text {
            "loss" => return Ok(GradOf::Loss),
            "sum-last-logprobs" => return Ok(GradOf::SumLastLogProbs),
            "sum-last-logits" => return Ok(GradOf::SumLastLogits),
            _ => {}
        }
        if let Some(rest) = text.strip_prefix("logit:") {
            let (token, pos) = split_position(rest);
            return Ok(GradOf::Logit {
                token: TokenRef::parse(token)?,
                pos,
            });
        }
        if let Some(rest) = text.strip_prefix("logit-diff:") {
            let (pair, pos) = split_position(rest);
            let (a, b) = pair
                .split_once(',')
                .ok_or_else(|| format!("'{text}': logit-diff needs two tokens, A,B"))?;
            return Ok(GradOf::LogitDiff {
                a: TokenRef::parse(a)?,
                b: TokenRef::parse(b)?,
                pos,
            });
        }
        Err(format!("unknown gradient target '{text}': {usage}"))
    }
}

impl fmt::Display for GradOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GradOf::Loss => write!(f, "loss"),
            GradOf::Logit { token, pos } => write!(f, "logit:{token}@{pos}"),
            GradOf::LogitDiff { a, b, pos } => write!(f, "logit-diff:{a},{b}@{pos}"),
            GradOf::SumLastLogProbs => write!(f, "sum-last-logprobs"),
            GradOf::SumLastLogits => write!(f, "sum-last-logits"),
        }
    }
}

/// A [`GradOf`] with its tokens resolved to ids, ready to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Mean next-token cross-entropy.
    Loss,
    /// `logits[:, pos, id]`.
    Logit {
        /// Token id.
        id: i64,
        /// Position (negative from the end).
        pos: i64,
    },
    /// `logits[:, pos, a] - logits[:, pos, b]`.
    LogitDiff {
        /// Positive token id.
        a: i64,
        /// Negative token id.
        b: i64,
        /// Position (negative from the end).
        pos: i64,
    },
    /// Summed log-probabilities of the last position.
    SumLastLogProbs,
    /// Summed logits of the last position.
    SumLastLogits,
}

impl GradOf {
    /// Resolves token texts with `tokenizer` and checks ids against the vocabulary.
    pub fn resolve(&self, tokenizer: Option<&Tokenizer>, d_vocab: i64) -> ModelResult<Target> {
        Ok(match self {
            GradOf::Loss => Target::Loss,
            GradOf::Logit { token, pos } => Target::Logit {
                id: token.resolve(tokenizer, d_vocab)?,
                pos: *pos,
            },
            GradOf::LogitDiff { a, b, pos } => Target::LogitDiff {
                a: a.resolve(tokenizer, d_vocab)?,
                b: b.resolve(tokenizer, d_vocab)?,
                pos: *pos,
            },
            GradOf::SumLastLogProbs => Target::SumLastLogProbs,
            GradOf::SumLastLogits => Target::SumLastLogits,
        })
    }
}

impl Target {
    /// The scalar for a forward output on `tokens` (`[b, p]`), summed over the batch.
    pub fn of(self, output: &ForwardOutput, tokens: &Tensor) -> ModelResult<Tensor> {
        let logits = output.logits()?;
        let len = logits.size()[1];
        let at = |pos: i64| -> ModelResult<Tensor> {
            let index = if pos < 0 { len + pos } else { pos };
            if !(0..len).contains(&index) {
                return Err(ModelError::InvalidInput(format!(
                    "position {pos} is outside the {len} tokens of the input"
                )));
            }
            Ok(logits.select(1, index))
        };
        Ok(match self {
            Target::Loss => {
                if len < 2 {
                    return Err(ModelError::InvalidInput(
                        "the loss needs at least two tokens (one prediction)".into(),
                    ));
                }
                lm_cross_entropy_loss(logits, tokens, None, false)
            }
            Target::Logit { id, pos } => at(pos)?.select(-1, id).sum(Kind::Float),
            Target::LogitDiff { a, b, pos } => {
                let row = at(pos)?;
                (row.select(-1, a) - row.select(-1, b)).sum(Kind::Float)
            }
            Target::SumLastLogProbs => at(-1)?.log_softmax(-1, Kind::Float).sum(Kind::Float),
            Target::SumLastLogits => at(-1)?.sum(Kind::Float),
        })
    }
}

/// What a cache file says about itself (its safetensors header metadata). Every value is a
/// string, as safetensors requires; lists are JSON.
#[derive(Clone, Debug)]
pub struct CacheMetadata {
    /// The `--model` argument.
    pub model: String,
    /// `hf`, `hooked` or `bridge`.
    pub implementation: String,
    /// `tl`, `bridge` or `both` (`hidden_states` for the raw HF model).
    pub names: String,
    /// `f32`, `f16`, `bf16`.
    pub dtype: String,
    /// `cpu`, `cuda:N`.
    pub device: String,
    /// `none`, or what processing the weights went through.
    pub processing: String,
    /// The gradient target, or `none`.
    pub grad_of: String,
    /// The input text.
    pub text: String,
    /// Token ids.
    pub tokens: Vec<i64>,
    /// Token strings (empty without a tokenizer).
    pub str_tokens: Vec<String>,
}

/// The header metadata of a cache file.
pub fn metadata(meta: &CacheMetadata) -> HashMap<String, String> {
    HashMap::from([
        ("format".to_owned(), "pt".to_owned()),
        (
            "producer".to_owned(),
            format!("tl-bench {}", env!("CARGO_PKG_VERSION")),
        ),
        ("model".to_owned(), meta.model.clone()),
        ("impl".to_owned(), meta.implementation.clone()),
        ("names".to_owned(), meta.names.clone()),
        ("dtype".to_owned(), meta.dtype.clone()),
        ("device".to_owned(), meta.device.clone()),
        ("processing".to_owned(), meta.processing.clone()),
        ("grad_of".to_owned(), meta.grad_of.clone()),
        ("text".to_owned(), meta.text.clone()),
        ("tokens".to_owned(), json(&meta.tokens)),
        ("str_tokens".to_owned(), json(&meta.str_tokens)),
    ])
}

/// JSON text of a list (for list-valued metadata).
fn json<T: serde::Serialize>(list: &[T]) -> String {
    serde_json::to_string(list).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_targets_parse_and_print() {
        for (text, expected) in [
            ("loss", GradOf::Loss),
            ("sum-last-logits", GradOf::SumLastLogits),
            ("sum-last-logprobs", GradOf::SumLastLogProbs),
            (
                "logit:42",
                GradOf::Logit {
                    token: TokenRef::Id(42),
                    pos: -1,
                },
            ),
            (
                "logit: Paris@3",
                GradOf::Logit {
                    token: TokenRef::Text(" Paris".into()),
                    pos: 3,
                },
            ),
            (
                "logit-diff: Mary, John@-2",
                GradOf::LogitDiff {
                    a: TokenRef::Text(" Mary".into()),
                    b: TokenRef::Text(" John".into()),
                    pos: -2,
                },
            ),
            (
                "logit:a@b",
                GradOf::Logit {
                    token: TokenRef::Text("a@b".into()),
                    pos: -1,
                },
            ),
        ] {
            assert_eq!(text.parse::<GradOf>().unwrap(), expected, "{text}");
        }
        assert_eq!(
            "logit-diff:1,2".parse::<GradOf>().unwrap().to_string(),
            "logit-diff:1,2@-1"
        );
        assert!("logit-diff:1".parse::<GradOf>().is_err());
        assert!("logit:".parse::<GradOf>().is_err());
        assert!("logits"
            .parse::<GradOf>()
            .unwrap_err()
            .contains("logit:TOKEN"));
    }

    #[test]
    fn targets_compute_the_scalar_they_name() {
        let logits = Tensor::arange(2 * 3 * 4, (Kind::Float, tch::Device::Cpu)).reshape([1, 3, 8]);
        let output = ForwardOutput {
            logits: Some(logits.shallow_clone()),
            loss: None,
            residual: None,
        };
        let tokens = Tensor::from_slice(&[0i64, 1, 2]).unsqueeze(0);
        let value = |t: Target| t.of(&output, &tokens).unwrap().double_value(&[]);
        assert_eq!(value(Target::Logit { id: 2, pos: 0 }), 2.0);
        assert_eq!(value(Target::Logit { id: 2, pos: -1 }), 18.0);
        assert_eq!(value(Target::LogitDiff { a: 5, b: 1, pos: 1 }), 4.0);
        assert_eq!(value(Target::SumLastLogits), (16..24).sum::<i64>() as f64);
        let loss = lm_cross_entropy_loss(&logits, &tokens, None, false).double_value(&[]);
        assert_eq!(value(Target::Loss), loss);
        assert!(Target::Logit { id: 0, pos: 3 }
            .of(&output, &tokens)
            .unwrap_err()
            .to_string()
            .contains("position 3"));
        let one = ForwardOutput {
            logits: Some(logits.narrow(1, 0, 1)),
            loss: None,
            residual: None,
        };
        assert!(Target::Loss.of(&one, &tokens.narrow(1, 0, 1)).is_err());
    }
}
