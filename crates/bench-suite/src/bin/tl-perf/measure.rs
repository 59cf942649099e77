//! `tl-perf measure`: the plan, the suite and load probes in child processes, load times.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bridge::{Gpt2LMHeadModel, TransformerBridge};
use hooked_ref::HookedTransformer;
use lens_core::LoadOptions;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

use crate::cli::{device_name, MeasureArgs, ProbeArgs};
use crate::system::{loadavg, machine, status_mb, try_wait_with_usage, CpuSnap, RssSampler};
use crate::targets::get;
use crate::timing::{interleaved, sync, Variant};
use crate::workloads::{measure_backward, measure_forward, measure_generation, measure_patching};
use crate::AnyResult;

pub(crate) fn model_str(path: &Path) -> AnyResult<String> {
    Ok(path
        .to_str()
        .ok_or("the model path is not UTF-8")?
        .to_owned())
}

fn safetensors_file(model: &Path) -> PathBuf {
    model.join("model.safetensors")
}

pub(crate) fn init_torch(device: Device, threads: i32) {
    if device == Device::Cpu {
        tch::set_num_threads(threads);
    }
    // libtorch's lazy initialisation, so that it is not counted in the first measurement.
    let _ = Tensor::ones([2, 2], (Kind::Float, device))
        .matmul(&Tensor::ones([2, 2], (Kind::Float, device)));
    sync(device);
}

fn load_options(device: Device) -> LoadOptions {
    LoadOptions {
        device,
        kind: Some(Kind::Float),
        ..LoadOptions::default()
    }
}

pub(crate) struct Plan {
    pub(crate) fwd_small: usize,
    pub(crate) fwd_large: usize,
    pub(crate) backward: usize,
    pub(crate) generation: usize,
    pub(crate) generation_uncached: usize,
    pub(crate) loads: usize,
    pub(crate) new_tokens: usize,
    pub(crate) patching: usize,
}

impl Plan {
    pub(crate) fn new(device: Device, quick: bool) -> Self {
        match (quick, device) {
            (true, _) => Plan {
                fwd_small: 1,
                fwd_large: 1,
                backward: 1,
                generation: 1,
                generation_uncached: 1,
                loads: 1,
                new_tokens: 8,
                patching: 1,
            },
            // The cached-generation and 8x128 ratios sit near their bounds, where the machine's
            // spread decides single runs: more samples for them, fewer for the long uncached run.
            (false, Device::Cpu) => Plan {
                fwd_small: 7,
                fwd_large: 7,
                backward: 7,
                generation: 7,
                generation_uncached: 2,
                loads: 3,
                new_tokens: 64,
                patching: 3,
            },
            (false, _) => Plan {
                fwd_small: 20,
                fwd_large: 20,
                backward: 20,
                generation: 5,
                generation_uncached: 5,
                loads: 3,
                new_tokens: 64,
                patching: 3,
            },
        }
    }
}

pub(crate) fn measure(args: &MeasureArgs) -> AnyResult<()> {
    let started = Instant::now();
    let device = args.device;
    bench_suite::suite::check_device(device)?;
    let model = model_str(&args.model)?;
    let mut plan = Plan::new(device, args.quick);
    if let Some(n) = args.repeats {
        (plan.fwd_small, plan.fwd_large, plan.backward) = (n, n, n);
    }
    let section = |name: &str| args.only.is_empty() || args.only.iter().any(|s| s == name);
    let mut out = serde_json::Map::new();
    out.insert("loadavg_start".into(), json!(loadavg()));

    // The suites first, while nothing else of this process holds memory.
    if !args.skip_suite && section("suite") {
        eprintln!("tl-perf: the full suite (tl-bench --quiet, phases 1-3) ...");
        out.insert("suite".into(), measure_suite(&args.model, device)?);
        if let Some(gqa) = &args.gqa_model {
            eprintln!(
                "tl-perf: the full suite on the Llama-family checkpoint ({}) ...",
                gqa.display()
            );
            out.insert("suite_gqa".into(), measure_suite(gqa, device)?);
        }
    }
    if args.profile_suite {
        eprintln!("tl-perf: the suite again, timing each benchmark (tl-perf suite-profile) ...");
        out.insert(
            "suite_profile".into(),
            run_self(&[
                "suite-profile",
                "--model",
                &model,
                "--device",
                &device_name(device),
                "--threads",
                &args.threads.to_string(),
            ])?,
        );
    }
    out.insert("machine".into(), machine(device, args.threads, &args.model));
    out.insert("quick".into(), json!(args.quick));

    if section("load") {
        eprintln!("tl-perf: load probes (child processes) ...");
        let mut probes = serde_json::Map::new();
        for what in ["read", "bridge", "hooked"] {
            probes.insert(
                what.into(),
                run_probe(&args.model, what, device, args.threads)?,
            );
        }
        out.insert("load_memory".into(), Value::Object(probes));
    }

    init_torch(device, args.threads);
    if section("load") {
        eprintln!("tl-perf: load times ...");
        out.insert(
            "load".into(),
            measure_loads(&args.model, device, plan.loads)?,
        );
    }

    // The raw HF model on its own (no hook points, and no unembedding bias: the bridge adds a
    // zero `b_U` to the HF model it wraps, as the Python bridge does).
    let hf = Gpt2LMHeadModel::from_pretrained(&model, device, Kind::Float)?;
    let bridge = TransformerBridge::boot(&model, device, Kind::Float)?;
    let hooked = HookedTransformer::from_pretrained_no_processing(&model, &load_options(device))?;
    let vocab = bridge.config().vocab_size();

    if section("forward") {
        let mut forward = serde_json::Map::new();
        for (batch, repeats) in [(1i64, plan.fwd_small), (8, plan.fwd_large)] {
            eprintln!("tl-perf: forward passes {batch}x128 ...");
            let tokens = random_tokens(batch, 128, vocab, device, batch as u64);
            let stats = measure_forward(&hf, &bridge, &hooked, &tokens, device, repeats)?;
            forward.insert(format!("{batch}x128"), serde_json::to_value(stats)?);
        }
        out.insert("forward".into(), Value::Object(forward));
    }
    drop(hooked);

    if section("backward") {
        eprintln!("tl-perf: forward + backward ...");
        let tokens = random_tokens(1, 128, vocab, device, 11);
        out.insert(
            "backward".into(),
            measure_backward(&bridge, &tokens, device, plan.backward)?,
        );
    }

    if section("patching") {
        eprintln!("tl-perf: an activation-patching sweep, one patch at a time and batched ...");
        out.insert(
            "patching".into(),
            measure_patching(&bridge, device, plan.patching)?,
        );
    }

    if section("generation") {
        eprintln!("tl-perf: greedy generation ...");
        out.insert(
            "generation".into(),
            measure_generation(&hf, &bridge, device, &plan)?,
        );
    }
    out.insert("loadavg_end".into(), json!(loadavg()));
    out.insert(
        "measure_wall_s".into(),
        json!(started.elapsed().as_secs_f64()),
    );
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&Value::Object(out))?,
    )?;
    eprintln!(
        "tl-perf: wrote {} ({:.0} s)",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub(crate) fn random_tokens(batch: i64, len: i64, vocab: i64, device: Device, seed: u64) -> Tensor {
    tch::manual_seed(seed as i64);
    Tensor::randint(vocab, [batch, len], (Kind::Int64, Device::Cpu)).to_device(device)
}

/// The directory of this executable, where cargo also puts `tl-bench`.
fn sibling_binary(name: &str) -> AnyResult<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found (build it: cargo build -p bench-suite --bins)",
            path.display()
        )
        .into())
    }
}

/// How many times the suite runs; the median is kept.
const SUITE_RUNS: usize = 3;

/// The suite on `model`, [`SUITE_RUNS`] times in child processes: the median run (its own
/// breakdown included), every run's wall time, and the largest peak RSS of the runs.
fn measure_suite(model: &Path, device: Device) -> AnyResult<Value> {
    // The checkpoint in the page cache first, as it is for the Python suite (which runs after
    // the Rust measurements): otherwise the Rust suite alone pays reading it from disk.
    warm_page_cache(&safetensors_file(model))?;
    let checkpoint = checkpoint_figures(model)?;
    let model = model_str(model)?;
    // The suite's wall time varies by a second or more from run to run here (page faults of
    // fresh memory are most of its system time).
    let mut runs = (0..SUITE_RUNS)
        .map(|_| run_suite_child(&model, device))
        .collect::<AnyResult<Vec<Value>>>()?;
    let walls: Vec<f64> = runs.iter().filter_map(|r| get(r, "wall_s")).collect();
    let peak = runs
        .iter()
        .filter_map(|r| get(r, "peak_rss_mb"))
        .fold(f64::NAN, f64::max);
    runs.sort_by(|a, b| {
        let wall = |v: &Value| get(v, "wall_s").unwrap_or(f64::INFINITY);
        wall(a).total_cmp(&wall(b))
    });
    let mut suite = runs.swap_remove(runs.len() / 2);
    suite["runs"] = json!(walls.len());
    suite["wall_s_runs"] = json!(walls);
    suite["peak_rss_mb"] = json!(peak);
    suite["checkpoint"] = checkpoint;
    Ok(suite)
}

/// The checkpoint's weights (its safetensors file) and its embedding matrix, in MiB of f32:
/// what the suite's memory bound is computed from.
fn checkpoint_figures(dir: &Path) -> AnyResult<Value> {
    let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let field = |names: &[&str]| names.iter().find_map(|n| config.get(*n)?.as_f64());
    let vocab = field(&["vocab_size"]).ok_or("config.json has no vocab_size")?;
    let width =
        field(&["hidden_size", "n_embd", "d_model"]).ok_or("config.json has no hidden_size")?;
    let mib = |bytes: f64| bytes / 1_048_576.0;
    Ok(json!({
        "weights_mib": mib(std::fs::metadata(safetensors_file(dir))?.len() as f64),
        "embedding_mib": mib(vocab * width * 4.0),
        "model_type": config.get("model_type"),
    }))
}

/// `tl-bench --quiet --model DIR --json F` as a child process: wall time, and its peak RSS and
/// CPU time from wait4 and, as a cross-check, VmHWM polled from /proc while it runs.
fn run_suite_child(model: &str, device: Device) -> AnyResult<Value> {
    let bench = sibling_binary("tl-bench")?;
    let json_path = std::env::temp_dir().join(format!("tl-perf-suite-{}.json", std::process::id()));
    let before = CpuSnap::now();
    let start = Instant::now();
    let mut child = Command::new(&bench)
        .args([
            "--quiet",
            "--model",
            model,
            "--device",
            &device_name(device),
            "--json",
        ])
        .arg(&json_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = child.id();
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    let mut polled_hwm = 0.0f64;
    let usage = loop {
        if let Some(hwm) = status_mb(Some(pid), "VmHWM:") {
            polled_hwm = polled_hwm.max(hwm);
        }
        if let Some(usage) = try_wait_with_usage(pid)? {
            break usage;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let wall = start.elapsed().as_secs_f64();
    let others = CpuSnap::now().others_since(&before);
    let summary = reader.join().unwrap_or_default();
    let results: Value = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let _ = std::fs::remove_file(&json_path);
    let (total, passed, failed) = count_results(&results);
    let failures: Vec<String> = summary
        .lines()
        .filter(|l| l.contains("[FAIL]") || l.contains("[ERROR]"))
        .map(|l| l.trim().to_owned())
        .collect();
    // Where the time went, from the suite's own report: load, each phase (its recording of
    // both models included), each benchmark.
    let benchmarks: Vec<Value> = results
        .get("results")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|r| json!({"phase": r.get("phase"), "name": r.get("name"), "seconds": r.get("seconds")}))
                .collect()
        })
        .unwrap_or_default();
    Ok(json!({
        "load_s": results.get("load_seconds"),
        "phases": results.get("phases"),
        "benchmarks": benchmarks,
        "command": format!("tl-bench --quiet --model <dir> --device {}", device_name(device)),
        "wall_s": wall,
        "peak_rss_mb": usage.peak_rss_mb,
        "peak_rss_polled_mb": polled_hwm,
        "cpu_s": usage.cpu_s,
        "others_cores": others,
        "exit_code": usage.exit_code,
        "results": total,
        "passed": passed,
        "failed": failed,
        "failures": failures,
    }))
}

/// (results, passed, failed) from tl-bench's JSON (`{"results": [{"passed": ...}]}`).
fn count_results(report: &Value) -> (usize, usize, usize) {
    let list = report
        .get("results")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let passed = list
        .iter()
        .filter(|r| r.get("passed").and_then(Value::as_bool) == Some(true))
        .count();
    let failed = list
        .iter()
        .filter(|r| {
            r.get("passed").and_then(Value::as_bool) == Some(false)
                && r.get("severity").and_then(Value::as_str) != Some("SKIPPED")
        })
        .count();
    (list.len(), passed, failed)
}

fn run_probe(model: &Path, what: &str, device: Device, threads: i32) -> AnyResult<Value> {
    run_self(&[
        "load-probe",
        "--model",
        &model_str(model)?,
        "--what",
        what,
        "--device",
        &device_name(device),
        "--threads",
        &threads.to_string(),
    ])
}

/// Runs this executable with `args` and parses the JSON it prints.
fn run_self(args: &[&str]) -> AnyResult<Value> {
    let output = Command::new(std::env::current_exe()?)
        .args(args)
        .stderr(Stdio::inherit())
        .output()?;
    if !output.status.success() {
        return Err(format!("tl-perf {} failed ({})", args.join(" "), output.status).into());
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// One load in a fresh process, with the memory it took: peak anonymous RSS sampled every
/// millisecond (the weights' own copies) and VmHWM (which also counts the pages of the
/// memory-mapped file while they are mapped).
pub(crate) fn load_probe(args: &ProbeArgs) -> AnyResult<()> {
    init_torch(args.device, args.threads);
    let model = model_str(&args.model)?;
    let file = safetensors_file(&args.model);
    let file_mb = std::fs::metadata(&file)?.len() as f64 / 1e6 * (1e6 / 1048576.0);
    // Warm the page cache (through a small buffer, so this process's peak RSS stays put), so
    // every probe reads from memory as the in-process timings do.
    warm_page_cache(&file)?;
    let base_anon = status_mb(None, "RssAnon:").unwrap_or(f64::NAN);
    let base_rss = status_mb(None, "VmRSS:").unwrap_or(f64::NAN);
    let base_hwm = status_mb(None, "VmHWM:").unwrap_or(f64::NAN);
    let sampler = RssSampler::start();
    let start = Instant::now();
    let keep: Box<dyn std::any::Any> = match args.what.as_str() {
        "read" => Box::new(std::fs::read(&file)?),
        "bridge" => Box::new(TransformerBridge::boot(&model, args.device, Kind::Float)?),
        "hooked" => Box::new(HookedTransformer::from_pretrained_no_processing(
            &model,
            &load_options(args.device),
        )?),
        other => return Err(format!("unknown probe '{other}'").into()),
    };
    sync(args.device);
    let seconds = start.elapsed().as_secs_f64();
    let (peak_anon, peak_rss) = sampler.finish();
    let after_anon = status_mb(None, "RssAnon:").unwrap_or(f64::NAN);
    let hwm = status_mb(None, "VmHWM:").unwrap_or(f64::NAN);
    drop(keep);
    let value = json!({
        "what": args.what,
        "seconds": seconds,
        "file_mib": file_mb,
        "baseline_anon_mib": base_anon,
        "baseline_rss_mib": base_rss,
        "baseline_hwm_mib": base_hwm,
        "peak_anon_growth_mib": peak_anon - base_anon,
        "peak_rss_growth_mib": peak_rss.max(hwm) - base_rss,
        "anon_after_growth_mib": after_anon - base_anon,
        "vm_hwm_mib": hwm,
    });
    println!("{value}");
    Ok(())
}

fn warm_page_cache(file: &Path) -> AnyResult<()> {
    let mut reader = std::fs::File::open(file)?;
    let mut buffer = vec![0u8; 1 << 20];
    while std::io::Read::read(&mut reader, &mut buffer)? > 0 {}
    Ok(())
}

fn measure_loads(model: &Path, device: Device, repeats: usize) -> AnyResult<Value> {
    let name = model_str(model)?;
    let file = safetensors_file(model);
    let bytes = std::fs::metadata(&file)?.len();
    let mut variants: Vec<Variant<'_>> = vec![
        (
            "read",
            Box::new(|| {
                let data = std::fs::read(&file)?;
                std::hint::black_box(&data);
                Ok(())
            }),
        ),
        (
            "bridge",
            Box::new(|| {
                drop(TransformerBridge::boot(&name, device, Kind::Float)?);
                Ok(())
            }),
        ),
        (
            "hooked",
            Box::new(|| {
                drop(HookedTransformer::from_pretrained_no_processing(
                    &name,
                    &load_options(device),
                )?);
                Ok(())
            }),
        ),
        (
            "hf_weights_only",
            Box::new(|| {
                drop(lens_core::Weights::load(
                    &[&file],
                    Some(Kind::Float),
                    device,
                )?);
                Ok(())
            }),
        ),
        (
            "tokenizer_only",
            Box::new(|| {
                let files = lens_core::ModelSource::resolve(&name, &Default::default())?;
                if let Some(path) = files.tokenizer {
                    drop(lens_core::Tokenizer::from_file(&path, Default::default())?);
                }
                Ok(())
            }),
        ),
    ];
    let stats = interleaved(device, 1, repeats, &mut variants)?;
    Ok(json!({ "safetensors_bytes": bytes, "stats": stats }))
}
