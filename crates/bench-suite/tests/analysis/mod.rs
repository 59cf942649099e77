//! The analysis API (stacked weights, QK/OV circuits, composition scores, activation patching)
//! on both models against TransformerLens 3.9.0 (tests/fixtures/analysis/*), and batched
//! patching against one patch at a time.

use std::collections::BTreeMap;
use std::path::Path;

use bridge::TransformerBridge;
use hooked_ref::HookedTransformer;
use hookpoint::CacheOptions;
use lens_core::circuits::{Circuits, Composition};
use lens_core::model::{ForwardOptions, LensModel};
use lens_core::patching::{activation_patch, Activation, PatchAxes, PatchOptions};
use rstest::rstest;
use tch::{Device, Kind, Tensor};

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// max|a - b| / max(1, max|b|).
fn err(ours: &Tensor, golden: &Tensor) -> f64 {
    assert_eq!(ours.size(), golden.size(), "shapes differ");
    let (a, b) = (ours.to_kind(Kind::Double), golden.to_kind(Kind::Double));
    let scale = b.abs().max().double_value(&[]).max(1.0);
    (a - b).abs().max().double_value(&[]) / scale
}

fn models(config: &str) -> Vec<Box<dyn LensModel>> {
    let dir = fixtures().join(config).join("model");
    let dir = dir.to_str().unwrap();
    vec![
        Box::new(TransformerBridge::boot(dir, Device::Cpu, Kind::Float).unwrap()),
        Box::new(
            HookedTransformer::from_pretrained_no_processing(dir, &Default::default()).unwrap(),
        ),
    ]
}

fn goldens(config: &str) -> (serde_json::Value, BTreeMap<String, Tensor>) {
    let dir = fixtures().join("analysis");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{config}.json"))).unwrap())
            .unwrap();
    let tensors = Tensor::read_safetensors(dir.join(format!("{config}.safetensors")))
        .unwrap()
        .into_iter()
        .collect();
    (meta, tensors)
}

fn ids(v: &serde_json::Value) -> Tensor {
    let ids: Vec<i64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    Tensor::from_slice(&ids).view([1, -1])
}

/// Each TransformerLens patching function as our sweep.
const SWEEPS: [(&str, Activation, PatchAxes); 15] = [
    (
        "get_act_patch_resid_pre",
        Activation::ResidPre,
        PatchAxes::LayerPos,
    ),
    (
        "get_act_patch_resid_mid",
        Activation::ResidMid,
        PatchAxes::LayerPos,
    ),
    (
        "get_act_patch_attn_out",
        Activation::AttnOut,
        PatchAxes::LayerPos,
    ),
    (
        "get_act_patch_mlp_out",
        Activation::MlpOut,
        PatchAxes::LayerPos,
    ),
    (
        "get_act_patch_attn_head_out_by_pos",
        Activation::Z,
        PatchAxes::LayerPosHead,
    ),
    (
        "get_act_patch_attn_head_q_by_pos",
        Activation::Q,
        PatchAxes::LayerPosHead,
    ),
    (
        "get_act_patch_attn_head_k_by_pos",
        Activation::K,
        PatchAxes::LayerPosHead,
    ),
    (
        "get_act_patch_attn_head_v_by_pos",
        Activation::V,
        PatchAxes::LayerPosHead,
    ),
    (
        "get_act_patch_attn_head_out_all_pos",
        Activation::Z,
        PatchAxes::LayerHead,
    ),
    (
        "get_act_patch_attn_head_q_all_pos",
        Activation::Q,
        PatchAxes::LayerHead,
    ),
    (
        "get_act_patch_attn_head_k_all_pos",
        Activation::K,
        PatchAxes::LayerHead,
    ),
    (
        "get_act_patch_attn_head_v_all_pos",
        Activation::V,
        PatchAxes::LayerHead,
    ),
    (
        "get_act_patch_attn_head_pattern_all_pos",
        Activation::Pattern,
        PatchAxes::LayerHead,
    ),
    (
        "get_act_patch_attn_head_pattern_by_pos",
        Activation::Pattern,
        PatchAxes::LayerHeadDestPos,
    ),
    (
        "get_act_patch_attn_head_pattern_dest_src_pos",
        Activation::Pattern,
        PatchAxes::LayerHeadDestSrcPos,
    ),
];

/// Stacked weights, singular values, norms, eigenvalues and composition scores of both models
/// equal TransformerLens's (grouped keys and values expanded per query head in `W_K` / `W_V`).
#[rstest]
fn circuits_match_transformer_lens(#[values("small", "dec-a")] config: &str) {
    let (_, golden) = goldens(config);
    for model in models(config) {
        let who = format!("{config} {}", model.model_name());
        for (key, expected) in golden.iter().filter(|(k, _)| k.starts_with("stacked/")) {
            let name = &key["stacked/".len()..];
            let ours = model.stacked_weight(name).unwrap();
            assert!(err(&ours, expected) <= 1e-6, "{who} {name}");
        }
        let (qk, ov) = (model.qk().unwrap(), model.ov().unwrap());
        for (circuit, fm) in [("QK", &qk), ("OV", &ov)] {
            let s = fm.svd().unwrap().s;
            assert!(
                err(&s, &golden[&format!("circuits/{circuit}_S")]) <= 1e-5,
                "{who} {circuit} S"
            );
            let norm = fm.norm().unwrap();
            assert!(
                err(&norm, &golden[&format!("circuits/{circuit}_norm")]) <= 1e-5,
                "{who} {circuit} norm"
            );
        }
        let eig = ov.eigenvalues().unwrap();
        let (re, im) = (eig.real(), eig.imag());
        let order = (&re * 1e3 + &im).argsort(-1, false);
        let (re, im) = (re.gather(-1, &order, false), im.gather(-1, &order, false));
        assert!(
            err(&re, &golden["circuits/OV_eig_real"]) <= 1e-5,
            "{who} OV eigenvalues"
        );
        assert!(
            err(&im, &golden["circuits/OV_eig_imag"]) <= 1e-5,
            "{who} OV eigenvalues"
        );
        for (mode, name) in [
            (Composition::Q, "Q"),
            (Composition::K, "K"),
            (Composition::V, "V"),
        ] {
            let scores = model.all_composition_scores(mode).unwrap();
            let e = err(&scores, &golden[&format!("composition/{name}")]);
            assert!(e <= 1e-5, "{who} {name}-composition err {e:.2e}");
        }
    }
}

/// Every patching sweep of both models equals TransformerLens's, one patch per forward pass and
/// batched (all patches of a sweep in batches of 7, and batches chosen from memory), and the
/// batched results equal the one-at-a-time ones within 1e-6.
#[rstest]
fn patching_matches_transformer_lens_one_at_a_time_and_batched(
    #[values("small", "dec-a")] config: &str,
) {
    let (meta, golden) = goldens(config);
    let (clean, corrupted) = (ids(&meta["clean"]), ids(&meta["corrupted"]));
    let (answer, wrong) = (
        meta["metric"]["answer"].as_i64().unwrap(),
        meta["metric"]["wrong"].as_i64().unwrap(),
    );
    let metric = move |logits: &Tensor| {
        let last = logits.get(0).get(-1);
        Ok((last.get(answer) - last.get(wrong)).double_value(&[]))
    };
    for model in models(config) {
        let who = format!("{config} {}", model.model_name());
        let (_, cache) = model
            .run_with_cache(&clean, &ForwardOptions::default(), &CacheOptions::default())
            .unwrap();
        for (function, activation, axes) in SWEEPS {
            let run = |batch_size| {
                let options = PatchOptions {
                    batch_size,
                    ..PatchOptions::default()
                };
                activation_patch(
                    &*model, &corrupted, &cache, activation, axes, &metric, &options,
                )
                .unwrap()
            };
            let single = run(Some(1));
            let e = err(&single, &golden[&format!("patch/{function}")]);
            assert!(
                e <= 1e-5,
                "{who} {function}: err {e:.2e} against TransformerLens"
            );
            for batched in [run(Some(7)), run(None)] {
                let e = err(&batched, &single);
                assert!(e <= 1e-6, "{who} {function}: batched differs by {e:.2e}");
            }
        }
    }
}

#[test]
fn patching_refuses_what_transformer_lens_does_not_sweep() {
    let model = &models("small")[0];
    let tokens = Tensor::from_slice(&[1i64, 2, 3]).view([1, -1]);
    let (_, cache) = model
        .run_with_cache(
            &tokens,
            &ForwardOptions::default(),
            &CacheOptions::default(),
        )
        .unwrap();
    let metric = |_: &Tensor| Ok(0.0);
    let err = activation_patch(
        &**model,
        &tokens,
        &cache,
        Activation::ResidPre,
        PatchAxes::LayerHead,
        &metric,
        &PatchOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("ResidPre over LayerHead"), "{err}");
    let longer = Tensor::from_slice(&[1i64, 2, 3, 4]).view([1, -1]);
    let err = activation_patch(
        &**model,
        &longer,
        &cache,
        Activation::ResidPre,
        PatchAxes::LayerPos,
        &metric,
        &PatchOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("same batch and length"), "{err}");
}
