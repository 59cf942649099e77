//! Text in and out: TransformerLens's `to_tokens`, `to_string`, `to_str_tokens`, and forward
//! passes and generation on text.

use lens_core::model::{ForwardOptions, ForwardOutput, GenerateOptions, ModelError, ModelResult};
use lens_core::{PaddingSide, TokenInput, Tokenizer, Tokens};
use tch::Tensor;

use super::TransformerBridge;

impl TransformerBridge {
    fn require_tokenizer(&self) -> ModelResult<&Tokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            ModelError::Unsupported("text input: this model was loaded without a tokenizer".into())
        })
    }

    /// TransformerLens's `to_tokens`: BOS prepended unless `prepend_bos` is `Some(false)`,
    /// padded on `padding_side` (default right), truncated to `n_ctx`; ids and attention mask
    /// on the model's device.
    pub fn to_tokens(
        &self,
        texts: &[&str],
        prepend_bos: Option<bool>,
        padding_side: Option<PaddingSide>,
    ) -> ModelResult<Tokens> {
        let tokens = self
            .require_tokenizer()?
            .to_tokens(texts, prepend_bos, padding_side, true)?;
        Ok(tokens.to_device(self.hf.device())?)
    }

    /// TransformerLens's `to_string` for one sequence of ids (`[pos]` or `[1, pos]`).
    pub fn to_string(&self, tokens: &Tensor) -> ModelResult<String> {
        Ok(self.require_tokenizer()?.to_string(tokens)?)
    }

    /// TransformerLens's `to_string` for a batch `[b, pos]`: one text per row.
    pub fn to_strings(&self, tokens: &Tensor) -> ModelResult<Vec<String>> {
        Ok(self.require_tokenizer()?.to_strings(tokens)?)
    }

    /// TransformerLens's `to_str_tokens`: the text of each token of a text (tokenized with BOS
    /// per `prepend_bos`) or of ids.
    pub fn to_str_tokens<'a>(
        &self,
        input: impl Into<TokenInput<'a>>,
        prepend_bos: Option<bool>,
    ) -> ModelResult<Vec<String>> {
        Ok(self
            .require_tokenizer()?
            .to_str_tokens(input, prepend_bos)?)
    }

    /// TransformerLens's `to_single_token`: the id of a text that is exactly one token.
    pub fn to_single_token(&self, text: &str) -> ModelResult<i64> {
        Ok(self.require_tokenizer()?.to_single_token(text)?)
    }

    /// Forward pass on texts. Several texts are left-padded (as the Python bridge does for a
    /// list of strings) and their attention mask is used.
    pub fn forward_text(
        &self,
        texts: &[&str],
        options: &ForwardOptions,
    ) -> ModelResult<ForwardOutput> {
        let side = (texts.len() > 1).then_some(PaddingSide::Left);
        let tokens = self.to_tokens(texts, None, side)?;
        let mask = (texts.len() > 1).then_some(&tokens.attention_mask);
        let options = ForwardOptions {
            attention_mask: options.attention_mask.or(mask),
            ..*options
        };
        self.forward(&tokens.ids, &options)
    }

    /// Generates continuations of texts (left-padded together) and decodes prompt and
    /// continuation of each.
    pub fn generate_text(
        &self,
        texts: &[&str],
        options: &GenerateOptions,
    ) -> ModelResult<Vec<String>> {
        let tokens = self.to_tokens(texts, None, Some(PaddingSide::Left))?;
        let out = self.generate(&tokens.ids, Some(&tokens.attention_mask), options)?;
        self.to_strings(&out)
    }
}
