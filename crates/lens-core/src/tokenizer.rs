//! A `tokenizer.json` tokenizer with TransformerLens's tokenization semantics.
//!
//! [`Tokenizer::to_tokens`] prepends BOS by default, pads a batch to its longest sequence
//! (right by default) and truncates to `n_ctx`. Its attention mask comes from the padding it
//! actually added, never from comparing ids with the pad id: GPT-2's BOS, EOS and pad are all
//! 50256, and `ids != pad` would mask the BOS (TransformerLens pitfall 21).

use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::config::HfConfig;
use crate::error::{LensError, Result};

/// Which end of a sequence padding goes to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PaddingSide {
    /// Pads before the tokens (what batched generation needs).
    Left,
    /// Pads after the tokens (TransformerLens's default).
    #[default]
    Right,
}

/// Special tokens and defaults of a [`Tokenizer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizerOptions {
    /// Beginning-of-sequence id; needed to prepend BOS.
    pub bos_token_id: Option<i64>,
    /// End-of-sequence id.
    pub eos_token_id: Option<i64>,
    /// Padding id. `None`: the tokenizer file's own pad id, else EOS, else BOS (what
    /// TransformerLens does for GPT-2, whose tokenizer has none).
    pub pad_token_id: Option<i64>,
    /// Context length that `truncate` cuts to; `None` never truncates.
    pub n_ctx: Option<i64>,
    /// Whether BOS is prepended when a call passes `prepend_bos: None`. `None`: the model's
    /// TransformerLens default when loaded with a model (false for Qwen2 and Qwen3, see
    /// [`HfConfig::default_prepend_bos`]), else true.
    pub default_prepend_bos: Option<bool>,
    /// Padding side when a call passes `padding_side: None` (default right).
    pub padding_side: PaddingSide,
}

impl Default for TokenizerOptions {
    fn default() -> Self {
        TokenizerOptions {
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            n_ctx: None,
            default_prepend_bos: None,
            padding_side: PaddingSide::Right,
        }
    }
}

impl TokenizerOptions {
    /// Special tokens, `n_ctx` and the BOS default from a model config, TransformerLens
    /// defaults otherwise.
    pub fn from_config(config: &HfConfig) -> Self {
        TokenizerOptions {
            bos_token_id: config.bos_token_id(),
            eos_token_id: config.eos_token_id(),
            pad_token_id: config.pad_token_id(),
            n_ctx: Some(config.n_ctx()),
            default_prepend_bos: Some(config.default_prepend_bos()),
            ..TokenizerOptions::default()
        }
    }
}

/// What a `tokenizer_config.json` says of one special token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SpecialToken {
    /// The file does not mention it.
    #[default]
    Unset,
    /// The file sets it to `null`: the tokenizer has none (Qwen's BOS).
    Null,
    /// The token's text.
    Token(String),
}

/// The special tokens a `tokenizer_config.json` names. transformers' tokenizers take BOS, EOS
/// and padding from this file rather than from `config.json`, and the two can disagree (Qwen3's
/// `config.json` says BOS is `<|endoftext|>`, its tokenizer has no BOS and ends turns with
/// `<|im_end|>`); TransformerLens sees the tokenizer's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokenNames {
    /// `bos_token`.
    pub bos: SpecialToken,
    /// `eos_token`.
    pub eos: SpecialToken,
    /// `pad_token`.
    pub pad: SpecialToken,
}

impl SpecialTokenNames {
    /// Reads `bos_token`, `eos_token` and `pad_token` from a `tokenizer_config.json` (each a
    /// string, an added-token object with a `content`, or `null`).
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| LensError::io(path, e))?;
        let error = |message: String| LensError::Tokenizer {
            path: Some(path.to_path_buf()),
            message,
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| error(e.to_string()))?;
        let named = |key: &str| match json.get(key) {
            None => Ok(SpecialToken::Unset),
            Some(serde_json::Value::Null) => Ok(SpecialToken::Null),
            Some(serde_json::Value::String(t)) => Ok(SpecialToken::Token(t.clone())),
            Some(other) => match other.get("content").and_then(|c| c.as_str()) {
                Some(t) => Ok(SpecialToken::Token(t.to_owned())),
                None => Err(error(format!(
                    "{key} is neither a string, null nor an object with a \"content\": {other}"
                ))),
            },
        };
        Ok(SpecialTokenNames {
            bos: named("bos_token")?,
            eos: named("eos_token")?,
            pad: named("pad_token")?,
        })
    }
}

/// A padded batch of token ids.
#[derive(Debug)]
pub struct Tokens {
    /// `[batch, pos]` int64 ids, padded with the pad id.
    pub ids: Tensor,
    /// `[batch, pos]` int64: 1 for a real token (BOS included), 0 for padding.
    pub attention_mask: Tensor,
}

impl Tokens {
    /// Pads sequences of ids into a batch. The mask marks exactly the padding added here.
    ///
    /// Errors with [`LensError::EmptyInput`] when there are no sequences or all are empty.
    pub fn pad(sequences: &[Vec<i64>], pad_token_id: i64, side: PaddingSide) -> Result<Tokens> {
        if sequences.is_empty() {
            return Err(LensError::EmptyInput("no sequences to pad".to_string()));
        }
        let width = sequences.iter().map(Vec::len).max().unwrap_or(0);
        if width == 0 {
            return Err(LensError::EmptyInput(
                "every sequence of the batch is empty".to_string(),
            ));
        }
        let mut ids = Vec::with_capacity(sequences.len() * width);
        let mut mask = Vec::with_capacity(sequences.len() * width);
        for seq in sequences {
            let n_pad = width - seq.len();
            if side == PaddingSide::Left {
                ids.extend(std::iter::repeat_n(pad_token_id, n_pad));
                mask.extend(std::iter::repeat_n(0i64, n_pad));
            }
            ids.extend_from_slice(seq);
            mask.extend(std::iter::repeat_n(1i64, seq.len()));
            if side == PaddingSide::Right {
                ids.extend(std::iter::repeat_n(pad_token_id, n_pad));
                mask.extend(std::iter::repeat_n(0i64, n_pad));
            }
        }
        let shape = [sequences.len() as i64, width as i64];
        Ok(Tokens {
            ids: int_tensor(&ids, &shape)?,
            attention_mask: int_tensor(&mask, &shape)?,
        })
    }

    /// Both tensors moved to `device`.
    pub fn to_device(&self, device: Device) -> Result<Tokens> {
        let move_ = |t: &Tensor| {
            t.f_to_device(device)
                .map_err(|e| LensError::torch(format!("moving tokens to {device:?}"), e))
        };
        Ok(Tokens {
            ids: move_(&self.ids)?,
            attention_mask: move_(&self.attention_mask)?,
        })
    }
}

/// Token ids given as a slice or an integer tensor (0-D, 1-D, or `[1, pos]`).
#[derive(Clone, Copy, Debug)]
pub enum Ids<'a> {
    /// Ids in a slice.
    Slice(&'a [i64]),
    /// Ids in an integer tensor.
    Tensor(&'a Tensor),
}

impl<'a> From<&'a [i64]> for Ids<'a> {
    fn from(ids: &'a [i64]) -> Self {
        Ids::Slice(ids)
    }
}

impl<'a> From<&'a Vec<i64>> for Ids<'a> {
    fn from(ids: &'a Vec<i64>) -> Self {
        Ids::Slice(ids)
    }
}

impl<'a, const N: usize> From<&'a [i64; N]> for Ids<'a> {
    fn from(ids: &'a [i64; N]) -> Self {
        Ids::Slice(ids)
    }
}

impl<'a> From<&'a Tensor> for Ids<'a> {
    fn from(ids: &'a Tensor) -> Self {
        Ids::Tensor(ids)
    }
}

/// Input of [`Tokenizer::to_str_tokens`]: a text, or ids.
#[derive(Clone, Copy, Debug)]
pub enum TokenInput<'a> {
    /// A text, tokenized first.
    Text(&'a str),
    /// Ids, decoded one by one.
    Ids(Ids<'a>),
}

impl<'a> From<&'a str> for TokenInput<'a> {
    fn from(text: &'a str) -> Self {
        TokenInput::Text(text)
    }
}

impl<'a> From<&'a String> for TokenInput<'a> {
    fn from(text: &'a String) -> Self {
        TokenInput::Text(text)
    }
}

impl<'a, T: Into<Ids<'a>>> From<T> for TokenInput<'a> {
    fn from(ids: T) -> Self {
        TokenInput::Ids(ids.into())
    }
}

/// A HuggingFace `tokenizer.json` tokenizer with TransformerLens semantics.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: Option<PathBuf>,
    bos: Option<i64>,
    eos: Option<i64>,
    pad: Option<i64>,
    n_ctx: Option<i64>,
    default_prepend_bos: bool,
    padding_side: PaddingSide,
    /// The tokenizer's post-processor adds BOS itself (e.g. Llama's), unlike GPT-2's.
    prepends_bos: bool,
}

impl Tokenizer {
    /// Loads a `tokenizer.json`.
    ///
    /// Errors: unreadable file ([`LensError::Io`]), a file the tokenizers library rejects, or a
    /// special token id that is not in its vocabulary ([`LensError::Tokenizer`]).
    pub fn from_file(path: impl AsRef<Path>, opts: TokenizerOptions) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| LensError::io(path, e))?;
        Self::build(&bytes, Some(path), opts)
    }

    /// Loads a tokenizer from the text of a `tokenizer.json`.
    pub fn from_bytes(json: &[u8], opts: TokenizerOptions) -> Result<Self> {
        Self::build(json, None, opts)
    }

    /// Loads a model's `tokenizer.json` with its special tokens resolved as transformers and
    /// TransformerLens resolve them: each of BOS, EOS and padding is `given`'s, else the one
    /// `names` (the model's `tokenizer_config.json`) names, else `config`'s (the ids of its
    /// `config.json`). A BOS the tokenizer config sets to `null` is the EOS, as in
    /// TransformerLens. `given.default_prepend_bos` unset is `config`'s.
    ///
    /// Errors: as [`Tokenizer::from_file`], and a named token that is not in the vocabulary.
    pub fn from_model_files(
        path: &Path,
        names: &SpecialTokenNames,
        given: &TokenizerOptions,
        config: &TokenizerOptions,
    ) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| LensError::io(path, e))?;
        let inner = Self::parse(&bytes, Some(path))?;
        let id_of = |what: &str, named: &SpecialToken| -> Result<Option<i64>> {
            match named {
                SpecialToken::Token(text) => match inner.token_to_id(text) {
                    Some(id) => Ok(Some(i64::from(id))),
                    None => Err(LensError::Tokenizer {
                        path: Some(path.to_path_buf()),
                        message: format!(
                            "tokenizer_config.json names {what} '{text}', which is not in the vocabulary"
                        ),
                    }),
                },
                _ => Ok(None),
            }
        };
        let eos = given
            .eos_token_id
            .or(id_of("eos_token", &names.eos)?)
            .or(config.eos_token_id);
        let bos = given.bos_token_id.or(match names.bos {
            SpecialToken::Null => eos,
            SpecialToken::Unset => config.bos_token_id,
            SpecialToken::Token(_) => id_of("bos_token", &names.bos)?,
        });
        let pad = given
            .pad_token_id
            .or(id_of("pad_token", &names.pad)?)
            .or(config.pad_token_id);
        let opts = TokenizerOptions {
            bos_token_id: bos,
            eos_token_id: eos,
            pad_token_id: pad,
            n_ctx: given.n_ctx.or(config.n_ctx),
            default_prepend_bos: given.default_prepend_bos.or(config.default_prepend_bos),
            padding_side: given.padding_side,
        };
        Self::finish(inner, Some(path), opts)
    }

    fn parse(json: &[u8], path: Option<&Path>) -> Result<tokenizers::Tokenizer> {
        tokenizers::Tokenizer::from_bytes(json).map_err(|e| LensError::Tokenizer {
            path: path.map(Path::to_path_buf),
            message: e.to_string(),
        })
    }

    fn build(json: &[u8], path: Option<&Path>, opts: TokenizerOptions) -> Result<Self> {
        Self::finish(Self::parse(json, path)?, path, opts)
    }

    fn finish(
        mut inner: tokenizers::Tokenizer,
        path: Option<&Path>,
        opts: TokenizerOptions,
    ) -> Result<Self> {
        let error = |message: String| LensError::Tokenizer {
            path: path.map(Path::to_path_buf),
            message,
        };
        let file_pad = inner.get_padding().map(|p| i64::from(p.pad_id));
        // Padding and truncation are ours; the file's settings would apply them twice.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| error(e.to_string()))?;
        let pad = opts
            .pad_token_id
            .or(file_pad)
            .or(opts.eos_token_id)
            .or(opts.bos_token_id);
        for (what, id) in [
            ("bos_token_id", opts.bos_token_id),
            ("eos_token_id", opts.eos_token_id),
            ("pad_token_id", pad),
        ] {
            if let Some(id) = id {
                if lookup(&inner, id).is_none() {
                    return Err(error(format!(
                        "{what} {id} is not in the vocabulary ({} tokens)",
                        inner.get_vocab_size(true)
                    )));
                }
            }
        }
        if let Some(n_ctx) = opts.n_ctx {
            if n_ctx <= 0 {
                return Err(error(format!("n_ctx must be positive, got {n_ctx}")));
            }
        }
        let empty = inner.encode("", true).map_err(|e| error(e.to_string()))?;
        let prepends_bos = opts.bos_token_id.is_some()
            && empty.get_ids().first().map(|&i| i64::from(i)) == opts.bos_token_id;
        Ok(Tokenizer {
            inner,
            path: path.map(Path::to_path_buf),
            bos: opts.bos_token_id,
            eos: opts.eos_token_id,
            pad,
            n_ctx: opts.n_ctx,
            default_prepend_bos: opts.default_prepend_bos.unwrap_or(true),
            padding_side: opts.padding_side,
            prepends_bos,
        })
    }

    /// The BOS id, if configured.
    pub fn bos_token_id(&self) -> Option<i64> {
        self.bos
    }

    /// The EOS id, if configured.
    pub fn eos_token_id(&self) -> Option<i64> {
        self.eos
    }

    /// The pad id in effect (see [`TokenizerOptions::pad_token_id`]).
    pub fn pad_token_id(&self) -> Option<i64> {
        self.pad
    }

    /// The truncation length, if any.
    pub fn n_ctx(&self) -> Option<i64> {
        self.n_ctx
    }

    /// Whether BOS is prepended by default.
    pub fn default_prepend_bos(&self) -> bool {
        self.default_prepend_bos
    }

    /// The default padding side.
    pub fn padding_side(&self) -> PaddingSide {
        self.padding_side
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The ids of `text` alone: no BOS (one the tokenizer adds itself is removed), no
    /// truncation.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        self.sequence(text, false, false)
    }

    /// TransformerLens's `to_tokens`: tokenizes a batch of texts.
    ///
    /// * `prepend_bos`: `None` uses [`TokenizerOptions::default_prepend_bos`]. BOS is
    ///   prepended as an id (TransformerLens prepends the BOS string; for GPT-2's
    ///   `<|endoftext|>`, an added token, the result is the same).
    /// * `padding_side`: `None` uses [`TokenizerOptions::padding_side`]; the batch is padded to
    ///   its longest sequence with the pad id.
    /// * `truncate`: cut every sequence (BOS included) to `n_ctx` tokens.
    ///
    /// The mask is 1 exactly on the tokens of each text (BOS included) and 0 on the padding
    /// added, whatever the ids.
    ///
    /// Errors: no texts, or no tokens at all ([`LensError::EmptyInput`]); BOS asked for but not
    /// configured, or a ragged batch without a pad id ([`LensError::MissingSpecialToken`]).
    pub fn to_tokens(
        &self,
        texts: &[&str],
        prepend_bos: Option<bool>,
        padding_side: Option<PaddingSide>,
        truncate: bool,
    ) -> Result<Tokens> {
        if texts.is_empty() {
            return Err(LensError::EmptyInput("to_tokens got no texts".to_string()));
        }
        let prepend_bos = prepend_bos.unwrap_or(self.default_prepend_bos);
        let sequences = texts
            .iter()
            .map(|t| self.sequence(t, prepend_bos, truncate))
            .collect::<Result<Vec<_>>>()?;
        if sequences.iter().all(Vec::is_empty) {
            return Err(LensError::EmptyInput(format!(
                "the text{} produce no tokens (prepend_bos is false)",
                if texts.len() == 1 { "" } else { "s" }
            )));
        }
        let ragged = sequences.iter().any(|s| s.len() != sequences[0].len());
        let pad = match self.pad {
            Some(pad) => pad,
            None if !ragged => 0,
            None => return Err(LensError::MissingSpecialToken("pad")),
        };
        Tokens::pad(&sequences, pad, padding_side.unwrap_or(self.padding_side))
    }

    /// TransformerLens's `to_string` for one sequence: decodes ids into a text, special tokens
    /// kept, no clean-up of spaces.
    pub fn to_string<'a>(&self, ids: impl Into<Ids<'a>>) -> Result<String> {
        let ids = ids_vec(ids.into())?;
        self.decode(&ids)
    }

    /// TransformerLens's `to_string` for a batch: one text per row of a `[batch, pos]` tensor
    /// (a 1-D tensor is one row).
    pub fn to_strings(&self, tokens: &Tensor) -> Result<Vec<String>> {
        rows(tokens)?.iter().map(|row| self.decode(row)).collect()
    }

    /// TransformerLens's `to_str_tokens`: the text of each token.
    ///
    /// A text is tokenized as [`Tokenizer::to_tokens`] does (BOS by `prepend_bos`, truncated to
    /// `n_ctx`); ids are decoded one by one and `prepend_bos` is ignored. A token that is part
    /// of a UTF-8 character decodes to `\u{FFFD}`, as in Python.
    pub fn to_str_tokens<'a>(
        &self,
        input: impl Into<TokenInput<'a>>,
        prepend_bos: Option<bool>,
    ) -> Result<Vec<String>> {
        let ids = match input.into() {
            TokenInput::Text(text) => {
                self.sequence(text, prepend_bos.unwrap_or(self.default_prepend_bos), true)?
            }
            TokenInput::Ids(ids) => ids_vec(ids)?,
        };
        ids.iter().map(|&id| self.decode(&[id])).collect()
    }

    /// TransformerLens's `to_single_token`: the id of a text that is exactly one token (no BOS).
    ///
    /// Otherwise a [`LensError::NotSingleToken`] listing its tokens.
    pub fn to_single_token(&self, text: &str) -> Result<i64> {
        let ids = self.sequence(text, false, false)?;
        match ids.as_slice() {
            [id] => Ok(*id),
            _ => Err(LensError::NotSingleToken {
                text: text.to_string(),
                tokens: ids
                    .iter()
                    .map(|&id| self.decode(&[id]))
                    .collect::<Result<_>>()?,
            }),
        }
    }

    /// TransformerLens's `to_single_str_token`: the text of one id.
    pub fn to_single_str_token(&self, id: i64) -> Result<String> {
        self.decode(&[id])
    }

    /// An attention mask for ids that did not come from [`Tokenizer::to_tokens`], inferred the
    /// way TransformerLens's `get_attention_mask` does, with this tokenizer's pad and BOS ids
    /// and defaults; see [`attention_mask_from_ids`].
    pub fn attention_mask(
        &self,
        tokens: &Tensor,
        prepend_bos: Option<bool>,
        padding_side: Option<PaddingSide>,
    ) -> Result<Tensor> {
        let pad = self.pad.ok_or(LensError::MissingSpecialToken("pad"))?;
        attention_mask_from_ids(
            tokens,
            pad,
            self.bos,
            prepend_bos.unwrap_or(self.default_prepend_bos),
            padding_side.unwrap_or(self.padding_side),
        )
    }

    /// The ids of one text: BOS handled, optionally truncated.
    fn sequence(&self, text: &str, prepend_bos: bool, truncate: bool) -> Result<Vec<i64>> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| self.error(format!("encoding {text:?}: {e}")))?;
        let mut ids: Vec<i64> = encoding.get_ids().iter().map(|&i| i64::from(i)).collect();
        if self.prepends_bos {
            if !prepend_bos && ids.first().copied() == self.bos {
                ids.remove(0);
            }
        } else if prepend_bos {
            let bos = self.bos.ok_or(LensError::MissingSpecialToken("BOS"))?;
            ids.insert(0, bos);
        }
        if truncate {
            if let Some(n_ctx) = self.n_ctx {
                ids.truncate(n_ctx as usize);
            }
        }
        Ok(ids)
    }

    fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids = ids
            .iter()
            .map(|&id| {
                lookup(&self.inner, id)
                    .map(|_| id as u32)
                    .ok_or(LensError::UnknownTokenId { id })
            })
            .collect::<Result<Vec<u32>>>()?;
        self.inner
            .decode(&ids, false)
            .map_err(|e| self.error(format!("decoding {ids:?}: {e}")))
    }

    fn error(&self, message: String) -> LensError {
        LensError::Tokenizer {
            path: self.path.clone(),
            message,
        }
    }
}

/// TransformerLens's `get_attention_mask`, for ids whose padding is not known: 0 on the run of
/// pad ids at the padded end of each row, 1 elsewhere.
///
/// With left padding, when BOS is prepended and equals the pad id (GPT-2), the last pad of the
/// leading run is the real BOS and is unmasked. With right padding, a row made only of pad ids
/// keeps position 0 as its BOS in that case (TransformerLens masks the whole row there). A text
/// that itself ends (right) or starts (left) with the pad id cannot be told from padding; use
/// the mask of [`Tokenizer::to_tokens`] when you have it.
///
/// `tokens` is a `[batch, pos]` or `[pos]` integer tensor; the mask has its shape, int64, on
/// its device.
pub fn attention_mask_from_ids(
    tokens: &Tensor,
    pad_token_id: i64,
    bos_token_id: Option<i64>,
    prepend_bos: bool,
    side: PaddingSide,
) -> Result<Tensor> {
    let shape = tokens.size();
    let rows = rows(tokens)?;
    let bos_is_pad = prepend_bos && bos_token_id == Some(pad_token_id);
    let mut mask = Vec::with_capacity(rows.iter().map(Vec::len).sum());
    for row in &rows {
        let mut row_mask = vec![1i64; row.len()];
        match side {
            PaddingSide::Left => {
                let n_pad = row.iter().take_while(|&&t| t == pad_token_id).count();
                row_mask[..n_pad].fill(0);
                if bos_is_pad && n_pad > 0 {
                    row_mask[n_pad - 1] = 1;
                }
            }
            PaddingSide::Right => {
                let n_pad = row.iter().rev().take_while(|&&t| t == pad_token_id).count();
                let len = row.len();
                row_mask[len - n_pad..].fill(0);
                if bos_is_pad && n_pad == len && len > 0 {
                    row_mask[0] = 1;
                }
            }
        }
        mask.extend(row_mask);
    }
    let mask = int_tensor(&mask, &shape)?;
    mask.f_to_device(tokens.device())
        .map_err(|e| LensError::torch("moving the attention mask", e))
}

fn lookup(inner: &tokenizers::Tokenizer, id: i64) -> Option<String> {
    u32::try_from(id).ok().and_then(|id| inner.id_to_token(id))
}

fn int_tensor(values: &[i64], shape: &[i64]) -> Result<Tensor> {
    Tensor::f_from_slice(values)
        .and_then(|t| t.f_reshape(shape))
        .map_err(|e| LensError::torch(format!("building a {shape:?} token tensor"), e))
}

fn is_integer(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Uint8 | Kind::Int8 | Kind::Int16 | Kind::Int | Kind::Int64
    )
}

/// The ids of a slice, or of a 0-D, 1-D or `[1, pos]` integer tensor.
fn ids_vec(ids: Ids<'_>) -> Result<Vec<i64>> {
    match ids {
        Ids::Slice(s) => Ok(s.to_vec()),
        Ids::Tensor(t) => {
            let shape = t.size();
            let ok = is_integer(t.kind()) && matches!(shape.as_slice(), [] | [_] | [1, _]);
            if !ok {
                return Err(LensError::BadTokenTensor {
                    expected: "a 0-D, 1-D or [1, pos] integer",
                    shape,
                    kind: t.kind(),
                });
            }
            tensor_to_vec(t)
        }
    }
}

/// The rows of a `[batch, pos]` (or `[pos]`, one row) integer tensor.
fn rows(tokens: &Tensor) -> Result<Vec<Vec<i64>>> {
    let shape = tokens.size();
    let (batch, pos) = match (is_integer(tokens.kind()), shape.as_slice()) {
        (true, [p]) => (1, *p),
        (true, [b, p]) => (*b, *p),
        _ => {
            return Err(LensError::BadTokenTensor {
                expected: "a [batch, pos] or [pos] integer",
                shape,
                kind: tokens.kind(),
            })
        }
    };
    let flat = tensor_to_vec(tokens)?;
    Ok((0..batch as usize)
        .map(|b| flat[b * pos as usize..(b + 1) * pos as usize].to_vec())
        .collect())
}

fn tensor_to_vec(t: &Tensor) -> Result<Vec<i64>> {
    let flat = t
        .f_to_device(Device::Cpu)
        .and_then(|t| t.f_to_kind(Kind::Int64))
        .and_then(|t| t.f_reshape([-1]))
        .map_err(|e| LensError::torch("reading token ids", e))?;
    Vec::<i64>::try_from(&flat).map_err(|e| LensError::torch("reading token ids", e))
}
