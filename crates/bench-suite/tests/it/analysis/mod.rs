//! The analysis API (stacked weights, QK/OV circuits, composition scores, activation patching)
//! on both models against TransformerLens 3.9.0 (tests/fixtures/analysis/*), and batched
//! patching against one patch at a time.

use std::collections::BTreeMap;

use bridge::TransformerBridge;
use hooked_ref::HookedTransformer;
use hookpoint::CacheOptions;
use lens_core::circuits::{Circuits, Composition};
use lens_core::model::{ForwardOptions, LensModel};
use lens_core::patching::{activation_patch, Activation, Metric, PatchAxes, PatchOptions};
use rstest::rstest;
use tch::{Device, Kind, Tensor};

use crate::common::fixtures;

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
                    &*model,
                    &corrupted,
                    &cache,
                    activation,
                    axes,
                    &Metric::Logits(&metric),
                    &options,
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

/// A metric over the patched run's cache sees each patch's own activations, as patched: the
/// sum of `blocks.0.hook_resid_pre` is the corrupted one with position `p` swapped for the
/// clean one when layer 0 is patched at `p`, and unchanged when a later layer is; batched and
/// one at a time alike.
#[test]
fn patching_metrics_can_read_the_patched_runs_cache() {
    let clean = Tensor::from_slice(&[3i64, 8, 1, 6, 2]).view([1, -1]);
    let corrupted = Tensor::from_slice(&[3i64, 4, 1, 6, 9]).view([1, -1]);
    for model in models("dec-a") {
        let who = model.model_name().to_owned();
        let record = |tokens: &Tensor| {
            tch::no_grad(|| {
                model.run_with_cache(tokens, &ForwardOptions::default(), &CacheOptions::default())
            })
            .unwrap()
            .1
        };
        let (clean_cache, corrupted_cache) = (record(&clean), record(&corrupted));
        let per_position = |cache: &hookpoint::ActivationCache| {
            cache
                .get("blocks.0.hook_resid_pre")
                .unwrap()
                .get(0)
                .sum_dim_intlist(-1, false, Kind::Double)
        };
        let (clean_pos, corrupted_pos) =
            (per_position(&clean_cache), per_position(&corrupted_cache));
        let read = |_: &Tensor, cache: &hookpoint::ActivationCache| {
            Ok(per_position(cache).sum(Kind::Double).double_value(&[]))
        };
        let metric = Metric::LogitsAndCache {
            names: hookpoint::NamesFilter::Name("blocks.0.hook_resid_pre".into()),
            metric: &read,
        };
        let n_layers = model.dims().n_layers;
        let expected = corrupted_pos.sum(Kind::Double).repeat([n_layers, 5]);
        let _ = expected.get(0).g_add_(&(&clean_pos - &corrupted_pos));
        for batch_size in [Some(1), None] {
            let options = PatchOptions {
                batch_size,
                ..PatchOptions::default()
            };
            let scores = activation_patch(
                &*model,
                &corrupted,
                &clean_cache,
                Activation::ResidPre,
                PatchAxes::LayerPos,
                &metric,
                &options,
            )
            .unwrap();
            let e = err(&scores, &expected);
            assert!(e <= 1e-4, "{who} batch {batch_size:?}: err {e:.2e}");
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
        &Metric::Logits(&metric),
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
        &Metric::Logits(&metric),
        &PatchOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("same batch and length"), "{err}");
}

/// Attribution patching is the linear term of a patch: moving layer 1's `resid_pre` a small step
/// `eps` from corrupted towards clean changes the metric by `eps` times the attribution's sum,
/// on both models.
#[rstest]
fn attribution_patching_is_the_first_order_effect_of_a_patch(
    #[values("small", "dec-a")] config: &str,
) {
    use hookpoint::{Hook, HookSpec, NamesFilter};
    use lens_core::patching::attribution_patch;
    let (meta, _) = goldens(config);
    let (clean, corrupted) = (ids(&meta["clean"]), ids(&meta["corrupted"]));
    let metric_of = |logits: &Tensor| {
        let last = logits.get(0).get(-1);
        last.get(11) - last.get(23)
    };
    let metric = |logits: &Tensor| Ok(metric_of(logits));
    for model in models(config) {
        let who = format!("{config} {}", model.model_name());
        let name = "blocks.1.hook_resid_pre";
        let attributions = attribution_patch(
            &*model,
            &clean,
            &corrupted,
            &metric,
            NamesFilter::Name(name.into()),
        )
        .unwrap();
        assert_eq!(attributions.len(), 1, "{who}");
        assert_eq!(attributions[0].1.size(), vec![1, 6, 64], "{who}");
        let predicted = attributions[0].1.sum(Kind::Double).double_value(&[]);
        let (_, clean_cache) = model
            .run_with_cache(&clean, &ForwardOptions::default(), &CacheOptions::default())
            .unwrap();
        let (_, corrupted_cache) = model
            .run_with_cache(
                &corrupted,
                &ForwardOptions::default(),
                &CacheOptions::default(),
            )
            .unwrap();
        let eps = 1e-3;
        let step = (clean_cache.get(name).unwrap() - corrupted_cache.get(name).unwrap()) * eps;
        let step = std::sync::Mutex::new(step);
        let run = |hooks: &[HookSpec]| {
            let out = tch::no_grad(|| {
                model.run_with_hooks(&corrupted, &ForwardOptions::default(), hooks)
            })
            .unwrap();
            metric_of(&out.logits.unwrap()).double_value(&[])
        };
        let base = run(&[]);
        let nudged = run(&[HookSpec::forward(
            name,
            Hook::new(move |x, _| Some(x + &*step.lock().unwrap())),
        )]);
        let actual = (nudged - base) / eps;
        assert!(
            (actual - predicted).abs() <= 1e-2 * predicted.abs().max(1e-2),
            "{who}: attribution {predicted:.6} vs finite difference {actual:.6}"
        );
    }
}

/// `test_prompt` on the embedded GPT-2: the top prediction has rank 0 and is first in the top
/// list; an answer's rank counts the tokens scored above it; the report prints
/// TransformerLens's lines. `tokens_to_residual_directions` gives `W_U`'s columns.
#[test]
fn test_prompt_and_residual_directions() {
    use lens_core::inspect::{test_prompt, tokens_to_residual_directions};
    let model =
        TransformerBridge::boot(lens_core::DEFAULT_MODEL, Device::Cpu, Kind::Float).unwrap();
    let result = test_prompt(
        &model,
        "When Mary and John went to the store, John gave a drink to",
        "Mary",
        5,
    )
    .unwrap();
    assert_eq!(result.prompt_tokens[0], "<|endoftext|>");
    assert_eq!(result.answer.len(), 1);
    assert_eq!(result.answer[0].token, " Mary");
    assert_eq!(result.top.len(), 5);
    assert!(result.top.windows(2).all(|w| w[0].1 >= w[1].1));
    // A top prediction that is one token with its leading space: its rank is its place.
    let prompt = "When Mary and John went to the store, John gave a drink to";
    let wide = test_prompt(&model, prompt, "Mary", 200).unwrap();
    let (place, (token, _, _)) = wide
        .top
        .iter()
        .enumerate()
        .find(|(_, (t, _, _))| t.starts_with(' ') && t.len() > 1)
        .expect("a spaced token among the top 200");
    let ranked = test_prompt(&model, prompt, token, 1).unwrap();
    assert_eq!(ranked.answer[0].rank, place as i64, "{token:?}");
    assert_eq!(wide.answer[0].rank, result.answer[0].rank);
    let printed = result.to_string();
    assert!(
        printed.contains("Rank: ") && printed.contains("Top 0th token. Logit:"),
        "{printed}"
    );
    let ids = Tensor::from_slice(&[3i64, 50256, 7, 7]).view([2, 2]);
    let directions = tokens_to_residual_directions(&model, &ids).unwrap();
    assert_eq!(directions.size(), vec![2, 2, 64]);
    let w_u = model.stacked_weight("W_U").unwrap();
    assert!(directions.get(0).get(1).equal(&w_u.select(1, 50256)));
    assert!(tokens_to_residual_directions(&model, &Tensor::from_slice(&[50257i64])).is_err());
}

/// `generate_stream` yields, one step at a time, exactly the tokens `generate` returns (greedy,
/// with and without the KV cache), on GPT-2 and a Llama-family model.
#[rstest]
fn generation_streams_the_tokens_generate_returns(
    #[values(lens_core::DEFAULT_MODEL, "tiny-qwen3")] model_name: &str,
) {
    use lens_core::inspect::generate_stream;
    use lens_core::model::GenerateOptions;
    let model = TransformerBridge::boot(model_name, Device::Cpu, Kind::Float).unwrap();
    let prompt = model
        .to_tokens(&["The quick brown fox"], None, None)
        .unwrap()
        .ids;
    let options = GenerateOptions {
        max_new_tokens: 6,
        do_sample: false,
        stop_at_eos: false,
        ..GenerateOptions::default()
    };
    let streamed: Vec<i64> = generate_stream(&model, &prompt, &options)
        .unwrap()
        .map(|t| t.unwrap().int64_value(&[0]))
        .collect();
    assert_eq!(streamed.len(), 6);
    for cached in [true, false] {
        let generated = model
            .generate(
                &prompt,
                None,
                &GenerateOptions {
                    use_past_kv_cache: cached,
                    ..options.clone()
                },
            )
            .unwrap();
        let continuation: Vec<i64> =
            Vec::try_from(generated.get(0).narrow(0, prompt.size()[1], 6)).unwrap();
        assert_eq!(streamed, continuation, "{model_name}, KV cache {cached}");
    }
}

/// Stacked weights are views of the live parameters on both models, for every family's layout
/// (GPT-2's fused `c_attn`, the Llama family's separate projections, grouped key/value heads,
/// biases): a write into one changes the model as writing the per-layer weights does, and the
/// parameters keep their gradients.
#[test]
fn stacked_weights_alias_the_live_parameters() {
    for model_name in ["small", "dec-a"] {
        for model in models(model_name) {
            let who = format!("{} on {model_name}", model.model_name());
            let names = model.tl_weight_names();
            let tokens = Tensor::from_slice(&[5i64, 9, 2, 7]).view([1, -1]);
            let logits = || {
                tch::no_grad(|| model.forward(&tokens, &ForwardOptions::default()))
                    .unwrap()
                    .logits
                    .unwrap()
            };
            let before = logits();
            let mut aliased = 0;
            for stacked in [
                "W_Q", "_W_K", "W_K", "W_V", "W_O", "b_Q", "W_in", "W_out", "b_out",
            ] {
                let per_layer = |l: i64| {
                    let own = format!("blocks.{l}.{}.{stacked}", module_of(stacked));
                    names.contains(&own).then_some(own)
                };
                let Some(first) = per_layer(0) else { continue };
                if model.tl_weight_is_constant(&first) {
                    continue;
                }
                let mut w = model.stacked_weight(stacked).unwrap();
                let original = w.copy();
                tch::no_grad(|| {
                    let _ = w.get(1).get(0).fill_(0.5);
                });
                let last = model.dims().n_layers - 1;
                let layer_1 = model.tl_weight(&per_layer(1.min(last)).unwrap()).unwrap();
                assert!(
                    layer_1.get(0).eq(0.5).all().int64_value(&[]) == 1,
                    "{who}: a write into {stacked} reaches blocks.1"
                );
                assert!(
                    !logits().allclose(&before, 1e-6, 1e-6, false),
                    "{who}: a write into {stacked} changes the logits"
                );
                tch::no_grad(|| w.copy_(&original));
                assert!(logits().equal(&before), "{who}: {stacked} restored");
                aliased += 1;
            }
            assert!(
                aliased >= 6,
                "{who}: only {aliased} stacked weights checked"
            );
            // The grouped expansion is a copy (one key/value head serves several query heads).
            if names.iter().any(|n| n.ends_with("attn._W_K")) {
                let mut expanded = model.stacked_weight("W_K").unwrap();
                tch::no_grad(|| {
                    let _ = expanded.zero_();
                });
                assert!(logits().equal(&before), "{who}: W_K expanded is a copy");
            }
            // Gradients still reach the per-layer parameters.
            let out = model.forward(&tokens, &ForwardOptions::default()).unwrap();
            out.logits.unwrap().sum(Kind::Float).backward();
            let grad = model.tl_weight_grad("blocks.0.attn.W_Q").unwrap();
            assert!(
                grad.is_some_and(|g| g.abs().sum(Kind::Float).double_value(&[]) > 0.0),
                "{who}: W_Q of layer 0 has a gradient"
            );
            model.zero_grad();
        }
    }
}

/// After compatibility mode (which adds an `o_proj` bias to a model without one, to fold the
/// value biases into) the bridge's stacked weights alias the processed parameters, the added
/// ones included.
#[test]
fn stacked_weights_alias_the_processed_parameters() {
    let dir = fixtures().join("dec-a").join("model");
    let mut bridge =
        TransformerBridge::boot(dir.to_str().unwrap(), Device::Cpu, Kind::Float).unwrap();
    bridge
        .enable_compatibility_mode(bridge::CompatibilityOptions::default())
        .unwrap();
    let tokens = Tensor::from_slice(&[5i64, 9, 2, 7]).view([1, -1]);
    let logits = || {
        tch::no_grad(|| bridge.forward(&tokens, &ForwardOptions::default()))
            .unwrap()
            .logits
            .unwrap()
    };
    let before = logits();
    for stacked in ["W_Q", "b_O", "W_in"] {
        let mut w = bridge.stacked_weight(stacked).unwrap();
        let original = w.copy();
        tch::no_grad(|| {
            let _ = w.g_add_scalar_(0.25);
        });
        assert!(
            !logits().allclose(&before, 1e-6, 1e-6, false),
            "a write into the processed {stacked} changes the logits"
        );
        tch::no_grad(|| w.copy_(&original));
    }
    assert!(logits().equal(&before));
}

fn module_of(stacked: &str) -> &'static str {
    if stacked.trim_start_matches('_').contains("in") || stacked.contains("out") {
        "mlp"
    } else {
        "attn"
    }
}

/// A stacked weight written back changes both models alike; grouped `W_K` and absent biases
/// are refused with a reason.
#[test]
fn stacked_weights_write_back_into_the_model() {
    for model in models("dec-a") {
        let who = model.model_name().to_owned();
        let tokens = Tensor::from_slice(&[5i64, 9, 2, 7]).view([1, -1]);
        let logits = || {
            tch::no_grad(|| model.forward(&tokens, &ForwardOptions::default()))
                .unwrap()
                .logits
                .unwrap()
        };
        let before = logits();
        let w_q = model.stacked_weight("W_Q").unwrap().copy();
        model.write_stacked_weight("W_Q", &(&w_q * 2.0)).unwrap();
        assert!(
            model.stacked_weight("W_Q").unwrap().equal(&(&w_q * 2.0)),
            "{who}"
        );
        assert!(
            !logits().allclose(&before, 1e-6, 1e-6, false),
            "{who}: the write took effect"
        );
        model.write_stacked_weight("W_Q", &w_q).unwrap();
        assert!(
            logits().equal(&before),
            "{who}: writing the original back restores it"
        );
        let grouped = model.stacked_weight("W_K").unwrap();
        let err = model
            .write_stacked_weight("W_K", &grouped)
            .unwrap_err()
            .to_string();
        assert!(err.contains("grouped"), "{who}: {err}");
        let wrong = model
            .write_stacked_weight("W_O", &w_q)
            .unwrap_err()
            .to_string();
        assert!(wrong.contains("the value written is"), "{who}: {wrong}");
    }
    // Mistral has no attention biases: the bridge serves zeros, which a write would not reach.
    let bridge = TransformerBridge::boot("tiny-mistral", Device::Cpu, Kind::Float).unwrap();
    let b_q = bridge.stacked_weight("b_Q").unwrap();
    let err = bridge
        .write_stacked_weight("b_Q", &b_q)
        .unwrap_err()
        .to_string();
    assert!(err.contains("constant zero"), "{err}");
}
