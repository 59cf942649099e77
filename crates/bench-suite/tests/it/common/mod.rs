//! Helpers shared by the suite's test binaries: fixture paths and edited copies of checkpoints.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use tch::Tensor;

/// The repository's tests/fixtures.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The model directory of a golden fixture config (`small`, `dec-a`, ...).
pub fn fixture_model(config: &str) -> String {
    fixtures().join(config).join("model").display().to_string()
}

/// A copy of the model directory `source` in `dir`: its config.json edited by `edit_config`,
/// each tensor of its checkpoint by `edit_tensor(name, tensor)`. Returns `dir` as a model name.
pub fn edited_checkpoint(
    source: &str,
    dir: &Path,
    edit_config: impl Fn(&mut serde_json::Value),
    edit_tensor: impl Fn(&str, Tensor) -> Tensor,
) -> String {
    let source = Path::new(source);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap())
            .unwrap();
    edit_config(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(source.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .map(|(name, t)| {
            let t = edit_tensor(&name, t);
            (name, t)
        })
        .collect();
    lens_core::weights::write_safetensors(
        &dir.join("model.safetensors"),
        &tensors,
        Default::default(),
    )
    .unwrap();
    dir.display().to_string()
}

/// opt-c (OPT-350m's layout: post-LN, projected) copied into `dir` as a pre-LN model without a
/// final LayerNorm (`do_layer_norm_before: true`, `_remove_final_layer_norm: true`), the same
/// weights.
pub fn opt_c_read_pre_ln_without_final_norm(dir: &Path) -> String {
    edited_checkpoint(
        &fixture_model("opt-c"),
        dir,
        |c| {
            c["do_layer_norm_before"] = true.into();
            c["_remove_final_layer_norm"] = true.into();
        },
        |_, t| t,
    )
}
