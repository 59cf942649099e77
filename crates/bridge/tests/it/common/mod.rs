//! Helpers shared by the golden tests: fixture files, models built from them, and the error
//! measure err = max|ours - golden| / max(1, max|golden|).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bridge::{Gpt2LMHeadModel, TransformerBridge};
use lens_core::{HfConfig, Weights};
use tch::{Device, Kind, Tensor};

/// Every comparison's bound.
pub const TOLERANCE: f64 = 1e-5;

/// The two golden configs.
pub const CONFIGS: [&str; 2] = ["small", "knobs"];

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn read_tensors(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

fn config_and_weights(
    config: &str,
    kind: Kind,
    device: Device,
) -> (lens_core::Gpt2Config, Weights) {
    let dir = fixtures().join(config).join("model");
    let hf_config = HfConfig::from_file(dir.join("config.json")).expect("fixture config");
    let gpt2 = hf_config.as_gpt2().expect("a GPT-2 config").clone();
    let weights = Weights::load(&[dir.join("model.safetensors")], Some(kind), device)
        .expect("fixture weights");
    (gpt2, weights)
}

/// The raw HF model of a fixture config.
pub fn hf_model(config: &str) -> Gpt2LMHeadModel {
    let (cfg, weights) = config_and_weights(config, Kind::Float, Device::Cpu);
    Gpt2LMHeadModel::from_weights(cfg, weights, Device::Cpu, Kind::Float).expect("HF model")
}

/// The bridge over a fixture config (no tokenizer: the fixtures have none).
pub fn bridge(config: &str) -> TransformerBridge {
    bridge_on(config, Device::Cpu, Kind::Float)
}

pub fn bridge_on(config: &str, device: Device, kind: Kind) -> TransformerBridge {
    let (cfg, weights) = config_and_weights(config, kind, device);
    TransformerBridge::from_parts(cfg, weights, None, device, kind).expect("bridge")
}

/// err = max|a - b| / max(1, max|b|) over the entries where `keep` holds (all when `None`).
pub fn relative_error(ours: &Tensor, golden: &Tensor, keep: Option<&Tensor>) -> f64 {
    assert_eq!(ours.size(), golden.size(), "shapes differ");
    let ours = ours.to_device(Device::Cpu).to_kind(Kind::Double);
    let golden = golden.to_device(Device::Cpu).to_kind(Kind::Double);
    let (ours, golden) = match keep {
        Some(keep) => {
            let keep = keep.to_device(Device::Cpu);
            (ours.masked_select(&keep), golden.masked_select(&keep))
        }
        None => (ours, golden),
    };
    if golden.numel() == 0 {
        return 0.0;
    }
    let scale = golden.abs().max().double_value(&[]).max(1.0);
    let diff = (ours - golden).abs().max().double_value(&[]);
    if diff.is_nan() {
        f64::INFINITY
    } else {
        diff / scale
    }
}

/// Per-prompt golden data: `prompt_order` of a golden JSON.
pub fn prompt_ids(meta: &serde_json::Value) -> Vec<String> {
    meta["prompt_order"]
        .as_array()
        .expect("prompt_order")
        .iter()
        .map(|p| p.as_str().expect("prompt id").to_owned())
        .collect()
}

/// The attention mask of a prompt when it has padding.
pub fn padding_mask(golden: &BTreeMap<String, Tensor>, pid: &str) -> Option<Tensor> {
    golden
        .get(&format!("{pid}/attention_mask"))
        .filter(|m| m.min().int64_value(&[]) == 0)
        .map(Tensor::shallow_clone)
}

/// Tracks the worst error per named family of comparisons and the failures.
#[derive(Default)]
pub struct Report {
    pub worst: BTreeMap<String, f64>,
    pub failures: Vec<String>,
}

impl Report {
    pub fn check(&mut self, family: &str, what: &str, err: f64) {
        let w = self.worst.entry(family.to_owned()).or_insert(0.0);
        *w = w.max(err);
        // NaN fails too.
        if err.is_nan() || err > TOLERANCE {
            self.failures.push(format!("{what}: err {err:.3e}"));
        }
    }

    /// Records an error for the summary without judging it.
    pub fn note(&mut self, family: &str, err: f64) {
        let w = self.worst.entry(family.to_owned()).or_insert(0.0);
        *w = w.max(err);
    }

    pub fn fail(&mut self, what: String) {
        self.failures.push(what);
    }

    pub fn assert_ok(&self, title: &str) {
        eprintln!("{title}: worst err per family: {:?}", self.worst);
        assert!(
            self.failures.is_empty(),
            "{title}: {} mismatches:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

/// A random GPT-2 with the given shape, written to a temporary directory in HuggingFace layout
/// (config.json + model.safetensors) and booted as a bridge.
pub fn random_bridge(
    n_layer: i64,
    n_embd: i64,
    n_head: i64,
    n_inner: i64,
    vocab: i64,
    n_positions: i64,
) -> (TransformerBridge, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = serde_json::json!({
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, "n_inner": n_inner,
        "vocab_size": vocab, "n_positions": n_positions, "n_ctx": n_positions,
        "bos_token_id": vocab - 1, "eos_token_id": vocab - 1,
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("config");
    tch::manual_seed(7);
    let r = |shape: &[i64], std: f64| Tensor::randn(shape, (Kind::Float, Device::Cpu)) * std;
    let mut tensors: Vec<(String, Tensor)> = vec![
        ("transformer.wte.weight".into(), r(&[vocab, n_embd], 0.1)),
        (
            "transformer.wpe.weight".into(),
            r(&[n_positions, n_embd], 0.1),
        ),
        ("transformer.ln_f.weight".into(), r(&[n_embd], 0.1) + 1.0),
        ("transformer.ln_f.bias".into(), r(&[n_embd], 0.05)),
    ];
    for l in 0..n_layer {
        let p = |s: &str| format!("transformer.h.{l}.{s}");
        for (name, shape, std, offset) in [
            ("ln_1.weight", vec![n_embd], 0.1, 1.0),
            ("ln_1.bias", vec![n_embd], 0.05, 0.0),
            ("attn.c_attn.weight", vec![n_embd, 3 * n_embd], 0.2, 0.0),
            ("attn.c_attn.bias", vec![3 * n_embd], 0.05, 0.0),
            ("attn.c_proj.weight", vec![n_embd, n_embd], 0.1, 0.0),
            ("attn.c_proj.bias", vec![n_embd], 0.05, 0.0),
            ("ln_2.weight", vec![n_embd], 0.1, 1.0),
            ("ln_2.bias", vec![n_embd], 0.05, 0.0),
            ("mlp.c_fc.weight", vec![n_embd, n_inner], 0.1, 0.0),
            ("mlp.c_fc.bias", vec![n_inner], 0.05, 0.0),
            ("mlp.c_proj.weight", vec![n_inner, n_embd], 0.1, 0.0),
            ("mlp.c_proj.bias", vec![n_embd], 0.05, 0.0),
        ] {
            tensors.push((p(name), r(&shape, std) + offset));
        }
    }
    Tensor::write_safetensors(&tensors, dir.path().join("model.safetensors")).expect("weights");
    let path = dir.path().to_str().expect("utf-8 temp path").to_owned();
    let bridge = TransformerBridge::boot(&path, Device::Cpu, Kind::Float).expect("boot");
    (bridge, dir)
}
