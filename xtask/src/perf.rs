//! `cargo xtask perf [--compare-python] [--device cuda] [--quick] [--profile-suite]`: the
//! performance harness (docs/performance.md).
//!
//! 1. Makes sure the fixtures' Python environment exists (the venv `cargo xtask fixtures` uses:
//!    `$TLRS_FIXTURES_VENV`, default `<repo>/.venv-fixtures`) and writes the two random-weight
//!    checkpoints once (xtask/python/make_perf_checkpoint.py -> models-cache/generated/): the
//!    GPT-2-small-shaped one everything is measured on, and the Qwen2.5-0.5B-shaped one
//!    (grouped-query attention) the suite also runs on (not with `--quick`).
//! 2. Builds bench-suite's binaries and runs `tl-perf measure` (forward, backward, generation,
//!    load, and the suite as a separate `tl-bench` process).
//! 3. With `--compare-python`, runs xtask/python/perf_python.py: TransformerLens 3.9.0's suite and
//!    the same forward passes in Python, on the same checkpoint, in the same run; then the same
//!    script in a venv with transformer-lens 4.3.0 (`$TLRS_TL4_VENV`, default `<repo>/.venv-tl4`,
//!    made on first use): its suite and the patching sweep through its TransformerBridge
//!    (`--compare-tl4` runs only this one).
//! 4. `tl-perf report` writes docs/performance.md and docs/performance.json
//!    (docs/performance-cuda.{md,json} with `--device cuda`).
//!
//! Intermediate JSON goes to `<repo>/target/perf/`.

use std::path::Path;
use std::process::Command;

use crate::{cargo, libtorch, run};

/// Options of `cargo xtask perf`.
struct PerfArgs {
    compare_python: bool,
    compare_tl4: bool,
    device: String,
    quick: bool,
    profile_suite: bool,
}

fn parse(args: &[String]) -> Result<PerfArgs, String> {
    let mut parsed = PerfArgs {
        compare_python: false,
        compare_tl4: false,
        device: "cpu".to_owned(),
        quick: false,
        profile_suite: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // The targets compare with both TransformerLens versions in one run.
            "--compare-python" => {
                parsed.compare_python = true;
                parsed.compare_tl4 = true;
            }
            "--compare-tl4" => parsed.compare_tl4 = true,
            "--quick" => parsed.quick = true,
            "--profile-suite" => parsed.profile_suite = true,
            "--device" => {
                parsed.device = it
                    .next()
                    .ok_or("--device needs a value (cpu or cuda)")?
                    .clone();
            }
            other => {
                if let Some(device) = other.strip_prefix("--device=") {
                    parsed.device = device.to_owned();
                } else {
                    return Err(format!(
                        "perf: unknown argument '{other}' \
                         (use --compare-python, --compare-tl4, --device cpu|cuda, --quick, --profile-suite)"
                    ));
                }
            }
        }
    }
    if parsed.device != "cpu" && !parsed.device.starts_with("cuda") {
        return Err(format!(
            "perf: unknown device '{}' (cpu or cuda)",
            parsed.device
        ));
    }
    Ok(parsed)
}

/// `cargo xtask perf ARGS`.
pub fn perf(root: &Path, args: &[String]) -> Result<(), String> {
    let args = parse(args)?;
    libtorch::setup(root)?;
    let python = crate::fixtures_python(root, false)?;
    let checkpoint = |shape: &str| {
        run(Command::new(&python)
            .arg(root.join("xtask/python/make_perf_checkpoint.py"))
            .args(["--shape", shape, "--root"])
            .arg(root))
        .map(|()| root.join("models-cache/generated").join(shape))
    };
    let model = checkpoint("gpt2-small")?;
    // The suite on a Llama-family checkpoint too; a smoke test skips it (2 GB of weights).
    let gqa_model = if args.quick {
        None
    } else {
        Some(checkpoint("qwen2.5-0.5b")?)
    };

    cargo(root, &["build", "--package", "bench-suite", "--bins"], &[])?;
    let work = root.join("target/perf");
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    let rust_json = work.join(format!("rust-{}.json", file_tag(&args.device)));
    let mut measure = vec![
        "measure".to_owned(),
        "--model".to_owned(),
        path_str(&model)?,
        "--device".to_owned(),
        args.device.clone(),
        "--out".to_owned(),
        path_str(&rust_json)?,
    ];
    if args.quick {
        measure.push("--quick".to_owned());
    }
    if let Some(gqa) = &gqa_model {
        measure.push("--gqa-model".to_owned());
        measure.push(path_str(gqa)?);
    }
    if args.profile_suite {
        measure.push("--profile-suite".to_owned());
    }
    tl_perf(root, &measure)?;

    // xtask/python/perf_python.py in one venv, writing `out`.
    let python_side = |python: &Path, out: &Path| {
        let mut command = Command::new(python);
        command
            .arg(root.join("xtask/python/perf_python.py"))
            .arg("--model")
            .arg(&model)
            .args(["--device", &args.device])
            .arg("--out")
            .arg(out);
        if args.quick {
            command.arg("--quick");
        }
        if let Some(gqa) = &gqa_model {
            command.arg("--gqa-model").arg(gqa);
        }
        run(&mut command)
    };
    let python_json = work.join(format!("python-{}.json", file_tag(&args.device)));
    if args.compare_python {
        python_side(&python, &python_json)?;
    }
    let tl4_json = work.join(format!("python-tl4-{}.json", file_tag(&args.device)));
    if args.compare_tl4 {
        python_side(&tl4_python(root)?, &tl4_json)?;
    }

    let (md, json) = if args.device == "cpu" {
        ("docs/performance.md", "docs/performance.json")
    } else {
        ("docs/performance-cuda.md", "docs/performance-cuda.json")
    };
    let mut report = vec![
        "report".to_owned(),
        "--rust".to_owned(),
        path_str(&rust_json)?,
        "--md".to_owned(),
        path_str(&root.join(md))?,
        "--json".to_owned(),
        path_str(&root.join(json))?,
    ];
    if args.compare_python {
        report.push("--python".to_owned());
        report.push(path_str(&python_json)?);
    }
    if args.compare_tl4 {
        report.push("--tl4".to_owned());
        report.push(path_str(&tl4_json)?);
    }
    tl_perf(root, &report)?;
    println!("wrote {md} and {json}");
    Ok(())
}

/// transformer-lens 4.3.0's venv (`$TLRS_TL4_VENV`, default `<repo>/.venv-tl4`), installed on
/// first use: what a user picking TransformerLens today gets.
fn tl4_python(root: &Path) -> Result<std::path::PathBuf, String> {
    let venv = std::env::var_os("TLRS_TL4_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join(".venv-tl4"));
    let python = libtorch::ensure_venv(&venv)?;
    let ready = Command::new(&python)
        .args([
            "-c",
            "import importlib.metadata as m; assert m.version('transformer-lens') == '4.3.0'",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        println!("installing transformer-lens 4.3.0 into {}", venv.display());
        run(libtorch::pip_install(&python).arg("transformer-lens==4.3.0"))?;
    }
    Ok(python)
}

fn file_tag(device: &str) -> String {
    device.replace(':', "")
}

fn path_str(path: &Path) -> Result<String, String> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{} is not UTF-8", path.display()))
}

/// `cargo run -p bench-suite --bin tl-perf -- ARGS` (already built: starts at once).
fn tl_perf(root: &Path, args: &[String]) -> Result<(), String> {
    cargo(
        root,
        &[
            "run",
            "--quiet",
            "--package",
            "bench-suite",
            "--bin",
            "tl-perf",
            "--",
        ],
        args,
    )
}
