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

/// The first CUDA device this machine does not have.
fn absent_cuda() -> String {
    let absent = if tch::Cuda::is_available() {
        tch::Cuda::device_count()
    } else {
        0
    };
    format!("cuda:{absent}")
}

#[test]
fn usage_and_load_errors_exit_2() {
    let bad_dtype = tl_bench(&["--dtype", "f64"]);
    assert_eq!(bad_dtype.status.code(), Some(2));
    let missing = tl_bench(&["--model", "no-such-model-anywhere", "--quiet"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no-such-model-anywhere"));
    let absent = absent_cuda();
    // Every subcommand refuses a device that is not there, before loading anything.
    for command in [
        vec!["run", "--quiet"],
        vec![
            "cache",
            "--text",
            "x",
            "--out",
            "/nonexistent/never-written.safetensors",
        ],
        vec!["generate", "--prompt", "x"],
        vec!["hooks"],
        vec!["verify"],
    ] {
        let mut args = command.clone();
        args.extend(["--device", absent.as_str()]);
        let out = tl_bench(&args);
        assert_eq!(out.status.code(), Some(2), "{command:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&absent),
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bad_target = tl_bench(&["cache", "--text", "x", "--out", "x", "--grad-of", "logits"]);
    assert_eq!(bad_target.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_target.stderr).contains("logit:TOKEN"));
}

#[test]
fn every_subcommand_takes_a_dtype() {
    let out = tl_bench(&["hooks", "--dtype", "bf16"]);
    assert_eq!(out.status.code(), Some(0));
    let out = tl_bench(&[
        "generate",
        "--dtype",
        "f16",
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "2",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("half.safetensors");
    let out = tl_bench(&[
        "cache",
        "--dtype",
        "bf16",
        "--text",
        "Hello",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let (tensors, meta) = read_cache(&file);
    assert_eq!(meta["dtype"], "bf16");
    assert_eq!(
        tensors["blocks.0.hook_resid_pre"].kind(),
        tch::Kind::BFloat16
    );
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

/// A cache file's tensors and header metadata.
fn read_cache(
    path: &Path,
) -> (
    std::collections::HashMap<String, tch::Tensor>,
    std::collections::HashMap<String, String>,
) {
    let tensors = tch::Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect();
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    (tensors, header.metadata().clone().unwrap_or_default())
}

fn write_cache(dir: &Path, name: &str, extra: &[&str]) -> std::path::PathBuf {
    let file = dir.join(format!("{name}.safetensors"));
    let mut args = vec![
        "cache",
        "--model",
        "tiny-gpt2",
        "--text",
        "Hello world",
        "--out",
        file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = tl_bench(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    file
}

#[test]
fn cache_writes_the_names_and_gradients_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    // TransformerLens names and shapes by default; a HookedTransformer's file has the same keys.
    let (tl, meta) = read_cache(&write_cache(dir.path(), "tl", &["--grad-of", "loss"]));
    let (hooked, _) = read_cache(&write_cache(
        dir.path(),
        "hooked",
        &["--impl", "hooked", "--grad-of", "loss"],
    ));
    let keys = |t: &std::collections::HashMap<String, tch::Tensor>| {
        let mut k: Vec<String> = t.keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&tl), keys(&hooked));
    assert_eq!(
        tl.len(),
        2 + 2 * 74,
        "tokens, logits, 74 hooks and their gradients"
    );
    assert_eq!(tl["blocks.0.attn.hook_z"].size(), vec![1, 3, 4, 16]);
    assert!(tl.contains_key("blocks.3.hook_resid_mid_grad"));
    assert!(!tl.contains_key("blocks.0.attn.o.hook_in"));
    for (key, value) in [
        ("model", "tiny-gpt2"),
        ("impl", "bridge"),
        ("names", "tl"),
        ("dtype", "f32"),
        ("grad_of", "loss"),
        ("processing", "none"),
        ("text", "Hello world"),
        ("str_tokens", r#"["<|endoftext|>","Hello"," world"]"#),
    ] {
        assert_eq!(meta[key], value, "{key}");
    }
    // The bridge's canonical names; both.
    let (bridge, _) = read_cache(&write_cache(dir.path(), "bridge", &["--names", "bridge"]));
    assert!(bridge.contains_key("blocks.0.attn.o.hook_in"));
    assert!(!bridge.contains_key("blocks.0.attn.hook_z"));
    let (both, _) = read_cache(&write_cache(dir.path(), "both", &["--names", "both"]));
    assert!(both["blocks.0.attn.hook_z"].equal(&both["blocks.0.attn.o.hook_in"]));
    // Each target is the gradient it names: a logit's gradient at the last position's
    // unembedding input is that token's column of W_U.
    let (logit, meta) = read_cache(&write_cache(
        dir.path(),
        "logit",
        &["--names", "bridge", "--grad-of", "logit: world@-1"],
    ));
    assert_eq!(meta["grad_of"], "logit: world@-1");
    let grad = &logit["unembed.hook_in_grad"];
    assert_eq!(grad.get(0).get(0).abs().max().double_value(&[]), 0.0);
    assert!(grad.get(0).get(2).abs().max().double_value(&[]) > 0.0);
    let (diff, _) = read_cache(&write_cache(
        dir.path(),
        "diff",
        &["--names", "bridge", "--grad-of", "logit-diff: world,Hello"],
    ));
    assert!(
        diff["unembed.hook_in_grad"]
            .get(0)
            .get(2)
            .abs()
            .max()
            .double_value(&[])
            > 0.0
    );
    // Processed: the summed last logits have an exactly zero gradient after center_unembed,
    // the log-probs do not.
    let (processed, meta) = read_cache(&write_cache(
        dir.path(),
        "processed",
        &["--processed", "--grad-of", "sum-last-logprobs"],
    ));
    assert!(
        meta["processing"].contains("center_unembed: true"),
        "{}",
        meta["processing"]
    );
    assert!(
        processed["blocks.0.hook_resid_pre_grad"]
            .abs()
            .max()
            .double_value(&[])
            > 0.0
    );
}

#[test]
fn the_hf_model_writes_hidden_states() {
    let dir = tempfile::tempdir().unwrap();
    let (hf, meta) = read_cache(&write_cache(dir.path(), "hf", &["--impl", "hf"]));
    assert!(hf.contains_key("hidden_states.4") && hf.contains_key("logits"));
    assert_eq!(meta["names"], "hidden_states");
    let refused = tl_bench(&[
        "cache",
        "--impl",
        "hf",
        "--text",
        "x",
        "--out",
        "x",
        "--grad-of",
        "loss",
    ]);
    assert_eq!(refused.status.code(), Some(2));
}

#[test]
fn run_writes_a_self_contained_html_report() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    let out = tl_bench(&["run", "--quiet", "--html", html.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert_eq!(
        page.matches("<table class=\"heat\">").count(),
        4,
        "2 phases x acts/grads"
    );
    assert!(page.contains("Phase 3: gradients"));
    for external in ["http://", "https://", "<script", "<link", "src="] {
        assert!(
            !page.contains(external),
            "the page fetches nothing: {external}"
        );
    }
    // Each benchmark's time and the phase totals are in the printed report too.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Phase 2 (") && stdout.contains("  time: "),
        "{stdout}"
    );
}

#[test]
fn verify_summarizes_every_model_and_goes_on_after_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("verify.json");
    let html = dir.path().join("verify.html");
    let out = tl_bench(&[
        "verify",
        "--models",
        "tiny-gpt2,no-such-model-anywhere",
        "--phases",
        "1,2",
        "--json",
        json.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("1 of 2 models passed"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["passed"], false);
    let models = report["models"].as_array().unwrap();
    assert_eq!(models[0]["status"], "passed");
    assert_eq!(models[0]["phases"].as_array().unwrap().len(), 2);
    assert_eq!(models[0]["phases"][1]["passed"], 16);
    assert!(models[0]["peak_rss_mib"].as_f64().unwrap() > 0.0);
    assert_eq!(models[1]["status"], "error");
    assert!(models[1]["error"]
        .as_str()
        .unwrap()
        .contains("no-such-model-anywhere"));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("no-such-model-anywhere") && page.contains("<table class=\"heat\">"));
    // With no --models, every embedded model.
    let all = tl_bench(&["verify", "--phases", "1"]);
    assert_eq!(all.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&all.stdout).contains("tiny-gpt2"));
}

#[test]
fn a_copied_binary_finds_the_embedded_models_or_says_how() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("tl-bench");
    std::fs::copy(env!("CARGO_BIN_EXE_tl-bench"), &exe).unwrap();
    let run = |args: &[&str], cache: Option<&Path>| {
        let mut command = Command::new(&exe);
        command.args(args).current_dir(dir.path());
        match cache {
            Some(cache) => command.env("TLRS_MODELS_CACHE", cache),
            None => command.env_remove("TLRS_MODELS_CACHE"),
        };
        command.output().unwrap()
    };
    // From another directory: the source tree's models-cache.
    assert_eq!(run(&["hooks"], None).status.code(), Some(0));
    // A models-cache beside the executable is searched first.
    std::fs::create_dir(dir.path().join("models-cache")).unwrap();
    std::os::unix::fs::symlink(
        Path::new(&embedded_dir()),
        dir.path().join("models-cache/beside-the-binary"),
    )
    .unwrap();
    assert_eq!(
        run(&["hooks", "--model", "beside-the-binary"], None)
            .status
            .code(),
        Some(0)
    );
    // A models cache without the model: the error says how to point at one.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = run(&["hooks"], Some(&empty));
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("set TLRS_MODELS_CACHE to the directory holding tiny-gpt2/"),
        "{said}"
    );
}

/// A copy of a decoder fixture (tests/fixtures/dec-a: a Llama with GQA and llama3 rope) with a
/// word-level tokenizer over its 384 ids ("t0".."t382", and "<|endoftext|>" = 383).
fn llama_with_tokenizer(dir: &Path) -> String {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/dec-a/model");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(source.join(file), dir.join(file)).unwrap();
    }
    let mut vocab = serde_json::Map::new();
    for id in 0..383 {
        vocab.insert(format!("t{id}"), id.into());
    }
    vocab.insert("<|endoftext|>".into(), 383.into());
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [{"id": 383, "content": "<|endoftext|>", "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    dir.display().to_string()
}

#[test]
fn llama_family_models_generate_and_cache_through_the_hf_and_hooked_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let model = llama_with_tokenizer(dir.path());
    let generate = |implementation: &str, extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            &model,
            "--prompt",
            "t5 t17 t99 t3",
            "--impl",
            implementation,
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
    let hf = generate("hf", &[]);
    assert!(hf.starts_with("<|endoftext|> t5 t17 t99 t3"), "{hf}");
    assert_eq!(
        hf.split_whitespace().count(),
        11,
        "BOS, 4 prompt tokens, 6 new: {hf}"
    );
    assert_eq!(generate("hooked", &[]), hf);
    assert_eq!(generate("hooked", &["--no-kv-cache"]), hf);
    assert_eq!(generate("hf", &["--no-kv-cache"]), hf);
    // The HookedTransformer's cache: TransformerLens names, grouped keys [b, p, n_kv, d_head].
    let out = dir.path().join("cache.safetensors");
    let done = tl_bench(&[
        "cache",
        "--model",
        &model,
        "--impl",
        "hooked",
        "--text",
        "t1 t2 t3",
        "--grad-of",
        "loss",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        done.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let (tensors, _) = read_cache(&out);
    assert_eq!(tensors["blocks.0.attn.hook_k"].size(), vec![1, 4, 2, 16]);
    assert!(tensors.contains_key("blocks.1.attn.hook_rot_q_grad"));
    assert!(!tensors.contains_key("hook_pos_embed"));
    // The bridge: the Python bridge's names for the family, every hook firing.
    let hooks = tl_bench(&["hooks", "--model", &model]);
    assert_eq!(
        hooks.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&hooks.stderr)
    );
    let listing = String::from_utf8_lossy(&hooks.stdout);
    for line in [
        "blocks.0.attn.hook_rot_k\t[1, 5, 2, 16]",
        "blocks.1.mlp.gate.hook_out\t[1, 5, 96]",
        "blocks.0.attn.hook_k\t[1, 5, 2, 16]\t(alias of blocks.0.attn.k.hook_out)",
    ] {
        assert!(listing.lines().any(|l| l == line), "{line} in\n{listing}");
    }
    assert_eq!(generate("bridge", &[]), hf);
}

#[test]
fn test_texts_the_suite_cannot_run_on_are_refused_before_loading() {
    let run = |text: &str| tl_bench(&["run", "--quiet", "--test-text", text]);
    let empty = run("");
    assert_eq!(empty.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&empty.stderr).contains("the test text is empty"));
    let long = run(&"word ".repeat(300));
    assert_eq!(long.status.code(), Some(2));
    let said = String::from_utf8_lossy(&long.stderr);
    assert!(
        said.contains("302 tokens") && said.contains("context of 256"),
        "{said}"
    );
    // One token (two with BOS): every check runs and passes, Phase 3's gradients included (its
    // target is well conditioned for any length).
    let one = run("Hello");
    assert_eq!(
        one.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&one.stdout)
    );
    assert!(String::from_utf8_lossy(&one.stdout).contains("Passed: 41 (100.0%)"));
}

/// `generate --impl hf` and `cache --impl hf` run the raw HF model of every family the HF tier
/// implements, and it generates what the bridge generates.
#[test]
fn every_family_generates_and_caches_through_the_hf_tier() {
    for model in ["tiny-pythia", "tiny-opt", "tiny-gemma2"] {
        let generate = |implementation: &str| {
            let out = tl_bench(&[
                "generate",
                "--model",
                model,
                "--prompt",
                "Hello world",
                "--impl",
                implementation,
                "--max-new-tokens",
                "4",
            ]);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{model} {implementation}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert_eq!(generate("hf"), generate("bridge"), "{model}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cache.safetensors");
        let out = tl_bench(&[
            "cache",
            "--model",
            model,
            "--impl",
            "hf",
            "--text",
            "Hello world",
            "--out",
            file.to_str().unwrap(),
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{model}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tensors = tch::Tensor::read_safetensors(&file).unwrap();
        assert!(tensors.iter().any(|(n, _)| n == "logits"), "{model}");
    }
}
