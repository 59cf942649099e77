//! The generation loop and token sampler both models share. Each model supplies one closure
//! that returns the next-token logits, using its own KV cache or not; everything else (sampling,
//! EOS handling, growing the attention mask) is here, so greedy generation with and without a
//! cache can only differ through the model's cache itself.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

use crate::model::{GenerateOptions, ModelError, ModelResult};

/// Generates from `tokens` `[b, p]` (with `attention_mask` `[b, p]` for left-padded batches).
///
/// `next_logits(all_tokens, attention_mask, n_new)` must return the logits of the last position,
/// `[b, d_vocab]`, for `all_tokens`; `n_new` says how many tokens at the end it has not seen yet
/// (the whole prompt on the first call, then 1), so a model with a KV cache feeds only those.
///
/// Returns prompt and continuation `[b, p + n]`, `n <= max_new_tokens` (fewer when every row has
/// produced EOS and `stop_at_eos` is set; finished rows are filled with EOS).
pub fn generate_with(
    tokens: &Tensor,
    attention_mask: Option<&Tensor>,
    options: &GenerateOptions,
    default_eos: i64,
    mut next_logits: impl FnMut(&Tensor, Option<&Tensor>, i64) -> ModelResult<Tensor>,
) -> ModelResult<Tensor> {
    let mut generation = Generation::new(tokens, attention_mask, options, default_eos)?;
    while let Some(step) = generation.step(&mut next_logits) {
        let _new_tokens = step?;
    }
    Ok(generation.into_tokens())
}

/// One generation in progress, a step at a time: the sequences so far, their attention mask,
/// the rows that have produced EOS. [`generate_with`] runs it to the end; a stream
/// ([`crate::inspect::generate_stream`]) hands out each step's tokens as they come.
pub struct Generation {
    all: Tensor,
    mask: Option<Tensor>,
    finished: Tensor,
    n_new: i64,
    steps_left: usize,
    eos: i64,
    options: GenerateOptions,
    rng: StdRng,
}

impl Generation {
    /// A generation from `tokens` `[b, p]`, as [`generate_with`] starts one.
    ///
    /// Errors: tokens that are not `[batch, pos]` with at least one token; a non-positive
    /// temperature when sampling.
    pub fn new(
        tokens: &Tensor,
        attention_mask: Option<&Tensor>,
        options: &GenerateOptions,
        default_eos: i64,
    ) -> ModelResult<Self> {
        if tokens.dim() != 2 || tokens.numel() == 0 {
            return Err(ModelError::InvalidInput(format!(
                "generate needs tokens [batch, pos], got shape {:?}",
                tokens.size()
            )));
        }
        if options.do_sample && options.temperature <= 0.0 {
            return Err(ModelError::InvalidInput(format!(
                "temperature must be positive when sampling, got {}",
                options.temperature
            )));
        }
        // A generator of our own, not libtorch's global one: another thread sampling at the same
        // time must not change which tokens a fixed seed gives.
        let rng = match options.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let device = tokens.device();
        let all = tokens.to_kind(Kind::Int64);
        Ok(Generation {
            n_new: all.size()[1],
            finished: Tensor::zeros([all.size()[0]], (Kind::Bool, device)),
            all,
            mask: attention_mask.map(|m| m.to_kind(Kind::Int64).to_device(device)),
            steps_left: options.max_new_tokens,
            eos: options.eos_token_id.unwrap_or(default_eos),
            options: options.clone(),
            rng,
        })
    }

    /// One step: the next token of every row `[b]` (EOS for rows already finished), or `None`
    /// once `max_new_tokens` are out or, with `stop_at_eos`, every row has finished.
    /// `next_logits` is as for [`generate_with`].
    pub fn step(
        &mut self,
        next_logits: impl FnOnce(&Tensor, Option<&Tensor>, i64) -> ModelResult<Tensor>,
    ) -> Option<ModelResult<Tensor>> {
        let all_finished =
            self.options.stop_at_eos && bool::try_from(self.finished.all()).unwrap_or(false);
        if self.steps_left == 0 || all_finished {
            return None;
        }
        self.steps_left -= 1;
        Some(self.advance(next_logits))
    }

    fn advance(
        &mut self,
        next_logits: impl FnOnce(&Tensor, Option<&Tensor>, i64) -> ModelResult<Tensor>,
    ) -> ModelResult<Tensor> {
        let (batch, device) = (self.all.size()[0], self.all.device());
        let logits = next_logits(&self.all, self.mask.as_ref(), self.n_new)?;
        let mut next = sample(&logits, &self.all, &self.options, &mut self.rng)?;
        if self.options.stop_at_eos {
            next = next.where_self(
                &self.finished.logical_not(),
                &Tensor::full([batch], self.eos, (Kind::Int64, device)),
            );
            self.finished = self.finished.logical_or(&next.eq(self.eos));
        }
        self.all = Tensor::cat(&[&self.all, &next.unsqueeze(1)], 1);
        self.mask = self
            .mask
            .take()
            .map(|m| Tensor::cat(&[&m, &Tensor::ones([batch, 1], (Kind::Int64, device))], 1));
        self.n_new = 1;
        Ok(next)
    }

    /// The prompt and every token generated so far, `[b, p + steps]`.
    pub fn tokens(&self) -> &Tensor {
        &self.all
    }

    /// [`Generation::tokens`], consuming the generation.
    pub fn into_tokens(self) -> Tensor {
        self.all
    }
}

/// Picks the next token per row from `logits` `[b, V]`: the most likely one, or a sample after
/// temperature, frequency penalty (over every token so far), then top-k or else top-p filtering
/// (TransformerLens's `sample_logits`).
pub fn sample(
    logits: &Tensor,
    tokens_so_far: &Tensor,
    options: &GenerateOptions,
    rng: &mut StdRng,
) -> ModelResult<Tensor> {
    let logits = logits.to_kind(Kind::Float);
    if !options.do_sample {
        return Ok(logits.argmax(-1, false));
    }
    let mut logits = logits / options.temperature;
    if options.freq_penalty != 0.0 {
        let vocab = logits.size()[1];
        let counts = Tensor::zeros_like(&logits).scatter_add(
            1,
            tokens_so_far,
            &Tensor::ones_like(tokens_so_far).to_kind(Kind::Float),
        );
        logits -= counts.narrow(1, 0, vocab) * options.freq_penalty;
    }
    if let Some(k) = options.top_k {
        if k < 1 {
            return Err(ModelError::InvalidInput(format!(
                "top_k must be at least 1, got {k}"
            )));
        }
        let (top, _) = logits.topk(k.min(logits.size()[1]), -1, true, true);
        let threshold = top.narrow(1, top.size()[1] - 1, 1);
        logits = logits.masked_fill(&logits.lt_tensor(&threshold), f64::NEG_INFINITY);
    } else if let Some(p) = options.top_p {
        if !(0.0..=1.0).contains(&p) {
            return Err(ModelError::InvalidInput(format!(
                "top_p must be in [0, 1], got {p}"
            )));
        }
        let (sorted, indices) = logits.sort(-1, true);
        let cumulative = sorted.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
        // Remove tokens past the threshold, but always keep the most likely one.
        let remove_sorted = cumulative.gt(p);
        let remove_sorted = Tensor::cat(
            &[
                &remove_sorted.narrow(1, 0, 1).zeros_like(),
                &remove_sorted.narrow(1, 0, remove_sorted.size()[1] - 1),
            ],
            1,
        );
        let remove = remove_sorted
            .zeros_like()
            .scatter(1, &indices, &remove_sorted);
        logits = logits.masked_fill(&remove, f64::NEG_INFINITY);
    }
    Ok(draw(&logits.softmax(-1, Kind::Double), rng))
}

/// One index per row of `probs` `[b, V]`, drawn by inverting the cumulative distribution at a
/// uniform number from `rng`.
fn draw(probs: &Tensor, rng: &mut StdRng) -> Tensor {
    let device = probs.device();
    let cumulative = probs.to_device(Device::Cpu).cumsum(-1, Kind::Double);
    let (rows, vocab) = (cumulative.size()[0], cumulative.size()[1]);
    let totals = cumulative.narrow(1, vocab - 1, 1);
    let uniforms: Vec<f64> = (0..rows).map(|_| rng.gen::<f64>()).collect();
    let thresholds = Tensor::from_slice(&uniforms).unsqueeze(1) * totals;
    let index =
        cumulative
            .le_tensor(&thresholds)
            .sum_dim_intlist([1i64].as_slice(), false, Kind::Int64);
    index.clamp_max(vocab - 1).to_device(device)
}
