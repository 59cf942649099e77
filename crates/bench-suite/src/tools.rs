//! The CLI's helper subcommands: `cache`, `generate`, `hooks`.

use std::path::PathBuf;
use std::process::ExitCode;

use bridge::{CompatibilityOptions, HfForward, HfModel, TransformerBridge};
use clap::{Args, ValueEnum};
use hooked_ref::{HookedTransformer, HookedTransformerConfig, ProcessingOptions};
use hookpoint::CacheOptions;
use lens_core::model::{ForwardOptions, GenerateOptions, LensModel, ModelError, ModelResult};
use lens_core::{LoadOptions, LoadedModel, Tokenizer};
use tch::{Device, Tensor};

use crate::export::{metadata, select_entries, CacheMetadata, GradOf, Names};
use crate::model_args::{device_name, dtype_name, ModelArgs};

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
    #[command(flatten)]
    model: ModelArgs,
    /// The input text (BOS is prepended).
    #[arg(long)]
    text: String,
    /// Which implementation.
    #[arg(long = "impl", value_enum, default_value = "bridge")]
    implementation: Impl,
    /// Process the weights (compatibility mode for the bridge, default processing for HookedTransformer).
    #[arg(long)]
    processed: bool,
    /// Hook names to write: `tl` (TransformerLens's names and shapes, what a HookedTransformer
    /// cache holds), `bridge` (the bridge's canonical names) or `both`.
    #[arg(long, value_enum, default_value = "tl")]
    names: Names,
    /// Also write, as `<name>_grad`, the gradient at every hook of: `loss` (mean next-token
    /// cross-entropy), `logit:TOKEN[@POS]`, `logit-diff:A,B[@POS]`, `sum-last-logprobs` or
    /// `sum-last-logits`. TOKEN is a token id or a token's text (` Paris`); POS defaults to the
    /// last position and may be negative.
    #[arg(long, value_name = "TARGET")]
    grad_of: Option<GradOf>,
    /// The safetensors file to write.
    #[arg(long)]
    out: PathBuf,
}

/// Options of `generate`.
#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
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
    #[command(flatten)]
    model: ModelArgs,
    /// Which implementation (hooked or bridge).
    #[arg(long = "impl", value_enum, default_value = "bridge")]
    implementation: Impl,
}

fn boot_bridge(args: &ModelArgs) -> ModelResult<TransformerBridge> {
    args.check_device()?;
    TransformerBridge::boot(&args.model, args.device, args.dtype)
}

/// A model to run, with the TransformerLens hook names of its configuration (those a
/// HookedTransformer of it registers).
struct Loaded {
    model: Box<dyn LensModel>,
    tl_names: Vec<String>,
}

fn load(args: &ModelArgs, implementation: Impl, processed: bool) -> ModelResult<Loaded> {
    Ok(match implementation {
        Impl::Bridge => {
            let mut bridge = boot_bridge(args)?;
            if processed {
                bridge.enable_compatibility_mode(CompatibilityOptions::default())?;
            }
            let config = HookedTransformerConfig::from_hf(&bridge.config()).ok_or_else(|| {
                ModelError::Unsupported(format!(
                    "no TransformerLens names known for {}",
                    bridge.config().architecture()
                ))
            })?;
            let tl_names = hooked_ref::hook_names(&config);
            Loaded {
                model: Box::new(bridge),
                tl_names,
            }
        }
        Impl::Hooked => {
            let processing = if processed {
                ProcessingOptions::default()
            } else {
                ProcessingOptions::none()
            };
            let options = LoadOptions {
                device: args.device,
                kind: Some(args.dtype),
                ..LoadOptions::default()
            };
            let model = HookedTransformer::from_pretrained(&args.model, &options, processing)?;
            let tl_names = hooked_ref::hook_names(model.cfg());
            Loaded {
                model: Box::new(model),
                tl_names,
            }
        }
        Impl::Hf => {
            return Err(ModelError::Unsupported(
                "the raw HF model has no hooks; use --impl hooked or bridge".into(),
            ))
        }
    })
}

fn tokens_of(model: &dyn LensModel, text: &str) -> ModelResult<Tensor> {
    tokenize(model.tokenizer(), text)
}

fn tokenize(tokenizer: Option<&Tokenizer>, text: &str) -> ModelResult<Tensor> {
    let tokenizer = tokenizer
        .ok_or_else(|| ModelError::Unsupported("the model has no tokenizer.json".into()))?;
    Ok(tokenizer.to_tokens(&[text], None, None, true)?.ids)
}

/// The raw HF model of a checkpoint, of whichever family the HF tier implements, and its
/// tokenizer.
fn load_raw(args: &ModelArgs) -> ModelResult<(HfModel, Option<Tokenizer>)> {
    args.check_device()?;
    let (device, kind) = (args.device, args.dtype);
    let LoadedModel {
        config,
        weights,
        tokenizer,
        ..
    } = lens_core::load(
        &args.model,
        &LoadOptions {
            device,
            kind: Some(kind),
            ..LoadOptions::default()
        },
    )?;
    Ok((
        HfModel::from_weights(config, weights, device, kind)?,
        tokenizer,
    ))
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
    let mut meta = CacheMetadata {
        model: args.model.model.clone(),
        implementation: format!("{:?}", args.implementation).to_lowercase(),
        names: args.names.as_str().to_owned(),
        dtype: dtype_name(args.model.dtype),
        device: device_name(args.model.device),
        processing: "none".to_owned(),
        grad_of: "none".to_owned(),
        text: args.text.clone(),
        tokens: Vec::new(),
        str_tokens: Vec::new(),
    };
    let tokens;
    let tokenizer;
    if let Impl::Hf = args.implementation {
        if args.grad_of.is_some() || args.processed {
            return Err(ModelError::Unsupported(
                "the raw HF model writes hidden states only: --grad-of and --processed need \
                 --impl hooked or bridge"
                    .into(),
            ));
        }
        let (raw, raw_tokenizer) = load_raw(&args.model)?;
        tokens = tokenize(raw_tokenizer.as_ref(), &args.text)?;
        let out = tch::no_grad(|| {
            raw.forward(HfForward {
                input_ids: Some(&tokens),
                output_hidden_states: true,
                ..HfForward::default()
            })
        })?;
        meta.names = "hidden_states".to_owned();
        entries.push(("logits".into(), out.logits));
        for (i, hidden) in out.hidden_states.into_iter().enumerate() {
            entries.push((format!("hidden_states.{i}"), hidden));
        }
        tokenizer = raw_tokenizer;
    } else {
        let Loaded { model, tl_names } = load(&args.model, args.implementation, args.processed)?;
        if args.processed {
            meta.processing = processing_of(args.implementation);
        }
        tokens = tokens_of(model.as_ref(), &args.text)?;
        let target = match &args.grad_of {
            Some(grad_of) => {
                meta.grad_of = grad_of.to_string();
                Some(grad_of.resolve(model.tokenizer(), model.dims().d_vocab)?)
            }
            None => None,
        };
        let _no_grad = target.is_none().then(tch::no_grad_guard);
        let (forward, options) = (ForwardOptions::default(), CacheOptions::default());
        let (out, cache) = match target {
            Some(target) => {
                model.run_with_cache_and_backward(&tokens, &forward, &options, &|o| {
                    target.of(o, &tokens)
                })?
            }
            None => model.run_with_cache(&tokens, &forward, &options)?,
        };
        entries.push(("logits".into(), out.logits()?.detach()));
        if let (Impl::Hooked, Names::Bridge) = (args.implementation, args.names) {
            return Err(ModelError::Unsupported(
                "the HookedTransformer has TransformerLens names only: use --names tl".into(),
            ));
        }
        entries.extend(select_entries(&cache, args.names, &tl_names));
        tokenizer = model.tokenizer().cloned();
    }
    meta.tokens = Vec::<i64>::try_from(tokens.get(0).to_device(Device::Cpu))?;
    if let Some(tokenizer) = &tokenizer {
        meta.str_tokens = tokenizer.to_str_tokens(&tokens.get(0), None)?;
    }
    entries.insert(0, ("tokens".into(), tokens));
    lens_core::weights::write_safetensors(&args.out, &entries, metadata(&meta))?;
    println!("wrote {} tensors to {}", entries.len(), args.out.display());
    Ok(())
}

/// What `--processed` did to the weights, for the file's metadata.
fn processing_of(implementation: Impl) -> String {
    match implementation {
        Impl::Bridge => format!("{:?}", CompatibilityOptions::default()),
        _ => format!("{:?}", ProcessingOptions::default()),
    }
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
    let (generated, tokenizer) = if let Impl::Hf = args.implementation {
        let (raw, tokenizer) = load_raw(&args.model)?;
        let tokens = tokenize(tokenizer.as_ref(), &args.prompt)?;
        (
            tch::no_grad(|| raw.generate(&tokens, None, &options))?,
            tokenizer,
        )
    } else {
        let model = load(&args.model, args.implementation, false)?.model;
        let tokens = tokens_of(model.as_ref(), &args.prompt)?;
        let generated = tch::no_grad(|| model.generate(&tokens, None, &options))?;
        (generated, model.tokenizer().cloned())
    };
    let tokenizer = tokenizer
        .ok_or_else(|| ModelError::Unsupported("the model has no tokenizer.json".into()))?;
    println!("{}", tokenizer.to_string(&generated.get(0))?);
    Ok(())
}

/// `hooks`: every hook name with the shape it has on a short input.
pub fn hooks(args: HooksArgs) -> ExitCode {
    finish(list_hooks(&args), "hooks")
}

fn list_hooks(args: &HooksArgs) -> ModelResult<()> {
    let model = load(&args.model, args.implementation, false)?.model;
    let tokens = tokens_of(model.as_ref(), "The quick brown fox")?;
    let (_, cache) = tch::no_grad(|| {
        model.run_with_cache(
            &tokens,
            &ForwardOptions::default(),
            &CacheOptions::default(),
        )
    })?;
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
