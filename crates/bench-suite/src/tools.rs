//! The CLI's helper subcommands: `cache`, `generate`, `hooks`.

use std::path::PathBuf;
use std::process::ExitCode;

use bridge::{CompatibilityOptions, HfForward, TransformerBridge};
use clap::{Args, ValueEnum};
use hooked_ref::{HookedTransformer, ProcessingOptions};
use hookpoint::CacheOptions;
use lens_core::model::{ForwardOptions, GenerateOptions, LensModel, ModelError, ModelResult};
use lens_core::LoadOptions;
use tch::{Device, Kind, Tensor};

use crate::benchmarks::GradientTarget;

/// Which implementation to run.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Impl {
    /// The raw HF-structured model (no hooks).
    Hf,
    /// The reference HookedTransformer.
    Hooked,
    /// The TransformerBridge.
    Bridge,
}

/// Options of `cache`.
#[derive(Args)]
pub struct CacheArgs {
    /// Local HF directory, embedded model name, or HF id.
    #[arg(long, default_value = lens_core::DEFAULT_MODEL)]
    model: String,
    /// The input text (BOS is prepended).
    #[arg(long)]
    text: String,
    /// Which implementation.
    #[arg(long = "impl", value_enum, default_value = "bridge")]
    implementation: Impl,
    /// Process the weights (compatibility mode for the bridge, default processing for HookedTransformer).
    #[arg(long)]
    processed: bool,
    /// Also write the gradient of `logits[:, -1, :].sum()` at every hook, as `<name>_grad`.
    #[arg(long)]
    grads: bool,
    /// The safetensors file to write.
    #[arg(long)]
    out: PathBuf,
}

/// Options of `generate`.
#[derive(Args)]
pub struct GenerateArgs {
    /// Local HF directory, embedded model name, or HF id.
    #[arg(long, default_value = lens_core::DEFAULT_MODEL)]
    model: String,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Tokens to add.
    #[arg(long, default_value_t = 20)]
    max_new_tokens: usize,
    /// Take the most likely token (the default unless --temperature is given).
    #[arg(long, conflicts_with = "temperature")]
    greedy: bool,
    /// Sample with this temperature.
    #[arg(long)]
    temperature: Option<f64>,
    /// Seed for sampling.
    #[arg(long)]
    seed: Option<u64>,
    /// Recompute every position instead of using the KV cache.
    #[arg(long)]
    no_kv_cache: bool,
    /// Which implementation.
    #[arg(long = "impl", value_enum, default_value = "bridge")]
    implementation: Impl,
}

/// Options of `hooks`.
#[derive(Args)]
pub struct HooksArgs {
    /// Local HF directory, embedded model name, or HF id.
    #[arg(long, default_value = lens_core::DEFAULT_MODEL)]
    model: String,
    /// Which implementation (hooked or bridge).
    #[arg(long = "impl", value_enum, default_value = "bridge")]
    implementation: Impl,
}

fn load(model: &str, implementation: Impl, processed: bool) -> ModelResult<Box<dyn LensModel>> {
    Ok(match implementation {
        Impl::Bridge => {
            let mut bridge = TransformerBridge::boot(model, Device::Cpu, Kind::Float)?;
            if processed {
                bridge.enable_compatibility_mode(CompatibilityOptions::default())?;
            }
            Box::new(bridge)
        }
        Impl::Hooked => {
            let processing = if processed {
                ProcessingOptions::default()
            } else {
                ProcessingOptions::none()
            };
            Box::new(HookedTransformer::from_pretrained(
                model,
                &LoadOptions::default(),
                processing,
            )?)
        }
        Impl::Hf => {
            return Err(ModelError::Unsupported(
                "the raw HF model has no hooks; use --impl hooked or bridge".into(),
            ))
        }
    })
}

fn tokens_of(model: &dyn LensModel, text: &str) -> ModelResult<Tensor> {
    let tokenizer = model
        .tokenizer()
        .ok_or_else(|| ModelError::Unsupported("the model has no tokenizer.json".into()))?;
    Ok(tokenizer.to_tokens(&[text], None, None, true)?.ids)
}

fn finish(outcome: ModelResult<()>, what: &str) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tl-bench {what}: {error}");
            ExitCode::from(2)
        }
    }
}

/// `cache`: one run, every activation (and gradient) into a safetensors file.
pub fn cache(args: CacheArgs) -> ExitCode {
    finish(write_cache(&args), "cache")
}

fn write_cache(args: &CacheArgs) -> ModelResult<()> {
    let mut entries: Vec<(String, Tensor)> = Vec::new();
    if let Impl::Hf = args.implementation {
        let bridge = TransformerBridge::boot(&args.model, Device::Cpu, Kind::Float)?;
        let tokens = tokens_of(&bridge, &args.text)?;
        let out = tch::no_grad(|| {
            bridge.hf_model().forward(HfForward {
                input_ids: Some(&tokens),
                output_hidden_states: true,
                ..HfForward::default()
            })
        })?;
        entries.push(("tokens".into(), tokens));
        entries.push(("logits".into(), out.logits));
        for (i, hidden) in out.hidden_states.into_iter().enumerate() {
            entries.push((format!("hidden_states.{i}"), hidden));
        }
    } else {
        let model = load(&args.model, args.implementation, args.processed)?;
        let tokens = tokens_of(model.as_ref(), &args.text)?;
        let options = CacheOptions {
            incl_bwd: args.grads,
            ..CacheOptions::default()
        };
        let target = GradientTarget::SumLastLogits;
        let (out, cache) =
            model.run_with_cache(&tokens, &ForwardOptions::default(), &options, &|o| {
                target.of(o)
            })?;
        entries.push(("tokens".into(), tokens));
        entries.push(("logits".into(), out.logits()?.detach()));
        entries.extend(
            cache
                .iter()
                .map(|(name, t)| (name.to_owned(), t.shallow_clone())),
        );
    }
    let entries: Vec<(String, Tensor)> = entries
        .into_iter()
        .map(|(n, t)| (n, t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    Tensor::write_safetensors(&entries, &args.out)?;
    println!("wrote {} tensors to {}", entries.len(), args.out.display());
    Ok(())
}

/// `generate`: a continuation of the prompt.
pub fn generate(args: GenerateArgs) -> ExitCode {
    finish(run_generate(&args), "generate")
}

fn run_generate(args: &GenerateArgs) -> ModelResult<()> {
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        do_sample: args.temperature.is_some() && !args.greedy,
        temperature: args.temperature.unwrap_or(1.0),
        seed: args.seed,
        use_past_kv_cache: !args.no_kv_cache,
        ..GenerateOptions::default()
    };
    let implementation = if let Impl::Hf = args.implementation {
        Impl::Bridge
    } else {
        args.implementation
    };
    let model = load(&args.model, implementation, false)?;
    let tokens = tokens_of(model.as_ref(), &args.prompt)?;
    let generated = if let Impl::Hf = args.implementation {
        let bridge = TransformerBridge::boot(&args.model, Device::Cpu, Kind::Float)?;
        tch::no_grad(|| bridge.hf_model().generate(&tokens, None, &options))?
    } else {
        tch::no_grad(|| model.generate(&tokens, None, &options))?
    };
    let tokenizer = model
        .tokenizer()
        .ok_or_else(|| ModelError::Unsupported("no tokenizer".into()))?;
    println!("{}", tokenizer.to_string(&generated.get(0))?);
    Ok(())
}

/// `hooks`: every hook name with the shape it has on a short input.
pub fn hooks(args: HooksArgs) -> ExitCode {
    finish(list_hooks(&args), "hooks")
}

fn list_hooks(args: &HooksArgs) -> ModelResult<()> {
    let model = load(&args.model, args.implementation, false)?;
    let tokens = tokens_of(model.as_ref(), "The quick brown fox")?;
    let (_, cache) = model.run_with_cache(
        &tokens,
        &ForwardOptions::default(),
        &CacheOptions::default(),
        &|o| GradientTarget::SumLastLogits.of(o),
    )?;
    let registry = model.hooks();
    let shape_of = |name: &str| match (cache.get(name), registry.disabled_by(name)) {
        (Ok(t), _) => format!("{:?}", t.size()),
        (Err(_), Some(flag)) => format!("fires with {flag}"),
        (Err(_), None) => "did not fire".to_owned(),
    };
    for name in registry.names() {
        println!("{name}\t{}", shape_of(name));
    }
    let mut aliases: Vec<(&str, &str)> = registry.aliases().collect();
    aliases.sort();
    for (alias, target) in aliases {
        println!("{alias}\t{}\t(alias of {target})", shape_of(target));
    }
    Ok(())
}
