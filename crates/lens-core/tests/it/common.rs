//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

use lens_core::LensError;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use tch::{Kind, Tensor};

/// Fails the test without a CUDA device. CUDA tests are `#[ignore = "needs a CUDA device"]`:
/// they run only when asked for (`cargo xtask test` asks on a machine with a GPU, or with
/// `TLRS_REQUIRE_CUDA=1`), and asked for without a device they fail.
pub fn require_cuda() {
    assert!(
        tch::Cuda::is_available(),
        "this CUDA test was asked for, but no CUDA device is available"
    );
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The committed embedded model.
pub fn tiny_gpt2_dir() -> PathBuf {
    workspace().join("models-cache/tiny-gpt2")
}

/// Bytes of a CPU tensor, as safetensors stores them.
pub fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let t = t.contiguous();
    let mut bytes = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut bytes, t.numel());
    bytes
}

fn dtype_of(kind: Kind) -> Dtype {
    match kind {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        other => panic!("test helper: no dtype for {other:?}"),
    }
}

/// Writes tensors to a safetensors file with the safetensors crate.
pub fn write_safetensors(path: &Path, tensors: &[(&str, &Tensor)]) {
    let data: Vec<(String, Vec<u8>, Dtype, Vec<usize>)> = tensors
        .iter()
        .map(|(name, t)| {
            (
                name.to_string(),
                tensor_bytes(t),
                dtype_of(t.kind()),
                t.size().iter().map(|&d| d as usize).collect(),
            )
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(name, bytes, dtype, shape)| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), bytes).expect("valid view"),
            )
        })
        .collect();
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    safetensors::serialize_to_file(views, Some(meta), path).expect("write safetensors");
}

/// A small, valid GPT-2 config.
pub fn tiny_config_json() -> String {
    serde_json::json!({
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "n_embd": 8,
        "n_head": 2,
        "n_layer": 1,
        "n_positions": 16,
        "vocab_size": 12,
        "bos_token_id": 11,
        "eos_token_id": 11,
    })
    .to_string()
}

/// A few named tensors with distinct, exactly representable values.
pub fn tiny_tensors() -> Vec<(String, Tensor)> {
    let f = |n: i64, offset: f64| Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) * 0.5 + offset;
    vec![
        (
            "transformer.wte.weight".to_string(),
            f(12 * 8, 0.0).reshape([12, 8]),
        ),
        (
            "transformer.wpe.weight".to_string(),
            f(16 * 8, -3.0).reshape([16, 8]),
        ),
        (
            "transformer.h.0.attn.c_attn.weight".to_string(),
            f(8 * 24, 1.0).reshape([8, 24]),
        ),
        ("transformer.h.0.attn.c_attn.bias".to_string(), f(24, 2.0)),
        ("transformer.ln_f.weight".to_string(), f(8, 4.0)),
    ]
}

/// Writes a model directory: config.json, weights (single file or two shards with an index),
/// optionally a tokenizer.json. Returns the tensors written.
pub fn write_model_dir(
    dir: &Path,
    sharded: bool,
    tokenizer: Option<&str>,
) -> Vec<(String, Tensor)> {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), tiny_config_json()).unwrap();
    let tensors = tiny_tensors();
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    if sharded {
        let (a, b) = refs.split_at(2);
        let names = [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ];
        write_safetensors(&dir.join(names[0]), a);
        write_safetensors(&dir.join(names[1]), b);
        let mut map = serde_json::Map::new();
        for (name, _) in a {
            map.insert(name.to_string(), names[0].into());
        }
        for (name, _) in b {
            map.insert(name.to_string(), names[1].into());
        }
        let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    } else {
        write_safetensors(&dir.join("model.safetensors"), &refs);
    }
    if let Some(tok) = tokenizer {
        std::fs::write(dir.join("tokenizer.json"), tok).unwrap();
    }
    tensors
}

/// A word-level tokenizer.json over `words` (ids in order), whitespace pre-tokenizer.
/// With `bos_template`, the post-processor prepends `<s>` like Llama's tokenizers do.
pub fn word_level_tokenizer(words: &[&str], bos_template: bool) -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), i.into()))
        .collect();
    let added: Vec<serde_json::Value> = words
        .iter()
        .enumerate()
        .filter(|(_, w)| w.starts_with('<'))
        .map(|(i, w)| {
            serde_json::json!({"id": i, "content": w, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let post = if bos_template {
        let bos = words
            .iter()
            .position(|w| *w == "<s>")
            .expect("<s> in words");
        serde_json::json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [bos], "tokens": ["<s>"]}}
        })
    } else {
        serde_json::Value::Null
    };
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": post,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
    .to_string()
}

/// A word-level tokenizer matching [`tiny_config_json`]: 12 words, `<|endoftext|>` = 11.
pub fn toy_tokenizer() -> String {
    word_level_tokenizer(
        &[
            "<unk>",
            "hello",
            "world",
            "the",
            "quick",
            "brown",
            "fox",
            "jumps",
            "over",
            "lazy",
            "dog",
            "<|endoftext|>",
        ],
        false,
    )
}

/// Asserts that the error's message contains every part.
pub fn assert_message(err: &LensError, parts: &[&str]) {
    let message = err.to_string();
    for part in parts {
        assert!(
            message.contains(part),
            "error message lacks {part:?}:\n{message}"
        );
    }
}

/// Element-wise exact equality, same kind and shape.
pub fn assert_tensor_eq(a: &Tensor, b: &Tensor) {
    assert_eq!(a.kind(), b.kind(), "kinds differ");
    assert_eq!(a.size(), b.size(), "shapes differ");
    assert!(a.equal(b), "values differ:\n{a}\n{b}");
}
