//! The `tl-bench` command line: exit codes, the JSON report, and the helper subcommands on the
//! embedded model given as a directory in HF layout.

use std::path::Path;
use std::process::{Command, Output};

fn tl_bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tl-bench"))
        .args(args)
        .output()
        .expect("tl-bench runs")
}

fn embedded_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models-cache/tiny-gpt2")
        .display()
        .to_string()
}

#[test]
fn a_passing_run_exits_0_and_writes_every_result_as_json() {
    let dir = std::env::temp_dir().join(format!("tl-bench-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let out = tl_bench(&[
        "run",
        "--quiet",
        "--model",
        &embedded_dir(),
        "--json",
        json.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("BENCHMARK RESULTS") && stdout.contains("Passed: 41 (100.0%)"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["passed"], true);
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 41);
    for key in ["name", "phase", "severity", "passed", "message", "details"] {
        assert!(
            results.iter().all(|r| r.get(key).is_some()),
            "every result has '{key}'"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn usage_and_load_errors_exit_2() {
    let bad_dtype = tl_bench(&["--dtype", "f64"]);
    assert_eq!(bad_dtype.status.code(), Some(2));
    let missing = tl_bench(&["--model", "no-such-model-anywhere", "--quiet"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no-such-model-anywhere"));
    if !tch::Cuda::is_available() {
        let cuda = tl_bench(&["--device", "cuda", "--quiet"]);
        assert_eq!(cuda.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&cuda.stderr).contains("cuda:0"));
    }
}

#[test]
fn hooks_lists_names_with_shapes() {
    let out = tl_bench(&["hooks", "--model", &embedded_dir()]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().count(),
        13 + 52 * 4,
        "637-name pattern for 4 layers"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("blocks.0.hook_resid_pre\t[1, 5, 64]")),
        "{text}"
    );
    assert!(text
        .lines()
        .any(|l| l.starts_with("blocks.3.attn.hook_result\tfires with use_attn_result")));
}

#[test]
fn generate_is_the_same_with_and_without_the_cache_and_for_every_implementation() {
    let run = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            "tiny-gpt2",
            "--prompt",
            "The quick brown fox",
            "--max-new-tokens",
            "6",
        ];
        args.extend_from_slice(extra);
        let out = tl_bench(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let cached = run(&[]);
    assert!(
        cached.starts_with("<|endoftext|>The quick brown fox"),
        "{cached}"
    );
    assert_eq!(run(&["--no-kv-cache"]), cached);
    assert_eq!(run(&["--impl", "hooked"]), cached);
    assert_eq!(run(&["--impl", "hf"]), cached);
    let sampled = run(&["--temperature", "0.8", "--seed", "7"]);
    assert_eq!(run(&["--temperature", "0.8", "--seed", "7"]), sampled);
}

#[test]
fn cache_writes_activations_and_gradients() {
    let dir = std::env::temp_dir().join(format!("tl-bench-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (implementation, expected) in [
        ("bridge", "blocks.0.hook_in_grad"),
        ("hooked", "blocks.0.hook_resid_pre_grad"),
        ("hf", "hidden_states.4"),
    ] {
        let file = dir.join(format!("{implementation}.safetensors"));
        let mut args = vec![
            "cache",
            "--model",
            "tiny-gpt2",
            "--text",
            "Hello world",
            "--impl",
            implementation,
            "--out",
            file.to_str().unwrap(),
        ];
        if implementation != "hf" {
            args.push("--grads");
        }
        let out = tl_bench(&args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tensors = tch::Tensor::read_safetensors(&file).unwrap();
        let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            names.contains(&"tokens") && names.contains(&"logits") && names.contains(&expected),
            "{implementation}: {names:?}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
