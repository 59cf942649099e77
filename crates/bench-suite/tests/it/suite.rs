//! The whole suite, phases 1-3, on the embedded model and on both GPT-2 fixture configurations
//! (local HF directories without a tokenizer): every result must pass, none may be skipped. The
//! Llama-family fixtures pass every phase, and phase 2 under every hook option.

use std::path::Path;

use bench_suite::benchmarks::{recording, GradientTarget, Inputs};
use bench_suite::compare::tolerances_for;
use bench_suite::{run_benchmark_suite, BenchmarkResult, SuiteOptions};
use bridge::TransformerBridge;
use hooked_ref::HookedTransformer;
use lens_core::model::{ForwardOptions, LensModel};
use lens_core::LoadOptions;
use rstest::rstest;
use tch::{Device, Kind, Tensor};

use crate::common::{edited_checkpoint, fixture_model};

#[rstest]
#[case::embedded(lens_core::DEFAULT_MODEL.to_owned())]
#[case::small(fixture_model("small"))]
#[case::knobs(fixture_model("knobs"))]
#[case::neox_parallel(fixture_model("neox-a"))]
#[case::neox_sequential(fixture_model("neox-b"))]
#[case::neox_without_attention_biases(fixture_model("neox-c"))]
#[case::embedded_pythia("tiny-pythia".to_owned())]
#[case::gptj_partial_rotary(fixture_model("gptj-a"))]
#[case::gptj_tied(fixture_model("gptj-b"))]
#[case::phi(fixture_model("phi-a"))]
#[case::phi_grouped_heads(fixture_model("phi-b"))]
#[case::phi_qk_layernorm(fixture_model("phi-c"))]
#[case::embedded_gptj("tiny-gptj".to_owned())]
#[case::gpt_neo_tied(fixture_model("neo-a"))]
#[case::gpt_neo_local_first(fixture_model("neo-b"))]
#[case::opt_tied(fixture_model("opt-a"))]
#[case::opt_without_biases(fixture_model("opt-b"))]
#[case::opt_without_layer_norm_parameters(fixture_model("opt-d"))]
#[case::embedded_neo("tiny-neo".to_owned())]
#[case::embedded_opt("tiny-opt".to_owned())]
#[case::embedded_phi("tiny-phi".to_owned())]
fn every_benchmark_passes(#[case] model: String) {
    let results = suite_that_passes_what_it_runs(model.clone());
    assert_eq!(skipped(&results), [], "{model}");
    // Phase 1: 2 results; Phase 2: 16; Phase 3: 10 weight checks + 13 comparisons.
    assert_eq!(
        results.len(),
        2 + 16 + 23,
        "{model}: {:?}",
        results.iter().map(|r| &r.name).collect::<Vec<_>>()
    );
}

#[test]
fn without_references_the_checks_needing_them_are_skipped_not_passed() {
    let options = SuiteOptions {
        use_hf_reference: false,
        use_ht_reference: false,
        ..SuiteOptions::default()
    };
    let results = run_benchmark_suite(&options, &mut |_| {}).unwrap();
    let skipped: Vec<&str> = results
        .iter()
        .filter(|r| !r.ran())
        .map(|r| r.name.as_str())
        .collect();
    assert!(
        skipped.contains(&"forward_pass_logits")
            && skipped.contains(&"backward_hooks")
            && skipped.contains(&"weight_processing")
    );
    let ran_and_failed: Vec<String> = results
        .iter()
        .filter(|r| r.ran() && !r.passed)
        .map(|r| r.to_string())
        .collect();
    assert!(ran_and_failed.is_empty(), "{}", ran_and_failed.join("\n"));
}

/// The reference's parameter gradients are compared as its backward pass makes them and freed
/// at once, each with the model's it was compared with: when the pass ends neither model has a
/// gradient left (the two full gradient sets never coexist), and the comparison still passes.
#[test]
fn gradient_computation_frees_each_reference_gradient_during_its_backward_pass() {
    let bridge =
        TransformerBridge::boot(lens_core::DEFAULT_MODEL, Device::Cpu, Kind::Float).unwrap();
    let reference = HookedTransformer::from_pretrained_no_processing(
        lens_core::DEFAULT_MODEL,
        &LoadOptions::default(),
    )
    .unwrap();
    let tokens = bridge
        .to_tokens(&["Hello world, again"], None, None)
        .unwrap()
        .ids;
    let backward = |model: &dyn LensModel| -> lens_core::model::ModelResult<()> {
        let output = model.forward(&tokens, &ForwardOptions::default())?;
        hookpoint::backward(&GradientTarget::SumLastLogits.of(&output)?)?;
        Ok(())
    };
    let with_gradient = |model: &dyn LensModel| {
        let names = model.tl_weight_names();
        names
            .iter()
            .filter(|n| model.tl_weight_grad(n).unwrap().is_some())
            .count()
    };
    backward(&bridge).unwrap();
    let mut left_after_the_pass = None;
    let mut reference_backward = || {
        backward(&reference)?;
        left_after_the_pass = Some((with_gradient(&bridge), with_gradient(&reference)));
        Ok(())
    };
    let result = bench_suite::benchmarks::backward::judge_parameter_gradients(
        &bridge,
        Some((&reference, &mut reference_backward)),
        1e-5,
    )
    .unwrap();
    assert!(result.passed, "{result}");
    assert_eq!(left_after_the_pass, Some((0, 0)));
    assert_eq!((with_gradient(&bridge), with_gradient(&reference)), (0, 0));
}

/// The Llama family (tests/fixtures/dec-a..e: GQA, biases, rope scalings, sliding windows, q/k
/// norms, token ids; gemma-a, gemma2-a, gemma3-a, phi3-a, olmo2-a/b: `1 + w` norms, scaled
/// embeddings, norms after the sublayers, soft caps, fused projections, partial rotary; and the
/// embedded models under models-cache/, on the suite's text through their tokenizers): every check of phases 1-3 that runs passes. Skipped, by name: the centring
/// checks, which do not apply to RMSNorm models (TransformerLens does not centre them).
#[rstest]
fn llama_family_passes_every_phase(
    #[values(
        "dec-a",
        "dec-b",
        "dec-c",
        "dec-d",
        "dec-e",
        "tiny-llama",
        "tiny-mistral",
        "tiny-qwen2",
        "tiny-qwen3",
        "gemma-a",
        "gemma2-a",
        "gemma3-a",
        "gemma3-b",
        "phi3-a",
        "phi3-b",
        "olmo2-a",
        "olmo2-b",
        "tiny-gemma",
        "tiny-gemma2",
        "tiny-gemma3",
        "tiny-phi3",
        "tiny-olmo2"
    )]
    config: &str,
) {
    let model = if config.starts_with("tiny-") {
        // An embedded model, by name, as a user names it.
        config.to_owned()
    } else {
        fixture_model(config)
    };
    let results = suite_that_passes_what_it_runs(model);
    let skipped: Vec<&str> = skipped(&results)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    // TransformerLens's own refusals: no fold_ln for OLMo-2's post-sublayer norms, no
    // center_unembed under Gemma 2's (and gemma3-a's) logit soft cap.
    let mut expected = vec!["layer_norm_folding", "attention_output_centering"];
    expected.push("mlp_output_centering");
    expected.push("unembed_centering");
    let soft_capped = ["gemma2-a", "gemma3-a", "tiny-gemma2"].contains(&config);
    let post_norm = config.contains("olmo2");
    expected.retain(|check| match *check {
        "layer_norm_folding" => post_norm,
        "unembed_centering" => soft_capped,
        _ => true,
    });
    assert_eq!(skipped, expected, "{config}");
    assert_eq!(results.len(), 2 + 16 + 23, "{config}");
}

/// Phases 1-3 on `model`, asserting that every check that runs passes.
fn suite_that_passes_what_it_runs(model: String) -> Vec<BenchmarkResult> {
    let options = SuiteOptions {
        model: model.clone(),
        ..SuiteOptions::default()
    };
    let results = run_benchmark_suite(&options, &mut |_| {}).unwrap();
    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.ran() && !r.passed)
        .map(|r| r.to_string())
        .collect();
    assert!(failed.is_empty(), "{model}:\n{}", failed.join("\n"));
    results
}

/// The checks that did not run, with the reason each gives.
fn skipped(results: &[BenchmarkResult]) -> Vec<(&str, &str)> {
    results
        .iter()
        .filter(|r| !r.ran())
        .map(|r| (r.name.as_str(), r.message.as_str()))
        .collect()
}

/// OPT-350m's layout (opt-c: LayerNorms after the residual additions, projected embeddings,
/// no final LayerNorm): every check of phases 1-3 that runs passes; skipped, each with
/// TransformerLens's reason for turning its step off on a post-norm architecture, the fold and
/// the two centring checks.
#[test]
fn opt_350m_layout_passes_every_phase() {
    let results = suite_that_passes_what_it_runs(fixture_model("opt-c"));
    let skipped = skipped(&results);
    let names: Vec<&str> = skipped.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        names,
        [
            "layer_norm_folding",
            "attention_output_centering",
            "mlp_output_centering"
        ]
    );
    for (name, why) in skipped {
        assert!(why.contains("post-norm architecture"), "{name}: {why}");
    }
    assert_eq!(results.len(), 2 + 16 + 23);
}

/// Each hook option (`use_split_qkv_input`, `use_attn_result`, `use_hook_mlp_in`, and
/// `use_attn_in` where key/value heads are not grouped) on both the Llama-family bridge and the
/// HookedTransformer: every hook's activation and gradient agree, and every hook fires once.
/// `dec-a-ungrouped` is dec-a with its key/value heads repeated (the same function, with as many
/// key/value heads as query heads), where `use_attn_in` applies.
#[rstest]
fn llama_family_hook_options_match_the_hooked_transformer(
    #[values(
        "dec-a",
        "dec-b",
        "dec-c",
        "dec-d",
        "dec-e",
        "dec-a-ungrouped",
        "neox-a",
        "neox-b",
        "gptj-a",
        "phi-a",
        "phi-b",
        "phi-c"
    )]
    config: &str,
) {
    let dir = tempfile::tempdir().unwrap();
    let model = if config == "dec-a-ungrouped" {
        ungrouped(&fixture_model("dec-a"), dir.path())
    } else {
        fixture_model(config)
    };
    let tolerance = tolerances_for(Kind::Float);
    let inputs = Inputs {
        text: "ids".into(),
        tokens: Tensor::from_slice(&[383i64, 5, 17, 42, 99, 7, 250, 3, 64]).view([1, -1]),
        prompts: Vec::new(),
    };
    let load = || {
        let bridge = TransformerBridge::boot(&model, Device::Cpu, Kind::Float).unwrap();
        let reference =
            HookedTransformer::from_pretrained_no_processing(&model, &LoadOptions::default())
                .unwrap();
        (bridge, reference)
    };
    let (bridge, reference) = load();
    if config == "dec-a-ungrouped" {
        let original = TransformerBridge::boot(&fixture_model("dec-a"), Device::Cpu, Kind::Float);
        let logits = |m: &dyn LensModel| {
            m.forward(&inputs.tokens, &ForwardOptions::default())
                .unwrap()
                .logits
                .unwrap()
        };
        let diff = (logits(&bridge) - logits(&original.unwrap())).abs().max();
        assert!(
            diff.double_value(&[]) < 1e-5,
            "ungrouping changed the logits by {diff}"
        );
    }
    let flags: Vec<&str> = bridge.hook_flags().iter().map(|(f, _)| *f).collect();
    let reference_flags: Vec<&str> = reference.hook_flags().iter().map(|(f, _)| *f).collect();
    assert_eq!(flags, reference_flags, "{config}");
    let ungrouped = [
        "dec-a-ungrouped",
        "neox-a",
        "neox-b",
        "gptj-a",
        "phi-a",
        "phi-c",
    ];
    let expected: &[&str] = if ungrouped.contains(&config) {
        &[
            "use_attn_result",
            "use_split_qkv_input",
            "use_attn_in",
            "use_hook_mlp_in",
        ]
    } else {
        // The other fixtures group their key/value heads: no `use_attn_in`.
        &["use_attn_result", "use_split_qkv_input", "use_hook_mlp_in"]
    };
    assert_eq!(flags, expected, "{config}");
    for flag in flags {
        let (mut bridge, mut reference) = load();
        bridge.set_hook_flag(flag, true).unwrap();
        reference.set_hook_flag(flag, true).unwrap();
        let results = recording::recorded_benchmarks(
            &bridge,
            &reference,
            &inputs,
            GradientTarget::SumLastLogits,
            tolerance,
        )
        .results;
        let failed: Vec<String> = results
            .iter()
            .filter(|r| !r.passed || !r.ran())
            .map(|r| r.to_string())
            .collect();
        assert!(failed.is_empty(), "{config} {flag}:\n{}", failed.join("\n"));
    }
}

/// dec-a (`source`, 4 query heads sharing 2 key/value heads) with each key/value head repeated
/// for the query heads that share it, written to `dir`: the same model without grouping.
fn ungrouped(source: &str, dir: &Path) -> String {
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(source).join("config.json")).unwrap(),
    )
    .unwrap();
    let (heads, kv_heads) = (
        config["num_attention_heads"].as_i64().unwrap(),
        config["num_key_value_heads"].as_i64().unwrap(),
    );
    let head_dim = config["head_dim"].as_i64().unwrap();
    let repeat = |t: &Tensor| {
        let mut shape = t.size();
        let rows =
            t.view([kv_heads, head_dim, -1])
                .repeat_interleave_self_int(heads / kv_heads, 0, None);
        shape[0] *= heads / kv_heads;
        rows.reshape(shape.as_slice())
    };
    edited_checkpoint(
        source,
        dir,
        |c| c["num_key_value_heads"] = heads.into(),
        |name, t| {
            if name.contains("k_proj") || name.contains("v_proj") {
                repeat(&t)
            } else {
                t
            }
        },
    )
}

/// Phases 5 and 6 (granular weight processing, opt-in): each step alone, then TransformerLens
/// 3.9.0's seven combinations, each on a fresh bridge and HookedTransformer, every check passing:
/// on GPT-2 (LayerNorm: every step applies), on Gemma 2 (RMSNorm, soft-capped logits:
/// TransformerLens's refusals apply to both models alike) and on GPT-Neo (`nn.Linear` weights,
/// the bridge's views of them transposed: processing must see both models' weights in one
/// layout to give identical results).
#[rstest]
fn granular_phases_pass(#[values("tiny-gpt2", "tiny-gemma2", "tiny-neo")] model: &str) {
    let options = SuiteOptions {
        model: model.to_owned(),
        phases: vec![5, 6],
        ..SuiteOptions::default()
    };
    let results = run_benchmark_suite(&options, &mut |_| {}).unwrap();
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.passed || !r.ran())
        .map(|r| r.to_string())
        .collect();
    assert!(failed.is_empty(), "{model}:\n{}", failed.join("\n"));
    let names: Vec<String> = results.iter().map(|r| r.name.clone()).collect();
    let expected: Vec<String> = [5, 6]
        .into_iter()
        .flat_map(|phase| bench_suite::granular::result_names(phase, true))
        .collect();
    assert_eq!(names, expected);
    assert!(results
        .iter()
        .all(|r| r.phase == Some(if r.name.starts_with("only_") { 5 } else { 6 })));
}

/// A pre-LN OPT with projected embeddings (opt-c read with its LayerNorms before the
/// sublayers, given a final LayerNorm with weights and biases away from one and zero): every
/// step of TransformerLens's processing applies, `ln_final` folds into `W_project_out` (its bias
/// through it into `b_U`) and `W_project_in` is what centring centres; every check of phases
/// 1-3 runs and passes.
#[test]
fn a_pre_ln_projected_opt_is_processed_through_its_projections() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixture_model("opt-c");
    let pre_ln = edited_checkpoint(
        &source,
        dir.path(),
        |c| c["do_layer_norm_before"] = true.into(),
        |_, t| t,
    );
    let checkpoint = dir.path().join("model.safetensors");
    let mut tensors = Tensor::read_safetensors(&checkpoint).unwrap();
    let d = 64;
    tch::manual_seed(0);
    tensors.push((
        "model.decoder.final_layer_norm.weight".into(),
        Tensor::randn([d], (Kind::Float, Device::Cpu)) * 0.2 + 1.0,
    ));
    tensors.push((
        "model.decoder.final_layer_norm.bias".into(),
        Tensor::randn([d], (Kind::Float, Device::Cpu)) * 0.2,
    ));
    lens_core::weights::write_safetensors(&checkpoint, &tensors, Default::default()).unwrap();
    // Processing keeps the log-probs (what the fold and the centring must not change).
    let log_probs = |processing| {
        let model =
            HookedTransformer::from_pretrained(&pre_ln, &LoadOptions::default(), processing)
                .unwrap();
        let tokens = Tensor::from_slice(&[2i64, 5, 17, 42, 99, 7]).view([1, -1]);
        let out = tch::no_grad(|| model.forward(&tokens, &ForwardOptions::default())).unwrap();
        out.logits.unwrap().log_softmax(-1, Kind::Float)
    };
    let processed = log_probs(hooked_ref::ProcessingOptions::default());
    let unprocessed = log_probs(hooked_ref::ProcessingOptions::none());
    let err = (processed - &unprocessed).abs().max().double_value(&[]);
    assert!(err < 1e-5, "processing changed the log-probs by {err:.3e}");
    // The residual stream is what the projected embedding, the positions and the sublayers
    // wrote: its decomposition (the embedding side from `hook_project_in`) adds up to it.
    let model =
        HookedTransformer::from_pretrained_no_processing(&pre_ln, &LoadOptions::default()).unwrap();
    let tokens = Tensor::from_slice(&[2i64, 5, 17, 42, 99, 7]).view([1, -1]);
    let (_, cache) = model
        .run_with_cache(
            &tokens,
            &ForwardOptions::default(),
            &hookpoint::CacheOptions::default(),
        )
        .unwrap();
    let analysis = hookpoint::CacheAnalysis::new(&cache, &model);
    let parts = analysis
        .decompose_resid(
            Some(2),
            false,
            hookpoint::DecomposeMode::All,
            true,
            false,
            &hookpoint::Slice::All,
        )
        .unwrap();
    let summed = parts
        .stack
        .sum_dim_intlist([0i64].as_slice(), false, Kind::Float);
    let resid = cache.get(("resid_post", 1usize)).unwrap();
    let err = (summed - resid).abs().max().double_value(&[]);
    assert!(
        err < 1e-5,
        "the decomposition misses the residual by {err:.3e}"
    );
    let results = suite_that_passes_what_it_runs(pre_ln);
    assert_eq!(skipped(&results), [], "pre-LN projected OPT");
}

/// A pre-LN OPT without its final LayerNorm (`_remove_final_layer_norm`): centring what writes
/// to the residual stream would reach the logits, so processing turns it off and says so, and
/// keeps the log-probs.
#[test]
fn without_a_final_norm_the_writing_weights_are_not_centred() {
    let dir = tempfile::tempdir().unwrap();
    let model = crate::common::opt_c_read_pre_ln_without_final_norm(dir.path());
    let tokens = Tensor::from_slice(&[2i64, 5, 17, 42, 99, 7]).view([1, -1]);
    let load = |processing| {
        HookedTransformer::from_pretrained(&model, &LoadOptions::default(), processing).unwrap()
    };
    let log_probs = |m: &HookedTransformer| {
        let out = tch::no_grad(|| m.forward(&tokens, &ForwardOptions::default())).unwrap();
        out.logits.unwrap().log_softmax(-1, Kind::Float)
    };
    let processed = load(hooked_ref::ProcessingOptions::default());
    let note = processed.processing_notes().join("; ");
    assert!(
        note.contains("center_writing_weights") && note.contains("final norm"),
        "{note}"
    );
    let unprocessed = load(hooked_ref::ProcessingOptions::none());
    let err = (log_probs(&processed) - log_probs(&unprocessed))
        .abs()
        .max()
        .double_value(&[]);
    assert!(err < 1e-5, "processing changed the log-probs by {err:.3e}");
}
