//! Generation benchmarks: greedy decoding, the KV cache, sampling reproducibility, batches.

use lens_core::model::{GenerateOptions, LensModel, ModelResult};
use tch::{Kind, Tensor};

use super::{guarded, reference_error, Inputs};
use crate::result::BenchmarkResult;

/// New tokens of each generation check: the first step fills the cache from the prompt,
/// the rest each read it and extend it, so four steps exercise it three times over; more steps
/// repeat the same computation.
pub const CHECK_TOKENS: usize = 4;

fn greedy_options(use_cache: bool, max_new_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        do_sample: false,
        stop_at_eos: false,
        use_past_kv_cache: use_cache,
        ..GenerateOptions::default()
    }
}

fn sampled(seed: u64) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: CHECK_TOKENS,
        do_sample: true,
        temperature: 0.7,
        seed: Some(seed),
        stop_at_eos: false,
        ..GenerateOptions::default()
    }
}

fn run(
    model: &dyn LensModel,
    tokens: &Tensor,
    mask: Option<&Tensor>,
    options: &GenerateOptions,
) -> ModelResult<Tensor> {
    let _no_grad = tch::no_grad_guard();
    model.generate(tokens, mask, options)
}

/// The model's cached greedy continuation of the prompts as one left-padded batch
/// ([`CHECK_TOKENS`] new tokens): made once and read by all three generation checks, each of
/// which compares it with runs of its own.
pub struct GreedyBatch {
    /// Each prompt's tokens, unpadded.
    prompts: Vec<Tensor>,
    /// Them left-padded.
    batch: Tensor,
    /// The batch's attention mask.
    mask: Tensor,
    /// The batch with its new tokens.
    generated: Tensor,
}

impl GreedyBatch {
    /// Runs the model's cached greedy generation on the batch.
    pub fn generate(model: &dyn LensModel, inputs: &Inputs) -> ModelResult<Self> {
        // The prompts alone: the text is several times longer, and padding every prompt to
        // its length would multiply the batch's positions (and a step's arithmetic) threefold.
        let prompts: Vec<Tensor> = inputs.prompts.iter().map(Tensor::shallow_clone).collect();
        let (batch, mask) = left_padded(&prompts, pad_token(model));
        let generated = run(
            model,
            &batch,
            Some(&mask),
            &greedy_options(true, CHECK_TOKENS),
        )?;
        Ok(GreedyBatch {
            prompts,
            batch,
            mask,
            generated,
        })
    }

    /// Row `row` of `t` (the batch with new tokens) without its padding, `[1, len]`.
    fn unpadded(&self, t: &Tensor, row: usize) -> Tensor {
        let padding = self.batch.size()[1] - self.prompts[row].size()[1];
        let tokens = t.get(row as i64);
        tokens
            .narrow(0, padding, tokens.size()[0] - padding)
            .unsqueeze(0)
    }
}

/// Runs `check` on the model's [`GreedyBatch`], or reports why it could not be generated.
fn with_greedy_batch(
    name: &str,
    model: &dyn LensModel,
    inputs: &Inputs,
    check: impl FnOnce(&GreedyBatch) -> BenchmarkResult,
) -> BenchmarkResult {
    let mut greedy = None;
    let failed = guarded(name, || {
        greedy = Some(GreedyBatch::generate(model, inputs)?);
        Ok(BenchmarkResult::pass(name, "generated"))
    });
    match greedy {
        Some(greedy) => check(&greedy),
        None => failed,
    }
}

/// Greedy generation adds exactly the requested tokens, and (with a reference) the same ones,
/// for the prompts as one left-padded batch — or, where the two part ways, the step
/// was a tie within the dtype's resolution: the model's logits for its own token and for the
/// reference's differ by at most `tolerance` of their scale (after that step the continuations
/// legitimately differ).
pub fn generation(
    model: &dyn LensModel,
    reference: Option<&dyn LensModel>,
    inputs: &Inputs,
    tolerance: f64,
) -> BenchmarkResult {
    with_greedy_batch("generation", model, inputs, |greedy| {
        generation_given(model, reference, greedy, tolerance)
    })
}

/// [`generation`] on the model's [`GreedyBatch`], made elsewhere.
pub fn generation_given(
    model: &dyn LensModel,
    reference: Option<&dyn LensModel>,
    greedy: &GreedyBatch,
    tolerance: f64,
) -> BenchmarkResult {
    let name = "generation";
    guarded(name, || {
        let (batch, mask, ours) = (&greedy.batch, &greedy.mask, &greedy.generated);
        let expected = [batch.size()[0], batch.size()[1] + CHECK_TOKENS as i64];
        if ours.size() != expected {
            return Ok(BenchmarkResult::fail(
                name,
                format!("generated {:?}, expected {expected:?}", ours.size()),
            ));
        }
        let rows = greedy.prompts.len();
        let Some(reference) = reference else {
            return Ok(BenchmarkResult::pass(
                name,
                format!("{CHECK_TOKENS} tokens generated for each of {rows} rows"),
            ));
        };
        let options = greedy_options(true, CHECK_TOKENS);
        let theirs = run(reference, batch, Some(mask), &options).map_err(reference_error)?;
        if ours.equal(&theirs) {
            return Ok(BenchmarkResult::pass(
                name,
                format!("{CHECK_TOKENS} greedy tokens for each of {rows} rows identical to the reference's"),
            ));
        }
        let row = (0..rows)
            .find(|&r| !ours.get(r as i64).equal(&theirs.get(r as i64)))
            .unwrap_or(0);
        let (ours_row, theirs_row) = (greedy.unpadded(ours, row), greedy.unpadded(&theirs, row));
        let (a, b) = (tokens_of(&ours_row), tokens_of(&theirs_row));
        let step = a
            .iter()
            .zip(&b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len()));
        let gap = tie_gap(
            model,
            &ours_row,
            step,
            a.get(step).copied(),
            b.get(step).copied(),
        )?;
        Ok(if gap <= tolerance {
            BenchmarkResult::pass(name, format!("identical to the reference's up to a tie in row {row} at position {step} (logit gap {gap:.2e})"))
        } else {
            BenchmarkResult::fail(name, format!("greedy tokens of row {row} differ from the reference's at position {step} (logit gap {gap:.2e})"))
                .with("ours", a)
                .with("reference", b)
        })
    })
}

/// How far apart the model's logits for the two candidate tokens are at `step`, relative to
/// their scale (`f64::INFINITY` when one sequence simply ended).
fn tie_gap(
    model: &dyn LensModel,
    ours: &Tensor,
    step: usize,
    a: Option<i64>,
    b: Option<i64>,
) -> ModelResult<f64> {
    let (Some(a), Some(b)) = (a, b) else {
        return Ok(f64::INFINITY);
    };
    let _no_grad = tch::no_grad_guard();
    let prefix = ours.narrow(1, 0, step as i64);
    let logits = model
        .forward(&prefix, &lens_core::model::ForwardOptions::default())?
        .logits()?
        .select(1, -1)
        .get(0)
        .to_kind(Kind::Double);
    let scale = logits.abs().max().double_value(&[]).max(1.0);
    Ok((logits.double_value(&[a]) - logits.double_value(&[b])).abs() / scale)
}

/// Greedy generation with the KV cache is token-identical to generation without it, on the
/// prompts as one left-padded batch (padding, position ids and the cache together, in one run of
/// each: a step costs about the same for a batch of short rows, it reads every weight once); and
/// sampling on the text with a fixed seed reproduces itself (the longest cache of the checks). For a model whose cached generation differs by
/// definition (Gemma 3's bidirectional attention), both runs are made and the reason said
/// instead of the comparison.
pub fn generation_with_kv_cache(model: &dyn LensModel, inputs: &Inputs) -> BenchmarkResult {
    with_greedy_batch("generation_with_kv_cache", model, inputs, |greedy| {
        generation_with_kv_cache_given(model, inputs, greedy)
    })
}

/// [`generation_with_kv_cache`] on the model's [`GreedyBatch`], made elsewhere.
pub fn generation_with_kv_cache_given(
    model: &dyn LensModel,
    inputs: &Inputs,
    greedy: &GreedyBatch,
) -> BenchmarkResult {
    let name = "generation_with_kv_cache";
    guarded(name, || {
        let mut problems = Vec::new();
        let dependence = model.cache_dependence();
        let (batch, mask, cached) = (&greedy.batch, &greedy.mask, &greedy.generated);
        let uncached = run(
            model,
            batch,
            Some(mask),
            &greedy_options(false, CHECK_TOKENS),
        )?;
        if dependence.is_none() && !cached.equal(&uncached) {
            for row in 0..cached.size()[0] {
                let (c, u) = (cached.get(row), uncached.get(row));
                if !c.equal(&u) {
                    problems.push(format!(
                        "prompt {row}: cached {:?} vs uncached {:?}",
                        tokens_of(&c),
                        tokens_of(&u)
                    ));
                }
            }
        }
        let first = run(model, &inputs.tokens, None, &sampled(42))?;
        let second = run(model, &inputs.tokens, None, &sampled(42))?;
        if !first.equal(&second) {
            problems.push("sampling with seed 42 gave different tokens on a second run".to_owned());
        }
        Ok(if problems.is_empty() {
            let compared = match &dependence {
                None => "cached = uncached greedy".to_owned(),
                Some(why) => format!("cached and uncached greedy run, not compared: {why}"),
            };
            BenchmarkResult::pass(
                name,
                format!(
                    "{compared} on a left-padded batch of {} prompts; seeded \
                     sampling reproducible",
                    inputs.prompts.len()
                ),
            )
        } else {
            BenchmarkResult::fail(name, format!("{} problems", problems.len()))
                .with("problems", problems)
        })
    })
}

/// The model's padding token (0 without a tokenizer or a pad token).
fn pad_token(model: &dyn LensModel) -> i64 {
    model
        .tokenizer()
        .and_then(|t| t.pad_token_id())
        .unwrap_or(0)
}

/// Repeated calls give the same tokens (the [`GreedyBatch`] twice), and each prompt's row of
/// that batch is the prompt's own greedy continuation (for a model whose computation depends on
/// the batch, Phi-3's `longrope`, the rows are generated and its reason said instead of
/// compared).
pub fn multiple_generation_calls(model: &dyn LensModel, inputs: &Inputs) -> BenchmarkResult {
    with_greedy_batch("multiple_generation_calls", model, inputs, |greedy| {
        multiple_generation_calls_given(model, inputs, greedy)
    })
}

/// [`multiple_generation_calls`] on the model's [`GreedyBatch`] (its first call), made
/// elsewhere.
pub fn multiple_generation_calls_given(
    model: &dyn LensModel,
    inputs: &Inputs,
    greedy: &GreedyBatch,
) -> BenchmarkResult {
    let name = "multiple_generation_calls";
    guarded(name, || {
        let mut problems = Vec::new();
        let (batch, mask, batched) = (&greedy.batch, &greedy.mask, &greedy.generated);
        let options = greedy_options(true, CHECK_TOKENS);
        if !run(model, batch, Some(mask), &options)?.equal(batched) {
            problems.push("two calls on the same batch differ".to_owned());
        }
        let dependence = model.batch_dependence();
        if inputs.prompts.len() > 1 && dependence.is_none() {
            let width = batch.size()[1];
            for (i, prompt) in inputs.prompts.iter().enumerate() {
                let single = run(model, prompt, None, &options)?;
                let row = batched.get(i as i64);
                let generated = row.narrow(0, width, CHECK_TOKENS as i64);
                let expected = single
                    .get(0)
                    .narrow(0, prompt.size()[1], CHECK_TOKENS as i64);
                if !generated.equal(&expected) {
                    problems.push(format!(
                        "prompt {i}: batched {:?} vs alone {:?}",
                        tokens_of(&generated),
                        tokens_of(&expected)
                    ));
                }
            }
        }
        Ok(if problems.is_empty() {
            let batched = match &dependence {
                None => "batched = one by one".to_owned(),
                Some(why) => format!("batched not compared: {why}"),
            };
            BenchmarkResult::pass(
                name,
                format!("{} prompts: repeatable; {batched}", inputs.prompts.len()),
            )
        } else {
            BenchmarkResult::fail(name, format!("{} problems", problems.len()))
                .with("problems", problems)
        })
    })
}

/// Left-pads `[1, p_i]` prompts into `[n, max p]` with an attention mask.
pub fn left_padded(prompts: &[Tensor], pad: i64) -> (Tensor, Tensor) {
    let width = prompts.iter().map(|p| p.size()[1]).max().unwrap_or(0);
    let device = prompts
        .first()
        .map(|p| p.device())
        .unwrap_or(tch::Device::Cpu);
    let rows: Vec<(Tensor, Tensor)> = prompts
        .iter()
        .map(|p| {
            let missing = width - p.size()[1];
            let pads = Tensor::full([1, missing], pad, (Kind::Int64, device));
            let row = Tensor::cat(&[&pads, &p.to_kind(Kind::Int64)], 1);
            let mask = Tensor::cat(
                &[
                    &Tensor::zeros([1, missing], (Kind::Int64, device)),
                    &Tensor::ones([1, p.size()[1]], (Kind::Int64, device)),
                ],
                1,
            );
            (row, mask)
        })
        .collect();
    let tokens: Vec<&Tensor> = rows.iter().map(|(t, _)| t).collect();
    let masks: Vec<&Tensor> = rows.iter().map(|(_, m)| m).collect();
    (Tensor::cat(&tokens, 0), Tensor::cat(&masks, 0))
}

fn tokens_of(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.reshape([-1])).unwrap_or_default()
}
