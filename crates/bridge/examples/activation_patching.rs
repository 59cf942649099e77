//! Activation patching on an IOI-style prompt pair: run the clean prompt, then the corrupted
//! one with the residual stream of one (layer, position) patched in from the clean run, and
//! report how much of the clean logit difference each patch recovers.
//!
//! ```text
//! cargo run -p bridge --example activation_patching [-- MODEL]
//! ```
//!
//! MODEL defaults to the embedded `tiny-gpt2` (random weights: the numbers show the mechanics,
//! not a circuit); any model `TransformerBridge::boot` accepts works, e.g. a local GPT-2
//! directory.

use std::sync::Mutex;

use bridge::TransformerBridge;
use hookpoint::{CacheOptions, Hook, HookSpec, NamesFilter};
use lens_core::model::{ForwardOptions, LensModel, ModelResult};
use tch::{Device, Kind, Tensor};

const CLEAN: &str = "When Mary and John went to the store, John gave a drink to";
const CORRUPTED: &str = "When Mary and John went to the store, Mary gave a drink to";

/// logit(correct) - logit(wrong) at the last position.
fn logit_diff(logits: &Tensor, correct: i64, wrong: i64) -> f64 {
    let last = logits.select(1, -1).select(0, 0);
    last.double_value(&[correct]) - last.double_value(&[wrong])
}

fn main() -> ModelResult<()> {
    let model_name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| lens_core::DEFAULT_MODEL.to_string());
    run(&model_name)?;
    Ok(())
}

/// Patches every (layer, position) and prints the table; returns `recovery[layer][position]`.
pub fn run(model_name: &str) -> ModelResult<Vec<Vec<f64>>> {
    let model = TransformerBridge::boot(model_name, Device::Cpu, Kind::Float)?;
    let clean = model.to_tokens(&[CLEAN], None, None)?.ids;
    let corrupted = model.to_tokens(&[CORRUPTED], None, None)?.ids;
    assert_eq!(
        clean.size(),
        corrupted.size(),
        "the two prompts must have the same length"
    );
    let (mary, john) = (
        model.to_single_token(" Mary")?,
        model.to_single_token(" John")?,
    );

    let _no_grad = tch::no_grad_guard();
    // The clean run, caching every block's input.
    let (clean_out, clean_cache) = model.run_with_cache(
        &clean,
        &ForwardOptions::default(),
        &CacheOptions {
            names_filter: NamesFilter::predicate(|name| name.ends_with("hook_resid_pre")),
            ..CacheOptions::default()
        },
    )?;
    let clean_diff = logit_diff(clean_out.logits()?, mary, john);
    let corrupted_diff = logit_diff(
        model
            .forward(&corrupted, &ForwardOptions::default())?
            .logits()?,
        mary,
        john,
    );
    println!("model {model_name}: logit diff ' Mary' - ' John': clean {clean_diff:+.4}, corrupted {corrupted_diff:+.4}");

    let n_layers = model.dims().n_layers;
    let n_pos = clean.size()[1];
    let str_tokens = model.to_str_tokens(&clean, None)?;
    // recovery[layer][pos] = (patched - corrupted) / (clean - corrupted)
    let mut recovery = vec![vec![0.0; n_pos as usize]; n_layers as usize];
    for layer in 0..n_layers {
        let clean_resid = clean_cache.get(("resid_pre", layer))?;
        for pos in 0..n_pos {
            // Hooks may run on other threads (backward hooks of CUDA tensors), so what they
            // capture must be Sync: a tch Tensor is Send, so a Mutex makes it shareable.
            let source = Mutex::new(clean_resid.narrow(1, pos, 1).copy());
            let patch = Hook::new(move |resid, _ctx| {
                let patched = resid.copy();
                let source = source
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                patched.narrow(1, pos, 1).copy_(&source);
                Some(patched)
            });
            let out = model.run_with_hooks(
                &corrupted,
                &ForwardOptions::default(),
                &[HookSpec::forward(
                    format!("blocks.{layer}.hook_resid_pre"),
                    patch,
                )],
            )?;
            let patched = logit_diff(out.logits()?, mary, john);
            recovery[layer as usize][pos as usize] =
                (patched - corrupted_diff) / (clean_diff - corrupted_diff);
        }
    }

    println!("\nfraction of the clean logit difference recovered by patching resid_pre:");
    print!("{:>8}", "layer");
    for token in &str_tokens {
        let shown: String = token.chars().take(7).collect();
        print!("{:>8}", format!("{shown:?}").trim_matches('"'));
    }
    println!();
    for (layer, row) in recovery.iter().enumerate() {
        print!("{layer:>8}");
        for value in row {
            print!("{value:>8.3}");
        }
        println!();
    }
    Ok(recovery)
}
