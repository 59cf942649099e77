//! `tl-bench`: the benchmark suite's command line.
//!
//! Exit codes: 0 when every check passed, 1 when any failed, 2 on a usage or load error.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use bench_suite::html;
use bench_suite::model_args::{self, device_name, dtype_name, ModelArgs};
use bench_suite::report::{all_passed, summary, write_json, ReportFile, RunInfo};
use bench_suite::suite::{run_suite, SuiteOptions, DEFAULT_TEST_TEXT};
use bench_suite::tools;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

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
    /// Run the suite on several models, each in a process of its own, and summarize.
    Verify(VerifyArgs),
}

/// Options of `run`.
#[derive(Args, Clone)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
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
    /// Write a self-contained HTML report (summary, every result, error heatmaps) to this file.
    #[arg(long)]
    html: Option<PathBuf>,
}

fn run(args: RunArgs) -> ExitCode {
    if let Err(error) = args.model.check_device() {
        eprintln!("tl-bench: {error}");
        return ExitCode::from(2);
    }
    let options = SuiteOptions {
        model: args.model.model.clone(),
        device: args.model.device,
        dtype: args.model.dtype,
        test_text: args.test_text.clone(),
        use_hf_reference: !args.no_hf_reference,
        use_ht_reference: !args.no_ht_reference,
        enable_compatibility_mode: !args.no_compat,
        phases: args.phases.clone(),
    };
    let bar = spinner(args.quiet);
    bar.set_message(format!("loading {}", args.model.model));
    let mut progress = |name: &str| bar.set_message(name.to_owned());
    let report = match run_suite(&options, &mut progress) {
        Ok(report) => report,
        Err(error) => {
            bar.finish_and_clear();
            eprintln!(
                "tl-bench: could not run the suite on '{}': {error}",
                args.model.model
            );
            return ExitCode::from(2);
        }
    };
    bar.finish_and_clear();
    print!("{}", summary(&report));
    let info = RunInfo {
        model: args.model.model.clone(),
        device: device_name(args.model.device),
        dtype: dtype_name(args.model.dtype),
    };
    if let Some(path) = &args.json {
        if let Err(error) = write_json(path, &info, &report) {
            eprintln!("tl-bench: cannot write {}: {error}", path.display());
            return ExitCode::from(2);
        }
    }
    if let Some(path) = &args.html {
        let page = html::render_run(&ReportFile::new(&info, &report));
        if let Err(error) = std::fs::write(path, page) {
            eprintln!("tl-bench: cannot write {}: {error}", path.display());
            return ExitCode::from(2);
        }
    }
    if all_passed(&report.results) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// A spinner on stderr naming the current step, hidden when quiet or not on a terminal.
fn spinner(quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar
}

/// Options of `verify`.
#[derive(Args, Clone)]
struct VerifyArgs {
    /// Models to verify (local HF directories, embedded model names, HF ids); default: every
    /// embedded model.
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Phases to run, e.g. 1,2,3.
    #[arg(long, default_value = "1,2,3")]
    phases: String,
    /// Write the summary and every model's results to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a self-contained HTML report of every model to this file.
    #[arg(long)]
    html: Option<PathBuf>,
}

fn verify(args: VerifyArgs) -> ExitCode {
    let device = match model_args::parse_device(&args.device) {
        Ok(device) => device,
        Err(error) => {
            eprintln!("tl-bench verify: {error}");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = model_args::parse_dtype(&args.dtype) {
        eprintln!("tl-bench verify: {error}");
        return ExitCode::from(2);
    }
    if let Err(error) = lens_core::model::check_device(device) {
        eprintln!("tl-bench verify: {error}");
        return ExitCode::from(2);
    }
    let models = if args.models.is_empty() {
        lens_core::ResolveOptions::default().embedded_models()
    } else {
        args.models.clone()
    };
    if models.is_empty() {
        eprintln!("tl-bench verify: no models given and no embedded models found (--models a,b)");
        return ExitCode::from(2);
    }
    let tl_bench = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(error) => {
            eprintln!("tl-bench verify: cannot find this executable: {error}");
            return ExitCode::from(2);
        }
    };
    let work_dir = std::env::temp_dir().join(format!("tl-bench-verify-{}", std::process::id()));
    if let Err(error) = std::fs::create_dir_all(&work_dir) {
        eprintln!(
            "tl-bench verify: cannot create {}: {error}",
            work_dir.display()
        );
        return ExitCode::from(2);
    }
    let options = bench_suite::verify::VerifyOptions {
        models,
        run_args: vec![
            "--device".into(),
            args.device.clone(),
            "--dtype".into(),
            args.dtype.clone(),
            "--phases".into(),
            args.phases.clone(),
        ],
        work_dir: work_dir.clone(),
    };
    let outcomes = bench_suite::verify::verify(&tl_bench, &options, |model| {
        eprintln!("tl-bench verify: {model}");
    });
    let _ = std::fs::remove_dir_all(&work_dir);
    print!("{}", bench_suite::verify::table(&outcomes));
    let passed = bench_suite::verify::all_passed(&outcomes);
    if let Some(path) = &args.json {
        let json = bench_suite::verify::VerifyJson {
            passed,
            models: &outcomes,
        };
        let written = serde_json::to_string_pretty(&json)
            .map_err(std::io::Error::other)
            .and_then(|text| std::fs::write(path, text + "\n"));
        if let Err(error) = written {
            eprintln!("tl-bench verify: cannot write {}: {error}", path.display());
            return ExitCode::from(2);
        }
    }
    if let Some(path) = &args.html {
        let reports: Vec<ReportFile> = outcomes.iter().filter_map(|o| o.report.clone()).collect();
        let page = html::render_verify(&bench_suite::verify::html_rows(&outcomes), &reports);
        if let Err(error) = std::fs::write(path, page) {
            eprintln!("tl-bench verify: cannot write {}: {error}", path.display());
            return ExitCode::from(2);
        }
    }
    if passed {
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
        Some(Command::Verify(args)) => verify(args),
    }
}
