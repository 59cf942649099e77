//! The command line: subcommands, their arguments, device names.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tch::Device;

#[derive(Parser)]
#[command(
    name = "tl-perf",
    about = "Performance harness: times the bridge against the raw HF model, the HookedTransformer and the Python suite."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Measure everything and write the figures as JSON.
    Measure(MeasureArgs),
    /// Write docs/performance.md and the tracking JSON from measure's (and Python's) JSON.
    Report(ReportArgs),
    /// (child process) Load one model once and print its load time and memory as JSON.
    LoadProbe(ProbeArgs),
    /// (diagnostic) Run the suite in this process, timing each benchmark.
    SuiteProfile(ProfileArgs),
}

#[derive(Args)]
pub(crate) struct MeasureArgs {
    /// A local directory in HF layout (the GPT-2-small-shaped checkpoint).
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// The Llama-family checkpoint (grouped-query attention): the suite runs on it too.
    #[arg(long)]
    pub(crate) gqa_model: Option<PathBuf>,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub(crate) device: Device,
    /// Where the JSON goes.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// libtorch intra-op threads on the CPU.
    #[arg(long, default_value_t = 2)]
    pub(crate) threads: i32,
    /// One repeat of everything and 8 generated tokens: a smoke test, not a measurement.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Skip the full suite (phases 1-3 in a separate tl-bench process).
    #[arg(long)]
    pub(crate) skip_suite: bool,
    /// Also run the suite once more in a child process, timing each benchmark (diagnostic).
    #[arg(long)]
    pub(crate) profile_suite: bool,
    /// Repeats of every forward and forward + backward timing (default: 7 at 1x128 and 8x128 on
    /// the CPU; 20 on CUDA).
    #[arg(long)]
    pub(crate) repeats: Option<usize>,
    /// Run only these sections (suite, load, forward, backward, patching, generation; default
    /// all).
    #[arg(long, value_delimiter = ',')]
    pub(crate) only: Vec<String>,
}

#[derive(Args)]
pub(crate) struct ReportArgs {
    /// JSON written by `tl-perf measure`.
    #[arg(long)]
    pub(crate) rust: PathBuf,
    /// JSON printed by xtask/python/perf_python.py.
    #[arg(long)]
    pub(crate) python: Option<PathBuf>,
    /// JSON printed by xtask/python/perf_python.py in transformer-lens 4.3.0's venv.
    #[arg(long)]
    pub(crate) tl4: Option<PathBuf>,
    /// The markdown page.
    #[arg(long)]
    pub(crate) md: PathBuf,
    /// The tracking JSON (every figure, ratio and target).
    #[arg(long)]
    pub(crate) json: PathBuf,
}

#[derive(Args)]
pub(crate) struct ProbeArgs {
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// read (std::fs::read of the safetensors file), bridge, hooked.
    #[arg(long)]
    pub(crate) what: String,
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub(crate) device: Device,
    #[arg(long, default_value_t = 2)]
    pub(crate) threads: i32,
}

#[derive(Args)]
pub(crate) struct ProfileArgs {
    #[arg(long)]
    pub(crate) model: PathBuf,
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub(crate) device: Device,
    #[arg(long, default_value_t = 2)]
    pub(crate) threads: i32,
    /// Write the profile here as JSON (it is printed either way).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

fn parse_device(text: &str) -> Result<Device, String> {
    match text {
        "cpu" => Ok(Device::Cpu),
        "cuda" | "cuda:0" => Ok(Device::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| format!("unknown device '{other}': use cpu or cuda[:N]")),
    }
}

pub(crate) fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}
