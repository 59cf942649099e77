//! `tl-bench`: the benchmark suite's command line.
//!
//! Exit codes: 0 when every check passed, 1 when any failed, 2 on a usage or load error.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use bench_suite::report::{all_passed, summary, write_json};
use bench_suite::suite::{check_device, run_benchmark_suite, SuiteOptions, DEFAULT_TEST_TEXT};
use bench_suite::tools;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tch::{Device, Kind};

#[derive(Parser)]
#[command(
    name = "tl-bench",
    about = "Proves a TransformerBridge computes what the original model computes.",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the benchmark suite (the default).
    Run(RunArgs),
    /// Run one model once and write tokens, logits and every hook (optionally gradients) to safetensors.
    Cache(tools::CacheArgs),
    /// Generate a continuation.
    Generate(tools::GenerateArgs),
    /// List hook names with their shapes.
    Hooks(tools::HooksArgs),
}

/// Options of `run`.
#[derive(Args, Clone)]
struct RunArgs {
    /// Local HF directory, embedded model name, or HF id.
    #[arg(long, default_value = lens_core::DEFAULT_MODEL)]
    model: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: Device,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    dtype: Kind,
    /// Skip Phase 3 (weight processing).
    #[arg(long)]
    no_compat: bool,
    /// Do not compare against the raw HF model (Phase 1).
    #[arg(long)]
    no_hf_reference: bool,
    /// Do not compare against the HookedTransformer (Phases 2 and 3 run bridge-only checks).
    #[arg(long)]
    no_ht_reference: bool,
    /// Phases to run, e.g. 1,2,3.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    phases: Vec<u8>,
    /// The text every benchmark runs on.
    #[arg(long, default_value = DEFAULT_TEST_TEXT)]
    test_text: String,
    /// Print only the summary.
    #[arg(long)]
    quiet: bool,
    /// Write every result to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Parses `cpu`, `cuda`, `cuda:N`.
pub fn parse_device(text: &str) -> Result<Device, String> {
    match text {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| usize::from_str(n).ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("unknown device '{other}': use cpu, cuda or cuda:N")),
    }
}

/// Parses `f32`, `f16`, `bf16`.
pub fn parse_dtype(text: &str) -> Result<Kind, String> {
    match text {
        "f32" | "float32" => Ok(Kind::Float),
        "f16" | "float16" => Ok(Kind::Half),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        other => Err(format!("unknown dtype '{other}': use f32, f16 or bf16")),
    }
}

fn run(args: RunArgs) -> ExitCode {
    if let Err(error) = check_device(args.device) {
        eprintln!("tl-bench: {error}");
        return ExitCode::from(2);
    }
    let options = SuiteOptions {
        model: args.model.clone(),
        device: args.device,
        dtype: args.dtype,
        test_text: args.test_text.clone(),
        use_hf_reference: !args.no_hf_reference,
        use_ht_reference: !args.no_ht_reference,
        enable_compatibility_mode: !args.no_compat,
        phases: args.phases.clone(),
    };
    let bar = if args.quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar
    };
    bar.set_message(format!("loading {}", args.model));
    let mut progress = |name: &str| bar.set_message(name.to_owned());
    let results = match run_benchmark_suite(&options, &mut progress) {
        Ok(results) => results,
        Err(error) => {
            bar.finish_and_clear();
            eprintln!(
                "tl-bench: could not run the suite on '{}': {error}",
                args.model
            );
            return ExitCode::from(2);
        }
    };
    bar.finish_and_clear();
    print!("{}", summary(&results));
    if let Some(path) = &args.json {
        if let Err(error) = write_json(
            path,
            &args.model,
            &format!("{:?}", args.device),
            &format!("{:?}", args.dtype),
            &results,
        ) {
            eprintln!("tl-bench: cannot write {}: {error}", path.display());
            return ExitCode::from(2);
        }
    }
    if all_passed(&results) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn main() -> ExitCode {
    // Freed tensor memory stays for the next pass (lens_core::allocator).
    lens_core::allocator::keep_freed_memory();
    let cli = Cli::parse();
    match cli.command {
        None => run(cli.run),
        Some(Command::Run(args)) => run(args),
        Some(Command::Cache(args)) => tools::cache(args),
        Some(Command::Generate(args)) => tools::generate(args),
        Some(Command::Hooks(args)) => tools::hooks(args),
    }
}
