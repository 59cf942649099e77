//! The bridge's hook semantics and API: every hook fires exactly once per pass, hooks are told
//! their registered names, unknown and gated names are errors, `reset_hooks` removes every hook,
//! TransformerLens weight views write the model, compatibility mode, stop_at_layer, generation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::common::*;
use bridge::{CompatibilityOptions, TransformerBridge};
use hookpoint::{Direction, Hook, HookError, HookSpec, NamesFilter};
use lens_core::model::{ForwardOptions, GenerateOptions, LensModel, ModelError, ReturnType};
use rstest::rstest;
use tch::{Device, Kind, Tensor};

fn small_tokens() -> Tensor {
    let golden = read_tensors(&fixtures().join("small/hf.safetensors"));
    golden["single_bos12/tokens"].shallow_clone()
}

fn logits(bridge: &TransformerBridge, tokens: &Tensor) -> Tensor {
    tch::no_grad(|| bridge.forward(tokens, &ForwardOptions::default()))
        .expect("forward")
        .logits
        .expect("logits")
}

type Counts = Arc<Mutex<BTreeMap<String, usize>>>;

fn counting_hook(counts: &Counts) -> Hook {
    let counts = counts.clone();
    Hook::new(move |_, ctx| {
        *counts
            .lock()
            .unwrap()
            .entry(ctx.name().to_owned())
            .or_insert(0) += 1;
        None
    })
}

/// Forward and backward firing counts of every hook point in one pass (loss: summed logits
/// of the last position).
fn fire_counts(
    bridge: &TransformerBridge,
    tokens: &Tensor,
) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let fwd: Counts = Arc::default();
    let bwd: Counts = Arc::default();
    let scope = bridge.hook_registry().scope();
    scope
        .add(&HookSpec::forward(NamesFilter::All, counting_hook(&fwd)))
        .unwrap();
    scope
        .add(&HookSpec::backward(NamesFilter::All, counting_hook(&bwd)))
        .unwrap();
    let out = bridge.forward(tokens, &ForwardOptions::default()).unwrap();
    hookpoint::backward(&out.logits.unwrap().select(1, -1).sum(Kind::Float)).unwrap();
    drop(scope);
    bridge.zero_grad();
    let f = fwd.lock().unwrap().clone();
    let b = bwd.lock().unwrap().clone();
    (f, b)
}

#[derive(Clone, Copy, Debug)]
enum Flags {
    Default,
    AttnResultAndMlpIn,
    SplitQkv,
    AttnIn,
}

#[rstest]
fn every_hook_fires_exactly_once(
    #[values("small", "knobs")] config: &str,
    #[values(
        Flags::Default,
        Flags::AttnResultAndMlpIn,
        Flags::SplitQkv,
        Flags::AttnIn
    )]
    flags: Flags,
) {
    let mut b = bridge(config);
    match flags {
        Flags::Default => {}
        Flags::AttnResultAndMlpIn => {
            b.set_use_attn_result(true);
            b.set_use_hook_mlp_in(true);
        }
        Flags::SplitQkv => b.set_use_split_qkv_input(true).unwrap(),
        Flags::AttnIn => b.set_use_attn_in(true).unwrap(),
    }
    let (fwd, bwd) = fire_counts(
        &b,
        &small_tokens().narrow(1, 0, 6).remainder(b.dims().d_vocab),
    );
    let per_head = matches!(flags, Flags::SplitQkv | Flags::AttnIn);
    for name in b.hook_registry().names() {
        let gated = b.hook_registry().disabled_by(name).is_some();
        // Documented: with per-head q/k/v inputs ln1 runs once per input, like
        // TransformerLens's HookedTransformer.
        let expected = if gated {
            0
        } else if per_head && name.contains(".ln1.") {
            3
        } else {
            1
        };
        assert_eq!(
            fwd.get(name).copied().unwrap_or(0),
            expected,
            "{config} {flags:?}: forward firings of {name}"
        );
        let integer = name == "embed.hook_in" || name == "pos_embed.hook_in";
        let expected_bwd = if integer { 0 } else { expected };
        assert_eq!(
            bwd.get(name).copied().unwrap_or(0),
            expected_bwd,
            "{config} {flags:?}: backward firings of {name}"
        );
    }
    let gated: Vec<&str> = b
        .hook_registry()
        .names()
        .filter(|n| b.hook_registry().disabled_by(n).is_some())
        .collect();
    let expected_gated_per_block = match flags {
        Flags::Default => 6,
        Flags::AttnResultAndMlpIn => 4,
        // attn_in, result, mlp_in; and attn.hook_in, attn.qkv.hook_in/out (no fused input)
        Flags::SplitQkv => 3 + 3,
        // q/k/v_input, result, mlp_in; and attn.hook_in, attn.qkv.hook_in/out
        Flags::AttnIn => 5 + 3,
    };
    assert_eq!(
        gated.len(),
        expected_gated_per_block * b.dims().n_layers as usize,
        "{flags:?}: {gated:?}"
    );
}

#[test]
fn hooks_fire_once_per_step_of_cached_generation() {
    let b = bridge("small");
    let fwd: Counts = Arc::default();
    let options = GenerateOptions {
        max_new_tokens: 3,
        stop_at_eos: false,
        ..GenerateOptions::default()
    };
    let _ = b
        .hook_registry()
        .with_hooks(
            &[HookSpec::forward(NamesFilter::All, counting_hook(&fwd))],
            || b.generate(&small_tokens(), None, &options).unwrap(),
        )
        .unwrap();
    for (name, count) in fwd.lock().unwrap().iter() {
        assert_eq!(*count, 3, "{name}: one firing per generated token");
    }
}

#[test]
fn a_hook_is_told_the_name_it_was_registered_under() {
    let b = bridge("small");
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = {
        let seen = seen.clone();
        Hook::new(move |_, ctx| {
            seen.lock().unwrap().push(format!(
                "{}:{}",
                ctx.name(),
                ctx.direction() == Direction::Forward
            ));
            None
        })
    };
    let names = [
        "blocks.0.hook_resid_pre",
        "blocks.0.hook_in",
        "hook_embed",
        "blocks.1.attn.hook_z",
        "blocks.1.attn.o.hook_in",
    ];
    let hooks: Vec<HookSpec> = names
        .iter()
        .map(|n| HookSpec::forward(*n, record.clone()))
        .collect();
    b.run_with_hooks(&small_tokens(), &ForwardOptions::default(), &hooks)
        .unwrap();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    let mut expected: Vec<String> = names.iter().map(|n| format!("{n}:true")).collect();
    expected.sort();
    assert_eq!(seen, expected);
}

#[test]
fn unknown_and_gated_names_are_errors() {
    let mut b = bridge("small");
    let noop = Hook::new(|_, _| None);
    let err = b
        .run_with_hooks(
            &small_tokens(),
            &ForwardOptions::default(),
            &[HookSpec::forward("blocks.0.hook_resid_pree", noop.clone())],
        )
        .unwrap_err();
    match err {
        ModelError::Hook(HookError::UnknownHook { name, suggestions }) => {
            assert_eq!(name, "blocks.0.hook_resid_pree");
            assert!(
                suggestions.contains(&"blocks.0.hook_resid_pre".to_string()),
                "{suggestions:?}"
            );
        }
        other => panic!("expected UnknownHook, got {other}"),
    }
    assert_eq!(
        b.hook_registry().hook_count(),
        0,
        "nothing stays attached after the error"
    );
    let gated = b.run_with_hooks(
        &small_tokens(),
        &ForwardOptions::default(),
        &[HookSpec::forward("blocks.0.attn.hook_result", noop.clone())],
    );
    assert!(
        matches!(gated, Err(ModelError::Hook(HookError::FlagNotEnabled { ref flag, .. })) if flag == "use_attn_result"),
        "{gated:?}"
    );
    b.set_use_attn_result(true);
    let fired: Counts = Arc::default();
    b.run_with_hooks(
        &small_tokens(),
        &ForwardOptions::default(),
        &[HookSpec::forward(
            "blocks.0.attn.hook_result",
            counting_hook(&fired),
        )],
    )
    .unwrap();
    assert_eq!(
        fired.lock().unwrap().get("blocks.0.attn.hook_result"),
        Some(&1)
    );
    b.set_use_split_qkv_input(true).unwrap();
    assert!(matches!(
        b.set_use_attn_in(true),
        Err(ModelError::InvalidInput(_))
    ));
    let qkv = b.run_with_hooks(
        &small_tokens(),
        &ForwardOptions::default(),
        &[HookSpec::forward("blocks.0.attn.qkv.hook_in", noop)],
    );
    assert!(
        matches!(qkv, Err(ModelError::Hook(HookError::FlagNotEnabled { .. }))),
        "{qkv:?}"
    );
    assert!(matches!(
        b.set_hook_flag("use_nothing", true),
        Err(ModelError::InvalidInput(_))
    ));
}

#[test]
fn reset_hooks_removes_every_hook() {
    let mut b = bridge("small");
    b.set_use_attn_result(true);
    let noop = Hook::new(|_, _| None);
    let names = [
        "blocks.0.attn.hook_pattern",
        "blocks.0.attn.hook_attn_scores",
        "blocks.1.ln1.hook_scale",
        "ln_final.hook_normalized",
        "blocks.2.attn.hook_result",
        "blocks.0.hook_resid_mid",
        "hook_embed",
        "blocks.0.hook_in",
    ];
    for name in names {
        for handle in b
            .hook_registry()
            .add_hook(&HookSpec::forward(name, noop.clone()))
            .unwrap()
        {
            handle.keep();
        }
        for handle in b
            .hook_registry()
            .add_hook(&HookSpec::backward(name, noop.clone()))
            .unwrap()
        {
            handle.keep();
        }
    }
    for handle in b
        .hook_registry()
        .add_hook(&HookSpec::forward("blocks.2.hook_resid_post", noop.clone()))
        .unwrap()
    {
        handle.make_permanent();
    }
    assert_eq!(b.hook_registry().hook_count(), 2 * names.len() + 1);
    assert_eq!(b.reset_hooks(false), 2 * names.len());
    assert_eq!(
        b.hook_registry().hook_count(),
        1,
        "the permanent hook stays"
    );
    assert_eq!(b.reset_hooks(true), 1);
    assert_eq!(b.hook_registry().hook_count(), 0);
    assert!(b.hook_registry().points().all(|p| !p.has_hooks()));
}

#[test]
fn hooks_edit_the_forward_pass() {
    let b = bridge("small");
    let tokens = small_tokens();
    let clean = logits(&b, &tokens);
    // Zeroing the MLP output of the last block through its TransformerLens alias changes the
    // logits exactly as removing that MLP does.
    let zero = Hook::new(|x, _| Some(x.zeros_like()));
    let ablated = b
        .run_with_hooks(
            &tokens,
            &ForwardOptions::default(),
            &[HookSpec::forward("blocks.2.hook_mlp_out", zero)],
        )
        .unwrap()
        .logits
        .unwrap();
    assert!(relative_error(&ablated, &clean, None) > 1e-3);
    // A no-op hook on every point leaves the logits bit-identical.
    let noop = Hook::new(|_, _| None);
    let hooked = b
        .run_with_hooks(
            &tokens,
            &ForwardOptions::default(),
            &[HookSpec::forward(NamesFilter::All, noop)],
        )
        .unwrap()
        .logits
        .unwrap();
    assert_eq!(hooked, clean);
    // Editing q's input affects q only (the fused projection is recomputed from the slices).
    let double = Hook::new(|x, _| Some(x * 2.0));
    let q_only = b
        .run_with_hooks(
            &tokens,
            &ForwardOptions::default(),
            &[HookSpec::forward("blocks.0.attn.q.hook_in", double.clone())],
        )
        .unwrap()
        .logits
        .unwrap();
    assert!(relative_error(&q_only, &clean, None) > 1e-4);
    // A backward hook can replace the gradient.
    let grads: Arc<Mutex<Vec<f64>>> = Arc::default();
    let record = {
        let grads = grads.clone();
        Hook::new(move |g, _| {
            grads
                .lock()
                .unwrap()
                .push(g.abs().sum(Kind::Float).double_value(&[]));
            None
        })
    };
    let scope = b.hook_registry().scope();
    scope
        .add(&HookSpec::backward(
            "blocks.1.hook_resid_post",
            Hook::new(|g, _| Some(g * 2.0)),
        ))
        .unwrap();
    scope
        .add(&HookSpec::backward("blocks.1.hook_resid_pre", record))
        .unwrap();
    let out = b.forward(&tokens, &ForwardOptions::default()).unwrap();
    hookpoint::backward(&out.logits.unwrap().select(1, -1).sum(Kind::Float)).unwrap();
    drop(scope);
    let (_, cache) = b
        .run_with_cache_and_backward(
            &tokens,
            &ForwardOptions::default(),
            &hookpoint::CacheOptions {
                incl_bwd: true,
                names_filter: "blocks.1.hook_resid_pre".into(),
                ..Default::default()
            },
            &|out| Ok(out.logits()?.select(1, -1).sum(Kind::Float)),
        )
        .unwrap();
    let plain = cache
        .get("blocks.1.hook_resid_pre_grad")
        .or_else(|_| cache.get("blocks.1.hook_in_grad"))
        .unwrap();
    let doubled = grads.lock().unwrap()[0];
    let expected = plain.abs().sum(Kind::Float).double_value(&[]) * 2.0;
    assert!(
        (doubled - expected).abs() <= 1e-4 * expected,
        "{doubled} vs {expected}"
    );
    b.zero_grad();
}

/// The bridge runs HuggingFace's fused LayerNorm and fused `c_attn` while no hook edits the
/// intermediates those skip; these checks prove an edit (a replacement or an in-place change)
/// still takes effect, and that reading changes nothing.
#[test]
fn edits_inside_layer_norm_and_qkv_take_effect() {
    let b = bridge("small");
    let tokens = small_tokens();
    let clean = logits(&b, &tokens);
    let run = |specs: &[HookSpec]| {
        tch::no_grad(|| b.run_with_hooks(&tokens, &ForwardOptions::default(), specs))
            .unwrap()
            .logits
            .unwrap()
    };
    // Reading the scale, the normalized values and q/k/v inputs leaves the logits bit-identical.
    let read = Hook::new(|x, _| {
        let _ = x.sum(Kind::Float);
        None
    });
    let readers: Vec<HookSpec> = [
        "blocks.0.ln1.hook_scale",
        "blocks.1.ln2.hook_normalized",
        "ln_final.hook_scale",
        "blocks.0.attn.q.hook_in",
        "blocks.2.attn.v.hook_in",
    ]
    .iter()
    .map(|name| HookSpec::forward(*name, read.clone()))
    .collect();
    assert_eq!(run(&readers), clean);

    // Doubling the scale and halving the normalized values are the same edit.
    let times = |factor: f64| Hook::new(move |x, _| Some(x * factor));
    let scale_doubled = run(&[HookSpec::forward("blocks.1.ln1.hook_scale", times(2.0))]);
    let normalized_halved = run(&[HookSpec::forward(
        "blocks.1.ln1.hook_normalized",
        times(0.5),
    )]);
    assert!(relative_error(&scale_doubled, &clean, None) > 1e-3);
    assert!(relative_error(&scale_doubled, &normalized_halved, None) < 1e-6);

    // The same edit made in place, returning nothing, has the same effect.
    let halve_in_place = Hook::new(|x, _| {
        let _ = x.shallow_clone().g_mul_scalar_(0.5);
        None
    });
    let in_place = run(&[HookSpec::forward(
        "blocks.1.ln1.hook_normalized",
        halve_in_place.clone(),
    )]);
    assert!(relative_error(&in_place, &normalized_halved, None) < 1e-6);

    // An in-place edit of k's input reaches the keys (q and v share that tensor, as they do
    // when the hook returns an edited copy to each).
    let k_in_place = run(&[HookSpec::forward("blocks.0.attn.k.hook_in", halve_in_place)]);
    let all_halved = run(&[
        HookSpec::forward("blocks.0.attn.q.hook_in", times(0.5)),
        HookSpec::forward("blocks.0.attn.k.hook_in", Hook::new(|_, _| None)),
        HookSpec::forward("blocks.0.attn.v.hook_in", times(0.5)),
        HookSpec::forward("blocks.0.attn.k.hook_in", times(0.5)),
    ]);
    assert!(relative_error(&k_in_place, &clean, None) > 1e-4);
    assert!(relative_error(&k_in_place, &all_halved, None) < 1e-6);
}

#[test]
fn resid_mid_gradient_covers_the_skip_connection() {
    // Python's bridge aliases hook_resid_mid to ln2.hook_in, whose gradient misses the skip
    // connection; here hook_resid_mid's gradient is ln2.hook_in's plus resid_post's.
    let b = bridge("knobs");
    let (_, cache) = b
        .run_with_cache_and_backward(
            &small_tokens().remainder(997),
            &ForwardOptions::default(),
            &hookpoint::CacheOptions {
                incl_bwd: true,
                ..Default::default()
            },
            &|out| Ok(out.logits()?.select(1, -1).sum(Kind::Float)),
        )
        .unwrap();
    b.zero_grad();
    for l in 0..2 {
        let mid = cache
            .get(format!("blocks.{l}.hook_resid_mid_grad").as_str())
            .unwrap();
        let ln2 = cache
            .get(format!("blocks.{l}.ln2.hook_in_grad").as_str())
            .unwrap();
        let post = cache
            .get(format!("blocks.{l}.hook_out_grad").as_str())
            .unwrap();
        assert!(relative_error(&(ln2 + post), mid, None) <= 1e-6);
        assert!(
            relative_error(ln2, mid, None) > 1e-3,
            "the skip connection carries gradient"
        );
    }
}

/// The zero `b_U` the bridge adds is left out of the unembedding while it is zero and needs no
/// gradient; a write through its TransformerLens view (in place) must still reach the logits,
/// and with gradients on it must get one.
#[test]
fn the_unembedding_bias_is_used_once_written() {
    let b = bridge("small");
    let tokens = small_tokens();
    let clean = logits(&b, &tokens);
    let b_u = b.tl_weight("unembed.b_U").unwrap();
    tch::no_grad(|| {
        let _ = b_u.shallow_clone().fill_(0.25);
    });
    assert!(relative_error(&logits(&b, &tokens), &(&clean + 0.25), None) < 1e-6);
    tch::no_grad(|| {
        let _ = b_u.shallow_clone().fill_(0.0);
    });
    assert_eq!(logits(&b, &tokens), clean);
    // With gradients recorded, b_U takes part in the product and gets its gradient.
    let out = b.forward(&tokens, &ForwardOptions::default()).unwrap();
    hookpoint::backward(&out.logits.unwrap().select(1, -1).sum(Kind::Float)).unwrap();
    let grad = b
        .tl_weight_grad("unembed.b_U")
        .unwrap()
        .expect("b_U has a gradient");
    // d(sum of the last position's logits)/d b_U = 1 for every token.
    assert_eq!(grad, Tensor::ones_like(&grad));
    b.zero_grad();
}

#[test]
fn tl_weight_views_write_the_model() {
    let b = bridge("small");
    let tokens = small_tokens();
    let clean = logits(&b, &tokens);
    let w_v = b.tl_weight("blocks.0.attn.W_V").unwrap();
    assert_eq!(w_v.size(), vec![4, 64, 16]);
    tch::no_grad(|| {
        let _ = w_v.shallow_clone().fill_(0.0);
    });
    let c_attn = b
        .hf_model()
        .parameter("transformer.h.0.attn.c_attn.weight")
        .unwrap();
    assert_eq!(
        c_attn
            .narrow(1, 128, 64)
            .abs()
            .sum(Kind::Float)
            .double_value(&[]),
        0.0
    );
    assert!(
        c_attn
            .narrow(1, 0, 128)
            .abs()
            .sum(Kind::Float)
            .double_value(&[])
            > 0.0
    );
    let changed = logits(&b, &tokens);
    assert!(
        relative_error(&changed, &clean, None) > 1e-3,
        "zeroing W_V must change the output"
    );
    // Every name resolves, in TransformerLens's shapes.
    let d = b.dims();
    for name in b.tl_weight_names() {
        let w = b.tl_weight(&name).unwrap();
        let last = name.rsplit('.').next().unwrap();
        let expected: Vec<i64> = match last {
            "W_E" => vec![d.d_vocab, d.d_model],
            "W_pos" => vec![d.n_ctx, d.d_model],
            "W_Q" | "W_K" | "W_V" => vec![d.n_heads, d.d_model, d.d_head],
            "W_O" => vec![d.n_heads, d.d_head, d.d_model],
            "b_Q" | "b_K" | "b_V" => vec![d.n_heads, d.d_head],
            "W_in" => vec![d.d_model, d.d_mlp],
            "b_in" => vec![d.d_mlp],
            "W_out" => vec![d.d_mlp, d.d_model],
            "W_U" => vec![d.d_model, d.d_vocab],
            "b_U" => vec![d.d_vocab],
            _ => vec![d.d_model],
        };
        assert_eq!(w.size(), expected, "{name}");
    }
    assert!(b.tl_weight("blocks.3.attn.W_Q").is_err());
    assert!(b.tl_weight("blocks.0.attn.W_X").is_err());
    // Gradients in TransformerLens's layout.
    let out = b.forward(&tokens, &ForwardOptions::default()).unwrap();
    hookpoint::backward(&out.logits.unwrap().sum(Kind::Float)).unwrap();
    let grad = b
        .tl_weight_grad("blocks.1.attn.W_Q")
        .unwrap()
        .expect("a gradient");
    let raw = b
        .hf_model()
        .parameter("transformer.h.1.attn.c_attn.weight")
        .unwrap()
        .grad();
    let expected = raw.narrow(1, 0, 64).view([64, 4, 16]).permute([1, 0, 2]);
    assert_eq!(grad, expected);
    b.zero_grad();
}

#[test]
fn compatibility_mode_processes_the_weights() {
    let tokens = small_tokens();
    let plain = bridge("small");
    let mut b = bridge("small");
    b.enable_compatibility_mode(CompatibilityOptions::default())
        .unwrap();
    for name in b.tl_weight_names() {
        let w = b.tl_weight(&name).unwrap();
        if name.ends_with("ln1.w") || name.ends_with("ln2.w") || name == "ln_final.w" {
            assert_eq!(w, w.ones_like(), "{name}");
        }
        if name.ends_with("ln1.b")
            || name.ends_with("ln2.b")
            || name == "ln_final.b"
            || name.ends_with("b_V")
        {
            assert_eq!(w, w.zeros_like(), "{name}");
        }
    }
    // lm_head is untied from wte.
    assert!(
        relative_error(
            &b.tl_weight("unembed.W_U").unwrap().transpose(0, 1),
            &b.tl_weight("embed.W_E").unwrap(),
            None
        ) > 1e-3
    );
    let log_probs = |m: &TransformerBridge| logits(m, &tokens).log_softmax(-1, Kind::Float);
    assert!(relative_error(&log_probs(&b), &log_probs(&plain), None) <= TOLERANCE);
    assert!(relative_error(&logits(&b, &tokens), &logits(&plain, &tokens), None) > 1e-4);
    assert!(
        b.enable_compatibility_mode(CompatibilityOptions::default())
            .is_err(),
        "processing twice"
    );
    let mut untouched = bridge("small");
    untouched
        .enable_compatibility_mode(CompatibilityOptions {
            no_processing: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(logits(&untouched, &tokens), logits(&plain, &tokens));
}

#[test]
fn stop_at_layer_returns_the_residual_stream() {
    let b = bridge("small");
    let tokens = small_tokens();
    let (_, cache) = b
        .run_with_cache(&tokens, &ForwardOptions::default(), &Default::default())
        .unwrap();
    for layer in 0..3 {
        let out = b
            .forward(
                &tokens,
                &ForwardOptions {
                    stop_at_layer: Some(layer),
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(out.logits.is_none());
        let expected = cache.get(("resid_pre", layer as i64)).unwrap();
        assert_eq!(out.residual.unwrap().detach(), *expected, "layer {layer}");
    }
    let full = b
        .forward(
            &tokens,
            &ForwardOptions {
                stop_at_layer: Some(3),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(full.logits.is_some());
    // Hooks of later blocks do not fire.
    let fired: Counts = Arc::default();
    b.run_with_hooks(
        &tokens,
        &ForwardOptions {
            stop_at_layer: Some(1),
            ..Default::default()
        },
        &[HookSpec::forward(NamesFilter::All, counting_hook(&fired))],
    )
    .unwrap();
    assert!(fired
        .lock()
        .unwrap()
        .keys()
        .all(|k| !k.starts_with("blocks.1.") && !k.starts_with("ln_final")));
}

#[test]
fn losses_and_input_errors() {
    let b = bridge("small");
    let tokens = small_tokens();
    let out = b
        .forward(
            &tokens,
            &ForwardOptions {
                return_type: ReturnType::Both,
                ..Default::default()
            },
        )
        .unwrap();
    let per_token = b
        .forward(
            &tokens,
            &ForwardOptions {
                return_type: ReturnType::Loss,
                loss_per_token: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(per_token.loss.as_ref().unwrap().size(), vec![1, 11]);
    assert!(
        relative_error(
            &per_token.loss.unwrap().mean(Kind::Float),
            out.loss.as_ref().unwrap(),
            None
        ) <= 1e-6
    );
    assert!(out.logits.is_some());
    let bad = Tensor::from_slice(&[1i64, 5000]).unsqueeze(0);
    assert!(matches!(
        b.forward(&bad, &ForwardOptions::default()),
        Err(ModelError::InvalidInput(_))
    ));
    let long = Tensor::zeros([1, 65], (Kind::Int64, Device::Cpu));
    assert!(matches!(
        b.forward(&long, &ForwardOptions::default()),
        Err(ModelError::TooLong { len: 65, n_ctx: 64 })
    ));
    let empty = Tensor::zeros([1, 0], (Kind::Int64, Device::Cpu));
    assert!(matches!(
        b.forward(&empty, &ForwardOptions::default()),
        Err(ModelError::EmptyInput)
    ));
    let mask = Tensor::ones([1, 3], (Kind::Int64, Device::Cpu));
    assert!(matches!(
        b.forward(
            &tokens,
            &ForwardOptions {
                attention_mask: Some(&mask),
                ..Default::default()
            }
        ),
        Err(ModelError::InvalidInput(_))
    ));
    let floats = Tensor::zeros([1, 3], (Kind::Float, Device::Cpu));
    assert!(matches!(
        b.forward(&floats, &ForwardOptions::default()),
        Err(ModelError::InvalidInput(_))
    ));
}

/// The bridge generates what HuggingFace generates, with and without its KV cache, the
/// left-padded batch included.
#[rstest]
fn greedy_generation_matches_huggingface(#[values("small", "knobs")] config: &str) {
    let b = bridge(config);
    let golden = read_tensors(&fixtures().join(config).join("hf.safetensors"));
    let meta = read_json(&fixtures().join(config).join("hf.json"));
    for pid in prompt_ids(&meta) {
        let tokens = &golden[&format!("{pid}/tokens")];
        let mask = padding_mask(&golden, &pid);
        for (key, use_cache) in [("generate.use_cache", true), ("generate.no_cache", false)] {
            let options = GenerateOptions {
                max_new_tokens: 8,
                use_past_kv_cache: use_cache,
                ..Default::default()
            };
            let out = b.generate(tokens, mask.as_ref(), &options).unwrap();
            assert_eq!(out, golden[&format!("{pid}/{key}")], "{config}/{pid}/{key}");
        }
    }
}

#[test]
fn sampling_is_seeded() {
    let b = bridge("small");
    let tokens = small_tokens();
    let options = |use_cache| GenerateOptions {
        max_new_tokens: 6,
        do_sample: true,
        temperature: 0.8,
        top_k: Some(50),
        seed: Some(1234),
        stop_at_eos: false,
        use_past_kv_cache: use_cache,
        ..Default::default()
    };
    let a = b.generate(&tokens, None, &options(true)).unwrap();
    let again = b.generate(&tokens, None, &options(true)).unwrap();
    let no_cache = b.generate(&tokens, None, &options(false)).unwrap();
    assert_eq!(a, again);
    assert_eq!(a, no_cache);
    assert_eq!(a.size(), vec![1, 18]);
    let other_seed = b
        .generate(
            &tokens,
            None,
            &GenerateOptions {
                seed: Some(99),
                ..options(true)
            },
        )
        .unwrap();
    assert_ne!(a, other_seed);
}

#[test]
fn adapter_maps_components_to_huggingface_modules() {
    use bridge::{ArchitectureAdapter, ComponentKind};
    let b = bridge("knobs");
    let adapter = b.adapter().expect("GPT-2 has an adapter");
    let components = adapter.components();
    assert_eq!(adapter.architecture(), "GPT2LMHeadModel");
    assert_eq!(components.len(), 2 + 12 * 2 + 2);
    for c in &components {
        let has_weight = !matches!(
            c.kind,
            ComponentKind::Block | ComponentKind::JointQkvAttention | ComponentKind::Mlp
        );
        if has_weight {
            let w = b.hf_model().parameter(&format!("{}.weight", c.hf_path));
            assert!(w.is_some(), "{} -> {}", c.name, c.hf_path);
        }
        // Every component has hook_in / hook_out (the blocks' are hook_resid_pre / _post).
        for hook in ["hook_in", "hook_out"] {
            let name = format!("{}.{hook}", c.name);
            assert!(b.hook_registry().get(&name).is_ok(), "{name}");
        }
    }
    assert_eq!(
        components
            .iter()
            .find(|c| c.name == "blocks.1.attn.o")
            .unwrap()
            .hf_path,
        "transformer.h.1.attn.c_proj"
    );
    assert_eq!(
        components
            .iter()
            .find(|c| c.name == "unembed")
            .unwrap()
            .hf_path,
        "lm_head"
    );
}

/// `boot_with` takes every loading option: a models cache of its own, the checkpoint's dtype.
#[test]
fn boot_with_takes_the_loading_options() {
    let cache = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models-cache");
    let options = lens_core::LoadOptions {
        resolve: lens_core::ResolveOptions {
            models_cache: Some(cache),
            ..Default::default()
        },
        kind: None,
        ..Default::default()
    };
    let bridge = TransformerBridge::boot_with(lens_core::DEFAULT_MODEL, &options).unwrap();
    assert_eq!(
        bridge.kind(),
        tch::Kind::Float,
        "the checkpoint's own dtype"
    );
    let missing = lens_core::LoadOptions {
        resolve: lens_core::ResolveOptions {
            models_cache: Some(std::env::temp_dir().join("no-models-here")),
            ..Default::default()
        },
        ..Default::default()
    };
    let err = TransformerBridge::boot_with(lens_core::DEFAULT_MODEL, &missing).unwrap_err();
    assert!(err.to_string().contains("no-models-here"), "{err}");
}
