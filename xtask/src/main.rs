//! Project automation. `cargo xtask <command>`; see `cargo xtask help`.
//!
//! Depends on nothing but std, so it compiles in seconds on a fresh clone, before libtorch exists.

mod downstream;
mod libtorch;
mod perf;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "\
cargo xtask <command> [args]

commands:
  setup          provision libtorch 2.13.0 (PyPI torch==2.13.0 in a project-local venv, or an
                 existing one: $LIBTORCH, or a torch 2.13.0 importable by python3) and link it
                 as .libtorch, which .cargo/config.toml hands to torch-sys
  test [ARGS]    setup, then run every test of the workspace (ARGS go to cargo test)
  bench [ARGS]   setup, then run the benchmark suite CLI (ARGS go to tl-bench)
  lint           cargo fmt --check, clippy -D warnings and cargo doc with warnings denied
  fixtures       regenerate models-cache/ and tests/fixtures/ with the Python reference libraries
  perf [--compare-python] [--device cuda] [--quick] [--profile-suite]
                 the performance harness: writes a GPT-2-small-shaped checkpoint once, times the
                 bridge, HookedTransformer and the suite (and Python TransformerLens 3.9.0 with
                 --compare-python), writes docs/performance.md and docs/performance.json
  libtorch-dir   print the resolved libtorch directory (after setup)

environment:
  TLRS_VENV           where setup creates its venv (default: <repo>/.venv)
  TLRS_FIXTURES_VENV  where fixtures creates its venv (default: <repo>/.venv-fixtures)
  LIBTORCH            use this libtorch instead of provisioning one
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = match args.split_first() {
        Some((command, rest)) => (command.as_str(), rest),
        None => ("help", &[][..]),
    };
    let root = repo_root();
    let outcome = match command {
        "setup" => libtorch::setup(&root).map(|dir| println!("libtorch ready: {}", dir.display())),
        "libtorch-dir" => libtorch::resolved(&root).map(|dir| println!("{}", dir.display())),
        "test" => with_libtorch(&root, |root| test(root, rest)),
        "bench" => with_libtorch(&root, |root| {
            cargo(
                root,
                &["run", "--package", "bench-suite", "--bin", "tl-bench", "--"],
                rest,
            )
        }),
        "lint" => with_libtorch(&root, lint),
        "fixtures" => fixtures(&root),
        "perf" => perf::perf(&root, rest),
        "help" | "--help" | "-h" => {
            print!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command '{other}'\n\n{USAGE}")),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of this crate's manifest directory. Read at run time (cargo run
/// sets it), not baked in at compile time: with a target directory shared between two clones,
/// cargo may run the xtask binary the other clone built.
fn repo_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

fn with_libtorch(
    root: &Path,
    then: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), String> {
    libtorch::setup(root)?;
    then(root)
}

/// Runs cargo in the workspace root. LIBTORCH is passed through as this process received it
/// (the `.libtorch` default from .cargo/config.toml, or the caller's own), so torch-sys sees the
/// same value as plain cargo commands and is not rebuilt when switching between the two.
fn cargo(root: &Path, base: &[&str], extra: &[String]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    run(Command::new(cargo).current_dir(root).args(base).args(extra))
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .map_err(|e| format!("cannot start {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed ({status})"))
    }
}

/// Every test: the workspace's cargo tests (ARGS go to cargo test), then, when no ARGS narrow
/// the run, the checks that need cargo's build lock free or a second toolchain: a crate outside
/// the workspace built against `bridge`, and the Python round trip of `tl-bench cache`.
fn test(root: &Path, args: &[String]) -> Result<(), String> {
    cargo(root, &["test", "--workspace"], args)?;
    if !args.is_empty() {
        return Ok(());
    }
    cuda_tests(root)?;
    downstream::check(root)?;
    roundtrip(root)
}

/// The CUDA tests: `#[ignore = "needs a CUDA device"]`, each with `cuda` in its name, so the
/// harness reports them as ignored, with that reason, on a machine without a GPU. They run here
/// when a GPU is present, and always with `TLRS_REQUIRE_CUDA=1` (GPU CI), where a missing device
/// then fails them instead of letting them pass unrun.
fn cuda_tests(root: &Path) -> Result<(), String> {
    let required = std::env::var_os("TLRS_REQUIRE_CUDA").is_some_and(|v| v == "1");
    if !required && !gpu_present() {
        println!(
            "CUDA tests: not run (no GPU here; the harness lists them as ignored). \
             TLRS_REQUIRE_CUDA=1 runs them, and fails them without a device."
        );
        return Ok(());
    }
    cargo(
        root,
        &["test", "--workspace", "--", "--ignored", "cuda"],
        &[],
    )
}

/// Whether `nvidia-smi` lists a GPU.
fn gpu_present() -> bool {
    Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("GPU"))
}

fn lint(root: &Path) -> Result<(), String> {
    cargo(root, &["fmt", "--all", "--", "--check"], &[])?;
    cargo(
        root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    let rustdoc_flags = "-D warnings";
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    run(Command::new(cargo_bin)
        .current_dir(root)
        .env("RUSTDOCFLAGS", rustdoc_flags)
        .args(["doc", "--workspace", "--no-deps"]))
}

/// The interpreter of the fixtures' venv (`$TLRS_FIXTURES_VENV`, default `<repo>/.venv-fixtures`),
/// created if missing. The pinned requirements are installed when `always_install` is set or
/// the reference libraries cannot be imported yet.
pub(crate) fn fixtures_python(root: &Path, always_install: bool) -> Result<PathBuf, String> {
    let venv = std::env::var_os("TLRS_FIXTURES_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv-fixtures"));
    let python = libtorch::ensure_venv(&venv)?;
    let ready = || {
        Command::new(&python)
            .args(["-c", "import torch, transformers, transformer_lens"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if always_install || !ready() {
        println!(
            "installing the fixture requirements into {}",
            venv.display()
        );
        run(libtorch::pip_install(&python)
            .arg("-r")
            .arg(root.join("xtask/python/requirements-fixtures.txt")))?;
    }
    Ok(python)
}

/// The Python round trip: `tl-bench cache` files loaded into TransformerLens 3.9.0's
/// `ActivationCache` match its own `run_with_cache` on the embedded model, activations and
/// gradients (xtask/python/cache_roundtrip.py, in the fixtures' venv).
fn roundtrip(root: &Path) -> Result<(), String> {
    let python = fixtures_python(root, false)?;
    cargo(
        root,
        &[
            "build",
            "--quiet",
            "--package",
            "bench-suite",
            "--bin",
            "tl-bench",
        ],
        &[],
    )?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    run(Command::new(&python)
        .arg(root.join("xtask/python/cache_roundtrip.py"))
        .arg("--tl-bench")
        .arg(target_dir.join("debug/tl-bench"))
        .arg("--model-dir")
        .arg(root.join("models-cache/tiny-gpt2")))
}

/// Regenerates the embedded model and the goldens with the Python reference libraries, in a
/// venv of their own (Python is a fixture tool only; nothing at run time needs it).
fn fixtures(root: &Path) -> Result<(), String> {
    let python = fixtures_python(root, true)?;
    run(Command::new(&python)
        .arg(root.join("xtask/python/fixtures.py"))
        .arg("--root")
        .arg(root))
}
