//! `tl-perf suite-profile`: the suite in this process, timed benchmark by benchmark.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_suite::suite::{run_benchmark_suite, SuiteOptions};
use serde_json::{json, Value};

use crate::cli::ProfileArgs;
use crate::measure::{init_torch, model_str};
use crate::system::status_mb;
use crate::AnyResult;

/// Runs the suite in this process, recording the time and RSS at each benchmark boundary.
pub(crate) fn suite_profile(args: &ProfileArgs) -> AnyResult<Value> {
    init_torch(args.device, args.threads);
    let options = SuiteOptions {
        model: model_str(&args.model)?,
        device: args.device,
        ..SuiteOptions::default()
    };
    let start = Instant::now();
    // RSS every 5 ms, to find the peak of each step.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut trace = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                trace.push((
                    start.elapsed().as_secs_f64(),
                    status_mb(None, "VmRSS:").unwrap_or(0.0),
                ));
                std::thread::sleep(Duration::from_millis(5));
            }
            trace
        })
    };
    let mut marks: Vec<(String, f64, f64)> = vec![("load".into(), 0.0, 0.0)];
    let mut progress = |name: &str| {
        marks.push((
            name.to_owned(),
            start.elapsed().as_secs_f64(),
            status_mb(None, "VmRSS:").unwrap_or(f64::NAN),
        ))
    };
    let results = run_benchmark_suite(&options, &mut progress);
    stop.store(true, Ordering::Relaxed);
    let trace = sampler.join().unwrap_or_default();
    let results = results?;
    let total = start.elapsed().as_secs_f64();
    marks.push((
        "end".into(),
        total,
        status_mb(None, "VmRSS:").unwrap_or(f64::NAN),
    ));
    // A step lasts from its mark to the next one. Note: the suite calls `progress` before the
    // benchmarks of Phase 1 and of Phase 3's weight checks, but after each comparison benchmark
    // of Phases 2 and 3 has run, so there a mark's time is that of the benchmark named next.
    let steps: Vec<Value> = marks
        .windows(2)
        .map(|w| {
            let peak = trace
                .iter()
                .filter(|(t, _)| *t >= w[0].1 && *t <= w[1].1)
                .map(|(_, rss)| *rss)
                .fold(w[0].2, f64::max);
            json!({
                "from": w[0].0,
                "to": w[1].0,
                "seconds": w[1].1 - w[0].1,
                "rss_mib_at_start": w[0].2,
                "rss_mib_peak": peak,
            })
        })
        .collect();
    let value = json!({
        "total_s": total,
        "vm_hwm_mib": status_mb(None, "VmHWM:"),
        "results": results.len(),
        "passed": results.iter().filter(|r| r.passed).count(),
        "steps": steps,
    });
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&value)?)?;
    }
    Ok(value)
}
