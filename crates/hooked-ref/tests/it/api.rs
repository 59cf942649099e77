//! Loading, text input, errors and the cache helpers of the HookedTransformer, on the embedded
//! `tiny-gpt2` (the real GPT-2 tokenizer) and the fixture models.

use hooked_ref::{ForwardOptions, HookedTransformer, ProcessingOptions, ReturnType};
use hookpoint::{CacheAnalysis, CacheOptions, DecomposeMode, Hook, HookError, HookSpec, Slice};
use lens_core::model::{LensModel, ModelError};
use lens_core::{LoadOptions, DEFAULT_MODEL};
use tch::{Kind, Tensor};

fn tiny(processing: ProcessingOptions) -> HookedTransformer {
    HookedTransformer::from_pretrained(DEFAULT_MODEL, &LoadOptions::default(), processing).unwrap()
}

fn max_err(a: &Tensor, b: &Tensor) -> f64 {
    let scale = b.abs().max().double_value(&[]).max(1.0);
    (a - b).abs().max().double_value(&[]) / scale
}

const TEXT: &str = "Natural language processing tasks, such as question answering, machine translation, reading comprehension, and summarization, are typically approached with supervised learning.";

#[test]
fn loads_the_embedded_model_and_reads_text() {
    let model = tiny(ProcessingOptions::none());
    assert_eq!(model.hooks().len(), 6 + 23 * 4);
    let tokens = model.to_tokens(&["Hello world"], None, None).unwrap();
    assert_eq!(
        Vec::<i64>::try_from(tokens.ids.reshape([-1])).unwrap(),
        vec![50256, 15496, 995]
    );
    let out = model
        .forward(
            &tokens.ids,
            &ForwardOptions {
                return_type: ReturnType::Both,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(out.logits().unwrap().size(), vec![1, 3, 50257]);
    assert!(out.loss().unwrap().double_value(&[]).is_finite());
}

#[test]
fn errors_name_the_problem_and_leave_no_hook() {
    let model = tiny(ProcessingOptions::none());
    let too_long = Tensor::zeros([1, 257], (Kind::Int64, tch::Device::Cpu));
    assert!(matches!(
        model.forward(&too_long, &ForwardOptions::default()),
        Err(ModelError::TooLong {
            len: 257,
            n_ctx: 256
        })
    ));
    let empty = Tensor::zeros([1, 0], (Kind::Int64, tch::Device::Cpu));
    assert!(matches!(
        model.forward(&empty, &ForwardOptions::default()),
        Err(ModelError::EmptyInput)
    ));
    let tokens = model.to_tokens(&["Hello"], None, None).unwrap().ids;
    let noop = Hook::new(|_, _| None);
    let unknown = model.run_with_hooks(
        &tokens,
        &ForwardOptions::default(),
        &[HookSpec::forward("blocks.0.hook_resid_pr", noop.clone())],
    );
    assert!(matches!(
        unknown,
        Err(ModelError::Hook(HookError::UnknownHook { .. }))
    ));
    let gated = model.run_with_hooks(
        &tokens,
        &ForwardOptions::default(),
        &[HookSpec::forward("blocks.0.attn.hook_result", noop)],
    );
    assert!(
        matches!(gated, Err(ModelError::Hook(HookError::FlagNotEnabled { ref flag, .. })) if flag == "use_attn_result")
    );
    assert_eq!(model.hooks().hook_count(), 0);
    // A CUDA device this machine does not have (cuda:0 without a GPU) is a clear error.
    let absent = if tch::Cuda::is_available() {
        tch::Cuda::device_count() as usize
    } else {
        0
    };
    let cuda = LoadOptions {
        device: tch::Device::Cuda(absent),
        ..LoadOptions::default()
    };
    assert!(matches!(
        HookedTransformer::from_pretrained_no_processing(DEFAULT_MODEL, &cuda),
        Err(ModelError::DeviceUnavailable { .. })
    ));
}

#[test]
fn stop_at_layer_returns_the_residual_before_that_block() {
    let model = tiny(ProcessingOptions::none());
    let tokens = model.to_tokens(&[TEXT], None, None).unwrap().ids;
    let stopped = model
        .forward(
            &tokens,
            &ForwardOptions {
                stop_at_layer: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
    let (_, cache) = model
        .run_with_cache(
            &tokens,
            &ForwardOptions::default(),
            &CacheOptions::default(),
        )
        .unwrap();
    let resid = stopped.residual.unwrap();
    assert!(max_err(&resid, cache.get(("resid_pre", 2usize)).unwrap()) == 0.0);
    // ... and start_at_layer continues from it to the same logits.
    let resumed = model
        .forward_from_layer(&resid, 2, &ForwardOptions::default())
        .unwrap();
    let full = model.forward(&tokens, &ForwardOptions::default()).unwrap();
    assert!(max_err(resumed.logits().unwrap(), full.logits().unwrap()) == 0.0);
    assert!(model
        .forward_from_layer(&resid, 5, &ForwardOptions::default())
        .is_err());
}

#[test]
fn decompositions_add_up_to_the_residual() {
    let model = tiny(ProcessingOptions::default());
    let tokens = model.to_tokens(&[TEXT], None, None).unwrap().ids;
    let (_, cache) = model
        .run_with_cache(
            &tokens,
            &ForwardOptions::default(),
            &CacheOptions::default(),
        )
        .unwrap();
    let analysis = CacheAnalysis::new(&cache, &model);
    let all = Slice::All;
    // decompose_resid sums to the residual before block 3 (up to the bias terms).
    let parts = analysis
        .decompose_resid(Some(3), false, DecomposeMode::All, true, false, &all)
        .unwrap();
    assert_eq!(parts.labels.len(), 2 + 2 * 3);
    let summed = parts
        .stack
        .sum_dim_intlist([0i64].as_slice(), false, Kind::Float);
    let resid = cache.get(("resid_pre", 3usize)).unwrap();
    // attn_out and mlp_out include their biases, so the sum is the residual itself.
    assert!(
        max_err(&summed, resid) < 1e-5,
        "{}",
        max_err(&summed, resid)
    );
    // The full decomposition (heads, neurons, embeddings, biases) sums to the final residual.
    let full = analysis
        .get_full_resid_decomposition(None, false, true, false, &all)
        .unwrap();
    let summed = full
        .stack
        .sum_dim_intlist([0i64].as_slice(), false, Kind::Float);
    let final_resid = cache.get(("resid_post", 3usize)).unwrap();
    assert!(
        max_err(&summed, final_resid) < 1e-4,
        "full decomposition err {}",
        max_err(&summed, final_resid)
    );
    // accumulated_resid lists 0_pre .. 3_pre and final_post.
    let acc = analysis
        .accumulated_resid(None, false, false, false, &all)
        .unwrap();
    assert_eq!(
        acc.labels,
        vec!["0_pre", "1_pre", "2_pre", "3_pre", "final_post"]
    );
    // Heads: 4 layers x 4 heads, plus the remainder, sum to the last residual.
    let heads = analysis
        .stack_head_results(None, true, false, &all)
        .unwrap();
    assert_eq!(heads.labels.len(), 17);
    let summed = heads
        .stack
        .sum_dim_intlist([0i64].as_slice(), false, Kind::Float);
    assert!(max_err(&summed, final_resid) < 1e-5);
}

#[test]
fn logit_attributions_of_the_full_decomposition_equal_the_logit_difference() {
    let model = tiny(ProcessingOptions::default());
    let tokens = model.to_tokens(&[TEXT], None, None).unwrap().ids;
    let (out, cache) = model
        .run_with_cache(
            &tokens,
            &ForwardOptions::default(),
            &CacheOptions::default(),
        )
        .unwrap();
    let analysis = CacheAnalysis::new(&cache, &model);
    let last = Slice::Index(-1);
    let full = analysis
        .get_full_resid_decomposition(None, false, false, false, &last)
        .unwrap();
    let (correct, wrong) = (Tensor::from_slice(&[464i64]), Tensor::from_slice(&[262i64]));
    let attrs = analysis
        .logit_attrs(&full.stack, &correct, Some(&wrong), &last)
        .unwrap();
    let logits = out.logits().unwrap().select(1, -1);
    // The unembedding bias is not part of the residual stream, so it is left out of the attributions.
    let b_u = &model.params().b_U;
    let expected = logits.get(0).get(464) - logits.get(0).get(262) - (b_u.get(464) - b_u.get(262));
    let total = attrs.sum(Kind::Float);
    assert!(
        (total.double_value(&[]) - expected.double_value(&[])).abs() < 1e-4,
        "{total:?} vs {expected:?}"
    );
}

#[test]
fn refactoring_the_attention_matrices_changes_no_product_and_no_output() {
    let processed = tiny(ProcessingOptions::default());
    let refactored = tiny(ProcessingOptions {
        refactor_factored_attn_matrices: true,
        ..ProcessingOptions::default()
    });
    let tokens = processed.to_tokens(&[TEXT], None, None).unwrap().ids;
    let logits = |m: &HookedTransformer| {
        m.forward(&tokens, &ForwardOptions::default())
            .unwrap()
            .logits
            .unwrap()
            .detach()
    };
    let err = max_err(&logits(&refactored), &logits(&processed));
    assert!(err < 1e-5, "logits moved by {err:.2e}");
    for (before, after) in processed
        .params()
        .blocks
        .iter()
        .zip(&refactored.params().blocks)
    {
        let qk = |a: &hooked_ref::AttentionParams| {
            let q = Tensor::cat(&[&a.W_Q, &a.b_Q.unsqueeze(1)], 1);
            let k = Tensor::cat(&[&a.W_K, &a.b_K.unsqueeze(1)], 1);
            q.matmul(&k.transpose(-1, -2)).detach()
        };
        let ov = |a: &hooked_ref::AttentionParams| a.W_V.matmul(&a.W_O).detach();
        assert!(max_err(&qk(&after.attn), &qk(&before.attn)) < 1e-5);
        assert!(max_err(&ov(&after.attn), &ov(&before.attn)) < 1e-5);
        assert_eq!(after.attn.b_V.abs().max().double_value(&[]), 0.0);
        // The factors are balanced: W_Q' and W_K' have equal column norms per head.
        let norms = |w: &Tensor| {
            w.square()
                .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
        };
        let q = Tensor::cat(&[&after.attn.W_Q, &after.attn.b_Q.unsqueeze(1)], 1).detach();
        let k = Tensor::cat(&[&after.attn.W_K, &after.attn.b_K.unsqueeze(1)], 1).detach();
        assert!(max_err(&norms(&q), &norms(&k)) < 1e-4);
    }
}

#[test]
fn generates_text_alone_and_in_a_left_padded_batch() {
    let model = tiny(ProcessingOptions::none());
    let options = lens_core::model::GenerateOptions {
        max_new_tokens: 5,
        ..Default::default()
    };
    let alone = model.generate_text(&["Hello world"], &options).unwrap();
    let batch = model
        .generate_text(&["The quick brown fox jumps", "Hello world"], &options)
        .unwrap();
    assert!(
        alone[0].starts_with("<|endoftext|>Hello world"),
        "{alone:?}"
    );
    assert!(batch[1].ends_with(&alone[0]), "{batch:?} vs {alone:?}");
}

/// One API on both models: `run_with_cache` records gradients of the loss with `incl_bwd`
/// (TransformerLens's semantics) and says how to get another scalar's; typed hook flags.
#[test]
fn run_with_cache_takes_the_gradient_of_the_loss_or_of_a_target() {
    let mut model = tiny(ProcessingOptions::none());
    let tokens = model.to_tokens(&["Hello world"], None, None).unwrap().ids;
    let grads = CacheOptions {
        incl_bwd: true,
        ..CacheOptions::default()
    };
    let loss = ForwardOptions {
        return_type: ReturnType::Loss,
        ..ForwardOptions::default()
    };
    let (_, cache) = model.run_with_cache(&tokens, &loss, &grads).unwrap();
    assert!(cache.contains("blocks.0.hook_resid_pre_grad"));
    let refused = model.run_with_cache(&tokens, &ForwardOptions::default(), &grads);
    assert!(refused
        .unwrap_err()
        .to_string()
        .contains("run_with_cache_and_backward"));
    let (_, cache) = model
        .run_with_cache_and_backward(
            &tokens,
            &ForwardOptions::default(),
            &CacheOptions::default(),
            &|out| Ok(out.logits()?.select(1, -1).select(1, 7).sum(Kind::Float)),
        )
        .unwrap();
    assert!(cache.contains("blocks.3.hook_resid_post_grad"));
    model.zero_grad();
    model.set_use_attn_result(true);
    assert!(model.hook_flags().contains(&("use_attn_result", true)));
    model.set_use_split_qkv_input(true).unwrap();
    assert!(
        model.set_use_attn_in(true).is_err(),
        "they exclude each other"
    );
    model.set_use_hook_mlp_in(true);
    assert!(model.hook_flags().contains(&("use_hook_mlp_in", true)));
}

/// OPT-350m's layout (tests/fixtures/opt-c: no final LayerNorm, the residual stream projected
/// before the unembedding): the residual directions of tokens are `W_project_out W_U[:, t]`, so
/// the final residual stream dotted with them (plus `b_U`) gives the logits, and
/// `hook_project_in` is what enters the residual stream.
#[test]
fn a_projected_unembedding_reads_the_residual_stream_through_its_projection() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/opt-c/model");
    let model = HookedTransformer::from_pretrained(
        dir.to_str().unwrap(),
        &LoadOptions::default(),
        ProcessingOptions::none(),
    )
    .unwrap();
    let tokens = Tensor::from_slice(&[2i64, 5, 17, 42, 99]).view([1, -1]);
    let (out, cache) = model
        .run_with_cache(
            &tokens,
            &ForwardOptions::default(),
            &CacheOptions::default(),
        )
        .unwrap();
    let logits = out.logits().unwrap();
    let vocab = Tensor::arange(model.cfg().d_vocab, (Kind::Int64, tch::Device::Cpu));
    let directions = lens_core::inspect::tokens_to_residual_directions(&model, &vocab).unwrap();
    assert_eq!(
        directions.size(),
        [model.cfg().d_vocab, model.cfg().d_model]
    );
    let last = model.cfg().n_layers as usize - 1;
    let residual = cache.get(("resid_post", last)).unwrap();
    let b_u = &model.params().b_U;
    let from_directions = residual.matmul(&directions.transpose(0, 1)) + b_u;
    assert!(max_err(&from_directions, logits) < 1e-5);
    let embedded = cache.get("hook_project_in").unwrap() + cache.get("hook_pos_embed").unwrap();
    assert!(max_err(&embedded, cache.get(("resid_pre", 0usize)).unwrap()) == 0.0);
    assert!(cache.get("ln_final.hook_normalized").is_err());
    // Post-LN: the residual stream is renormalised after every addition, so no decomposition
    // adds up to it and only the last stream (which nothing normalises) can be "normalised".
    let analysis = CacheAnalysis::new(&cache, &model);
    let all = Slice::All;
    let refused = analysis.decompose_resid(None, false, DecomposeMode::All, true, false, &all);
    assert!(refused.is_err_and(|e| e.to_string().contains("post-LN")));
    assert!(analysis
        .apply_ln_to_stack(residual, Some(1), false, &all, false)
        .is_err());
    let last = analysis
        .apply_ln_to_stack(residual, None, false, &all, false)
        .unwrap();
    assert!(last.equal(residual));
}

/// Refactoring `W_Q W_K^T` is refused where it is not the QK circuit: under rotary attention
/// (tests/fixtures/dec-a, a Llama), as TransformerLens refuses it.
#[test]
fn refactoring_is_refused_under_rotary_attention() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/dec-a/model");
    let err = HookedTransformer::from_pretrained(
        dir.to_str().unwrap(),
        &LoadOptions::default(),
        ProcessingOptions {
            refactor_factored_attn_matrices: true,
            ..ProcessingOptions::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("refactor_factored_attn_matrices") && err.contains("rotary"),
        "{err}"
    );
}
