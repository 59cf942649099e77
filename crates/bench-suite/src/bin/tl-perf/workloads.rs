//! The timed workloads: forward, backward, patching, the research workloads, generation.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bridge::{Gpt2LMHeadModel, HfForward, TransformerBridge};
use hooked_ref::HookedTransformer;
use hookpoint::{CacheOptions, Hook, HookSpec, NamesFilter};
use lens_core::model::{ForwardOptions, GenerateOptions, LensModel, ReturnType};
use serde_json::{json, Value};
use tch::{Device, Tensor};

use crate::measure::{random_tokens, Plan};
use crate::system::CpuSnap;
use crate::timing::{
    interleaved, median, quiet_sample, sync, time_ms, Stat, Variant, BUSY_LIMIT, RETRIES,
};
use crate::AnyResult;

pub(crate) fn measure_forward(
    hf: &Gpt2LMHeadModel,
    bridge: &TransformerBridge,
    hooked: &HookedTransformer,
    tokens: &Tensor,
    device: Device,
    repeats: usize,
) -> AnyResult<BTreeMap<String, Stat>> {
    let _guard = tch::no_grad_guard();
    let opts = ForwardOptions::default();
    let all = CacheOptions::default();
    let mut variants: Vec<Variant<'_>> = vec![
        (
            "hf",
            Box::new(|| {
                let out = hf.forward(HfForward {
                    input_ids: Some(tokens),
                    ..HfForward::default()
                })?;
                let _ = std::hint::black_box(out.logits);
                Ok(())
            }),
        ),
        (
            "hf_in_bridge",
            Box::new(|| {
                let out = bridge.hf_model().forward(HfForward {
                    input_ids: Some(tokens),
                    ..HfForward::default()
                })?;
                let _ = std::hint::black_box(out.logits);
                Ok(())
            }),
        ),
        (
            "bridge",
            Box::new(|| {
                std::hint::black_box(bridge.forward(tokens, &opts)?);
                Ok(())
            }),
        ),
        (
            "bridge_cache",
            Box::new(|| {
                let (out, cache) = LensModel::run_with_cache(bridge, tokens, &opts, &all)?;
                if cache.len() < 394 {
                    return Err(format!("bridge cache has {} entries", cache.len()).into());
                }
                std::hint::black_box((out, cache));
                Ok(())
            }),
        ),
        (
            "hooked",
            Box::new(|| {
                std::hint::black_box(hooked.forward(tokens, &opts)?);
                Ok(())
            }),
        ),
        (
            "hooked_cache",
            Box::new(|| {
                let (out, cache) = LensModel::run_with_cache(hooked, tokens, &opts, &all)?;
                if cache.len() < 210 {
                    return Err(format!("hooked cache has {} entries", cache.len()).into());
                }
                std::hint::black_box((out, cache));
                Ok(())
            }),
        ),
    ];
    interleaved(device, 1, repeats, &mut variants)
}

/// Forward (loss) + backward on the bridge, with and without a backward hook on every hook
/// point; the forward and backward halves are timed separately as well.
pub(crate) fn measure_backward(
    bridge: &TransformerBridge,
    tokens: &Tensor,
    device: Device,
    repeats: usize,
) -> AnyResult<Value> {
    let opts = ForwardOptions {
        return_type: ReturnType::Loss,
        ..ForwardOptions::default()
    };
    let fired = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = fired.clone();
    let hook = Hook::new(move |_grad, _ctx| {
        counter.fetch_add(1, Ordering::Relaxed);
        None
    });
    let specs = [HookSpec::backward(NamesFilter::All, hook)];
    let registry = bridge.hook_registry();
    // One step: (forward ms, forward + backward ms), the gradients cleared beforehand.
    let step = |hooked: bool| -> AnyResult<(f64, f64)> {
        LensModel::zero_grad(bridge);
        sync(device);
        let start = Instant::now();
        let mut fwd_ms = 0.0;
        let mut body = || -> AnyResult<()> {
            let out = bridge.forward(tokens, &opts)?;
            let loss = out.loss()?;
            sync(device);
            fwd_ms = start.elapsed().as_secs_f64() * 1e3;
            hookpoint::backward(loss)?;
            Ok(())
        };
        if hooked {
            registry.with_hooks(&specs, body)??;
        } else {
            body()?;
        }
        sync(device);
        Ok((fwd_ms, start.elapsed().as_secs_f64() * 1e3))
    };
    step(false)?;
    fired.store(0, Ordering::Relaxed);
    step(true)?;
    let hooks_fired = fired.load(Ordering::Relaxed);
    // name -> (totals, forward halves, backward halves, others' cores, retaken)
    type Samples = (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, usize);
    let mut samples: BTreeMap<&str, Samples> = BTreeMap::new();
    for _ in 0..repeats {
        for hooked in [false, true] {
            let entry = samples
                .entry(if hooked { "hooked" } else { "plain" })
                .or_default();
            let mut again = 0;
            loop {
                let before = CpuSnap::now();
                let (fwd, total) = step(hooked)?;
                let busy = CpuSnap::now().others_since(&before);
                if busy > BUSY_LIMIT && again < RETRIES {
                    again += 1;
                    continue;
                }
                entry.0.push(total);
                entry.1.push(fwd);
                entry.2.push(total - fwd);
                entry.3.push(busy);
                entry.4 += again;
                break;
            }
        }
    }
    LensModel::zero_grad(bridge);
    let mut value = serde_json::Map::new();
    for (name, (total, fwd, bwd, busy, retaken)) in samples {
        let mut total = Stat::from_samples(total);
        total.others_cores = median(&busy);
        total.retaken = retaken;
        value.insert(
            name.to_owned(),
            json!({
                "total": total,
                "forward": Stat::from_samples(fwd),
                "backward": Stat::from_samples(bwd),
            }),
        );
    }
    value.insert("backward_hooks_fired".into(), json!(hooks_fired));
    value.insert("batch".into(), json!("1x128"));
    value.insert(
        "loss".into(),
        json!("TransformerLens next-token loss (mean)"),
    );
    Ok(Value::Object(value))
}

/// The IOI-style prompt pair of the patching sweep: 15 tokens with BOS, so the `resid_pre` sweep
/// over GPT-2 small's 12 layers is 180 patches.
const PATCH_CLEAN: &str = "When Mary and John went to the store, John gave a drink to";
const PATCH_CORRUPTED: &str = "When Mary and John went to the store, Mary gave a drink to";

/// The `resid_pre` sweep (every layer x position, a logit difference at the last position): one
/// patch per forward pass (as TransformerLens runs it) once, batched (the batch size chosen
/// from memory) `repeats` times, one unpatched forward pass of the corrupted prompt (the cost
/// of streaming the weights once at this length), and one unhooked forward pass of as many
/// copies of it as there are patches (the arithmetic of the batched sweep's one pass).
pub(crate) fn measure_patching(
    bridge: &TransformerBridge,
    device: Device,
    repeats: usize,
) -> AnyResult<Value> {
    use lens_core::patching::{activation_patch, Activation, Metric, PatchAxes, PatchOptions};
    let tokens = |text: &str| -> AnyResult<Tensor> {
        Ok(bridge.to_tokens(&[text], None, None)?.ids.to_device(device))
    };
    let (clean, corrupted) = (tokens(PATCH_CLEAN)?, tokens(PATCH_CORRUPTED)?);
    let (mary, john) = (
        bridge.to_single_token(" Mary")?,
        bridge.to_single_token(" John")?,
    );
    let logit_diff = move |logits: &Tensor| {
        let last = logits.get(0).get(-1);
        last.get(mary) - last.get(john)
    };
    let metric = |logits: &Tensor| Ok(logit_diff(logits).double_value(&[]));
    let cache_options = CacheOptions {
        names_filter: NamesFilter::predicate(|name| name.ends_with("hook_resid_pre")),
        ..CacheOptions::default()
    };
    let (_, clean_cache) =
        tch::no_grad(|| bridge.run_with_cache(&clean, &ForwardOptions::default(), &cache_options))?;
    let sweep = |batch_size: Option<usize>| {
        let options = PatchOptions {
            batch_size,
            ..PatchOptions::default()
        };
        activation_patch(
            bridge,
            &corrupted,
            &clean_cache,
            Activation::ResidPre,
            PatchAxes::LayerPos,
            &Metric::Logits(&metric),
            &options,
        )
    };
    let (single_ms, single) = time_ms(device, || sweep(Some(1)));
    let single = single?;
    let (batched_samples, batched) = seconds_samples(device, repeats, || Ok(sweep(None)?))?;
    let max_diff = (&batched - &single).abs().max().double_value(&[]);
    let (forward_samples, _) = seconds_samples(device, 7, || {
        Ok(tch::no_grad(|| {
            bridge.forward(&corrupted, &ForwardOptions::default())
        })?)
    })?;
    let patches = single.numel() as u64;
    // The pass the batched sweep makes, without its patches: every copy of the corrupted prompt
    // in one unhooked forward.
    let copies = corrupted.repeat([patches as i64, 1]);
    let (batch_forward_samples, _) = seconds_samples(device, repeats, || {
        Ok(tch::no_grad(|| {
            bridge.forward(&copies, &ForwardOptions::default())
        })?)
    })?;
    drop(copies);
    let default_batch = PatchOptions::default();
    let differentiable = |logits: &Tensor| Ok(logit_diff(logits));
    let attribution_s = median_seconds(device, repeats, || {
        lens_core::patching::attribution_patch(
            bridge,
            &clean,
            &corrupted,
            &differentiable,
            NamesFilter::All,
        )?;
        Ok(())
    })?;
    let prompts: Vec<Tensor> = (0..CACHE_LOOP_BATCHES)
        .map(|i| {
            random_tokens(
                CACHE_LOOP_BATCH,
                CACHE_LOOP_LEN,
                bridge.config().vocab_size(),
                device,
                100 + i as u64,
            )
        })
        .collect();
    let cache_loop_s = median_seconds(device, repeats, || {
        for batch in &prompts {
            tch::no_grad(|| {
                bridge.run_with_cache(batch, &ForwardOptions::default(), &CacheOptions::default())
            })?;
        }
        Ok(())
    })?;
    Ok(json!({
        "patches": patches,
        "prompt_tokens": corrupted.size()[1],
        "one_at_a_time_s": single_ms / 1e3,
        "batched_s": median(&batched_samples),
        "batched_min_s": batched_samples.iter().cloned().fold(f64::INFINITY, f64::min),
        "memory_budget_bytes": default_batch.memory_budget_bytes,
        "forward_ms": median(&forward_samples) * 1e3,
        "batch_forward_s": median(&batch_forward_samples),
        "batched_vs_one_at_a_time_max_abs_diff": max_diff,
        "attribution_s": attribution_s,
        "cache_loop_s": cache_loop_s,
        "cache_loop": format!(
            "{} prompts of {CACHE_LOOP_LEN} random tokens, run_with_cache of every hook in batches of {CACHE_LOOP_BATCH}",
            CACHE_LOOP_BATCHES as i64 * CACHE_LOOP_BATCH
        ),
    }))
}

/// The `run_with_cache` loop of the research workloads: 64 prompts in batches of 8.
const CACHE_LOOP_BATCHES: usize = 8;
const CACHE_LOOP_BATCH: i64 = 8;
const CACHE_LOOP_LEN: i64 = 32;

/// `repeats` (at least one) wall times of `f` in seconds, each taken again while other
/// processes are busy ([`quiet_sample`]), and the last run's result.
fn seconds_samples<T>(
    device: Device,
    repeats: usize,
    mut f: impl FnMut() -> AnyResult<T>,
) -> AnyResult<(Vec<f64>, T)> {
    let (ms, _, _, mut last) = quiet_sample(device, RETRIES, &mut f)?;
    let mut samples = vec![ms / 1e3];
    for _ in 1..repeats.max(1) {
        let (ms, _, _, out) = quiet_sample(device, RETRIES, &mut f)?;
        samples.push(ms / 1e3);
        last = out;
    }
    Ok((samples, last))
}

/// The median of [`seconds_samples`].
fn median_seconds(
    device: Device,
    repeats: usize,
    f: impl FnMut() -> AnyResult<()>,
) -> AnyResult<f64> {
    Ok(median(&seconds_samples(device, repeats, f)?.0))
}

pub(crate) fn measure_generation(
    hf: &Gpt2LMHeadModel,
    bridge: &TransformerBridge,
    device: Device,
    plan: &Plan,
) -> AnyResult<Value> {
    let prompt = random_tokens(1, 128, bridge.config().vocab_size(), device, 7);
    let options = |new: usize, cached: bool| GenerateOptions {
        max_new_tokens: new,
        do_sample: false,
        stop_at_eos: false,
        use_past_kv_cache: cached,
        ..GenerateOptions::default()
    };
    let check = |out: &Tensor, new: usize| -> AnyResult<()> {
        if out.size()[1] != 128 + new as i64 {
            return Err(format!("generated {:?}, expected [1, {}]", out.size(), 128 + new).into());
        }
        Ok(())
    };
    let new = plan.new_tokens;
    let mut results = serde_json::Map::new();
    let mut outputs: BTreeMap<&str, Tensor> = BTreeMap::new();
    type Run<'a> = Box<dyn Fn(&GenerateOptions) -> AnyResult<Tensor> + 'a>;
    let runs: Vec<(&str, bool, usize, Run<'_>)> = vec![
        (
            "bridge_cached",
            true,
            plan.generation,
            Box::new(|o| Ok(bridge.generate(&prompt, None, o)?)),
        ),
        (
            "hf_cached",
            true,
            plan.generation,
            Box::new(|o| Ok(hf.generate(&prompt, None, o)?)),
        ),
        (
            "bridge_uncached",
            false,
            plan.generation_uncached,
            Box::new(|o| Ok(bridge.generate(&prompt, None, o)?)),
        ),
    ];
    for (_, cached, _, run) in &runs {
        let _ = run(&options(4, *cached))?;
    }
    let mut samples: Vec<(Vec<f64>, Vec<f64>, usize)> = vec![Default::default(); runs.len()];
    // The cached runs first, alternating which goes first in each round, so neither always
    // follows the other (or a long uncached run, which leaves the allocator in another state);
    // then the uncached ones.
    let rounds = runs.iter().map(|r| r.2).max().unwrap_or(1);
    let mut order = Vec::new();
    for cached_pass in [true, false] {
        for round in 0..rounds {
            let mut these: Vec<usize> = (0..runs.len())
                .filter(|&i| runs[i].1 == cached_pass && round < runs[i].2)
                .collect();
            let len = these.len().max(1);
            these.rotate_left(round % len);
            order.extend(these);
        }
    }
    for i in order {
        let (name, cached, _, run) = &runs[i];
        {
            // A run without the cache takes long: take it again once at most.
            let retries = if *cached { RETRIES } else { 1 };
            let (ms, busy, again, out) =
                quiet_sample(device, retries, || run(&options(new, *cached)))?;
            check(&out, new)?;
            outputs.insert(name, out);
            samples[i].0.push(ms);
            samples[i].1.push(busy);
            samples[i].2 += again;
        }
    }
    let same = |a: &str, b: &str| match (outputs.get(a), outputs.get(b)) {
        (Some(x), Some(y)) => x.equal(y),
        _ => false,
    };
    for ((name, ..), (s, busy, retaken)) in runs.iter().zip(samples) {
        let mut stat = Stat::from_samples(s);
        stat.others_cores = median(&busy);
        stat.retaken = retaken;
        results.insert(
            (*name).to_owned(),
            json!({
                "tokens_per_s": new as f64 / (stat.median_ms / 1e3),
                "seconds": stat.median_ms / 1e3,
                "stat": stat,
            }),
        );
    }
    results.insert("new_tokens".into(), json!(new));
    results.insert("prompt_tokens".into(), json!(128));
    results.insert(
        "tokens_identical".into(),
        json!(same("bridge_cached", "bridge_uncached") && same("bridge_cached", "hf_cached")),
    );
    Ok(Value::Object(results))
}
