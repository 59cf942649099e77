//! The activation cache: filters, gradients, batch-dimension removal, position slices,
//! devices and TransformerLens-style lookups.

use crate::common::{input, max_abs_diff, require_device, sum, TinyModel, HOOK_NAMES};
use hookpoint::{backward, run_with_cache, ActKey, CacheOptions, HookError, NamesFilter, Slice};
use rstest::rstest;
use tch::{Device, Kind, Tensor};

fn cache_of(model: &TinyModel, x: &Tensor, options: &CacheOptions) -> hookpoint::ActivationCache {
    run_with_cache(&model.registry, options, Some(1), || model.forward(x))
        .unwrap()
        .1
}

#[test]
fn caches_every_point_that_fires_in_firing_order() {
    let model = TinyModel::new(Device::Cpu);
    let x = input(Device::Cpu);
    let cache = cache_of(&model, &x, &CacheOptions::default());
    assert_eq!(cache.keys().collect::<Vec<_>>(), HOOK_NAMES.to_vec());
    let pre = x.matmul(&model.w1);
    assert!(max_abs_diff(cache.get("hidden.hook_pre").unwrap(), &pre) < 1e-6);
    assert!(max_abs_diff(cache.get("hook_out").unwrap(), &model.plain_forward(&x)) < 1e-6);
    assert!(
        !cache.get("hook_out").unwrap().requires_grad(),
        "cached tensors are detached"
    );
    assert_eq!(model.registry.hook_count(), 0);
}

#[rstest]
#[case::name(NamesFilter::from("hidden.hook_pre"), vec!["hidden.hook_pre"])]
#[case::list(NamesFilter::from(["hook_out", "hook_in"]), vec!["hook_in", "hook_out"])]
#[case::predicate(NamesFilter::predicate(|n| n.starts_with("hidden.")), vec!["hidden.hook_pre", "hidden.hook_post"])]
fn names_filter_selects(#[case] filter: NamesFilter, #[case] expected: Vec<&str>) {
    let model = TinyModel::new(Device::Cpu);
    let options = CacheOptions {
        names_filter: filter,
        ..CacheOptions::default()
    };
    let cache = cache_of(&model, &input(Device::Cpu), &options);
    assert_eq!(cache.keys().collect::<Vec<_>>(), expected);
}

#[rstest]
#[case::cpu(Device::Cpu)]
#[ignore = "needs a CUDA device"]
#[case::cuda(Device::Cuda(0))]
fn incl_bwd_stores_the_gradient_at_every_point(#[case] device: Device) {
    require_device(device);
    let model = TinyModel::new(device);
    let x = input(device);
    let options = CacheOptions {
        incl_bwd: true,
        ..CacheOptions::default()
    };
    let (_, cache) = run_with_cache(&model.registry, &options, Some(1), || {
        model.forward(&x).map(|o| sum(&o))
    })
    .unwrap();
    // Reference gradients with autograd directly: d loss / d activation via retained grads.
    let pre = x.matmul(&model.w1);
    let post = pre.relu();
    let direct = autograd_grads(&model, &x);
    assert!(max_abs_diff(cache.get("hidden.hook_post_grad").unwrap(), &direct.0) < 1e-6);
    assert!(max_abs_diff(cache.get("hidden.hook_pre_grad").unwrap(), &direct.1) < 1e-6);
    assert_eq!(cache.get("hook_out_grad").unwrap().size(), vec![2, 2]);
    // The input takes no part in autograd, so it has no gradient: 4 activations + 3 gradients.
    assert!(!cache.contains("hook_in_grad"));
    assert_eq!(cache.len(), 7);
    drop((pre, post));
}

/// d sum(out) / d post and d sum(out) / d pre, by the chain rule written out.
fn autograd_grads(model: &TinyModel, x: &Tensor) -> (Tensor, Tensor) {
    let pre = x.matmul(&model.w1).detach();
    let ones = Tensor::ones([2, 2], (Kind::Float, x.device()));
    let d_post = ones.matmul(&model.w2.detach().transpose(0, 1));
    let d_pre = &d_post * pre.gt(0.0).to_kind(Kind::Float);
    (d_post, d_pre)
}

#[test]
fn retain_keeps_the_chosen_entries_in_order_and_still_finds_them() {
    let model = TinyModel::new(Device::Cpu);
    let mut cache = cache_of(&model, &input(Device::Cpu), &CacheOptions::default());
    let kept: Vec<&str> = HOOK_NAMES.iter().copied().skip(1).step_by(2).collect();
    cache.retain(|name| kept.contains(&name));
    assert_eq!(cache.keys().collect::<Vec<_>>(), kept);
    for name in &kept {
        assert!(cache.get(*name).is_ok(), "{name}");
    }
    assert!(!cache.contains(HOOK_NAMES[0]));
}

#[test]
fn incl_bwd_needs_a_scalar_output() {
    let model = TinyModel::new(Device::Cpu);
    let options = CacheOptions {
        incl_bwd: true,
        ..CacheOptions::default()
    };
    let outcome = run_with_cache(&model.registry, &options, Some(1), || {
        model.forward(&input(Device::Cpu))
    });
    assert!(matches!(outcome, Err(HookError::Cache(message)) if message.contains("scalar")));
    assert_eq!(model.registry.hook_count(), 0);
}

#[test]
fn remove_batch_dim_needs_batch_size_one() {
    let model = TinyModel::new(Device::Cpu);
    let options = CacheOptions {
        remove_batch_dim: true,
        ..CacheOptions::default()
    };
    let single = input(Device::Cpu).narrow(0, 0, 1);
    let cache = cache_of(&model, &single, &options);
    assert_eq!(cache.get("hidden.hook_pre").unwrap().size(), vec![4]);
    assert!(!cache.has_batch_dim());
    let outcome = run_with_cache(&model.registry, &options, Some(1), || {
        model.forward(&input(Device::Cpu))
    });
    assert!(
        matches!(outcome, Err(HookError::Cache(message)) if message.contains("batch size must be 1"))
    );
}

#[test]
fn pos_slice_keeps_the_selected_positions() {
    // Treat the batch of two as positions: [pos, d] tensors are sliced on dim -2.
    let model = TinyModel::new(Device::Cpu);
    let x = input(Device::Cpu);
    let options = CacheOptions {
        pos_slice: Slice::Index(-1),
        ..CacheOptions::default()
    };
    let cache = cache_of(&model, &x, &options);
    let pre = x.matmul(&model.w1);
    assert_eq!(cache.get("hidden.hook_pre").unwrap().size(), vec![4]);
    assert!(max_abs_diff(cache.get("hidden.hook_pre").unwrap(), &pre.get(1)) < 1e-6);
}

#[test]
fn slices_follow_python_semantics() {
    let t = Tensor::arange(10, (Kind::Int64, Device::Cpu));
    let take = |s: Slice| Vec::<i64>::try_from(s.apply(&t, 0).unwrap()).unwrap();
    assert_eq!(
        take(Slice::Range {
            start: Some(2),
            stop: Some(8),
            step: 3
        }),
        vec![2, 5]
    );
    assert_eq!(
        take(Slice::Range {
            start: Some(-3),
            stop: None,
            step: 1
        }),
        vec![7, 8, 9]
    );
    assert_eq!(take(Slice::Indices(vec![0, -1])), vec![0, 9]);
    assert_eq!(take(Slice::All), (0..10).collect::<Vec<_>>());
    assert!(Slice::Index(10).apply(&t, 0).is_err());
}

#[test]
fn lookups_accept_aliases_and_shorthands() {
    let model = TinyModel::new(Device::Cpu);
    let cache = cache_of(&model, &input(Device::Cpu), &CacheOptions::default());
    let by_alias = cache.get("hook_hidden").unwrap();
    assert!(max_abs_diff(by_alias, cache.get("hidden.hook_post").unwrap()) == 0.0);
    let options = CacheOptions {
        incl_bwd: true,
        ..CacheOptions::default()
    };
    let (_, with_grads) = run_with_cache(&model.registry, &options, Some(1), || {
        model.forward(&input(Device::Cpu)).map(|o| sum(&o))
    })
    .unwrap();
    let grad_by_alias = with_grads.get("hook_hidden_grad").unwrap();
    assert!(
        max_abs_diff(
            grad_by_alias,
            with_grads.get("hidden.hook_post_grad").unwrap()
        ) == 0.0
    );
    let missing = cache.get(("resid_pre", -1i64)).unwrap_err();
    assert!(
        missing.to_string().contains("blocks.0.hook_resid_pre"),
        "{missing}"
    );
    assert_eq!(
        ActKey::from(("resid_pre", -1i64))
            .resolve(Some(12))
            .unwrap(),
        "blocks.11.hook_resid_pre"
    );
}

#[test]
fn batch_slicing_and_device_moves() {
    let model = TinyModel::new(Device::Cpu);
    let mut cache = cache_of(&model, &input(Device::Cpu), &CacheOptions::default());
    let first = cache.apply_slice_to_batch_dim(&Slice::Index(0)).unwrap();
    assert_eq!(first.get("hook_out").unwrap().size(), vec![2]);
    assert!(!first.has_batch_dim());
    cache.to_device(Device::Cpu).unwrap();
    assert_eq!(cache.get("hook_in").unwrap().device(), Device::Cpu);
}

#[test]
fn the_cache_hooks_are_removed_even_when_forward_fails() {
    let model = TinyModel::new(Device::Cpu);
    let bad_input = Tensor::ones([2, 5], (Kind::Float, Device::Cpu));
    let outcome = run_with_cache(&model.registry, &CacheOptions::default(), Some(1), || {
        let x = model
            .registry
            .get("hook_in")?
            .run(bad_input.shallow_clone())?;
        Err::<Tensor, _>(HookError::Cache(format!(
            "model rejected input of shape {:?}",
            x.size()
        )))
    });
    assert!(outcome.is_err());
    assert_eq!(model.registry.hook_count(), 0);
    backward(&sum(&model.forward(&input(Device::Cpu)).unwrap())).unwrap();
}
