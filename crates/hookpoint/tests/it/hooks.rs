//! Forward hooks, native backward hooks, handles, scopes and errors, on a small model with
//! known weights. Device-parametrised tests run on CUDA when a CUDA device is present and say
//! that they skipped otherwise.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use crate::common::{input, max_abs_diff, require_device, sum, TinyModel};
use hookpoint::{backward, AddOptions, Direction, Hook, HookError, HookSpec, NamesFilter};
use rstest::rstest;
use tch::{Device, Kind, Tensor};

/// What a recording hook saw: (hook name, tensor) per call.
type Seen = Arc<Mutex<Vec<(String, Tensor)>>>;

fn recorder() -> (Seen, Hook) {
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    let hook = Hook::new(move |t, ctx| {
        sink.lock()
            .unwrap()
            .push((ctx.name().to_owned(), t.detach().copy()));
        None
    });
    (seen, hook)
}

#[rstest]
#[case::cpu(Device::Cpu)]
#[ignore = "needs a CUDA device"]
#[case::cuda(Device::Cuda(0))]
fn forward_hook_reads_the_activation(#[case] device: Device) {
    require_device(device);
    let model = TinyModel::new(device);
    let x = input(device);
    let (seen, hook) = recorder();
    let out = model
        .registry
        .with_hooks(&[HookSpec::forward("hidden.hook_pre", hook)], || {
            model.forward(&x)
        })
        .unwrap()
        .unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "hidden.hook_pre");
    // Row 0: [1, 2, -1] . W1 = [0.5+3+2, -1+1-1, 2-1-0.75, 0.25+2+0.25] = [5.5, -1, 0.25, 2.5]
    let expected = Tensor::from_slice(&[5.5f32, -1.0, 0.25, 2.5]);
    assert!(max_abs_diff(&seen[0].1.get(0), &expected) < 1e-6);
    assert!(max_abs_diff(&out, &model.plain_forward(&x)) < 1e-6);
}

#[test]
fn forward_hook_replacement_flows_downstream() {
    let model = TinyModel::new(Device::Cpu);
    let x = input(Device::Cpu);
    let zero = Hook::new(|t, _| Some(t.zeros_like()));
    let out = model
        .registry
        .with_hooks(&[HookSpec::forward("hidden.hook_post", zero)], || {
            model.forward(&x)
        })
        .unwrap()
        .unwrap();
    assert_eq!(sum(&out.abs()).double_value(&[]), 0.0);
    // Hooks are gone afterwards: the next forward is the plain one.
    let out = model.forward(&x).unwrap();
    assert!(max_abs_diff(&out, &model.plain_forward(&x)) < 1e-6);
}

#[test]
fn replacement_of_another_shape_is_an_error_naming_both_shapes() {
    let model = TinyModel::new(Device::Cpu);
    let x = input(Device::Cpu);
    let bad = Hook::new(|t, _| Some(t.sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)));
    let error = model
        .registry
        .with_hooks(&[HookSpec::forward("hidden.hook_pre", bad)], || {
            model.forward(&x)
        })
        .unwrap()
        .unwrap_err();
    match &error {
        HookError::ShapeMismatch {
            hook,
            expected,
            actual,
        } => {
            assert_eq!(hook, "hidden.hook_pre");
            assert_eq!(expected, &vec![2, 4]);
            assert_eq!(actual, &vec![2]);
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    assert!(error.to_string().contains("hidden.hook_pre") && error.to_string().contains("[2, 4]"));
    assert_eq!(model.registry.hook_count(), 0);
}

#[rstest]
#[case::cpu(Device::Cpu)]
#[ignore = "needs a CUDA device"]
#[case::cuda(Device::Cuda(0))]
fn backward_hook_reads_the_gradient(#[case] device: Device) {
    require_device(device);
    let model = TinyModel::new(device);
    let x = input(device);
    let (seen, hook) = recorder();
    model
        .registry
        .with_hooks(&[HookSpec::backward("hidden.hook_post", hook)], || {
            backward(&sum(&model.forward(&x)?))
        })
        .unwrap()
        .unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "hidden.hook_post");
    // d sum(post W2) / d post = row sums of W2, the same for every batch row.
    let row_sums = Tensor::from_slice(&[0.0f32, 2.5, -1.25, 3.0]);
    let expected = Tensor::stack(&[&row_sums, &row_sums], 0);
    assert_eq!(seen[0].1.size(), vec![2, 4]);
    assert!(max_abs_diff(&seen[0].1, &expected) < 1e-6);
}

#[rstest]
#[case::cpu(Device::Cpu)]
#[ignore = "needs a CUDA device"]
#[case::cuda(Device::Cuda(0))]
fn backward_hook_replacement_reaches_the_leaves(#[case] device: Device) {
    require_device(device);
    let x = input(device);
    let plain = TinyModel::new(device);
    backward(&sum(&plain.plain_forward(&x))).unwrap();
    let hooked = TinyModel::new(device);
    let doubled = Hook::new(|g, _| Some(g * 2.0));
    hooked
        .registry
        .with_hooks(&[HookSpec::backward("hook_out", doubled)], || {
            backward(&sum(&hooked.forward(&x)?))
        })
        .unwrap()
        .unwrap();
    let expected_w1 = plain.w1.grad() * 2.0;
    let expected_w2 = plain.w2.grad() * 2.0;
    assert!(max_abs_diff(&hooked.w1.grad(), &expected_w1) < 1e-5);
    assert!(max_abs_diff(&hooked.w2.grad(), &expected_w2) < 1e-5);
    // And the numbers themselves: dL/dW2 = 2 * sum over batch of relu(x W1), per output column.
    let post = x.matmul(&plain.w1).relu().detach();
    let by_hand = post
        .sum_dim_intlist([0i64].as_slice(), false, Kind::Float)
        .unsqueeze(1)
        .repeat([1, 2])
        * 2.0;
    assert!(max_abs_diff(&hooked.w2.grad(), &by_hand) < 1e-5);
}

#[test]
fn backward_hooks_chain_in_order_and_prepend_goes_first() {
    let model = TinyModel::new(Device::Cpu);
    let x = input(Device::Cpu);
    let log: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let (l1, l2) = (log.clone(), log.clone());
    let add_one = Hook::new(move |g, _| {
        l1.lock().unwrap().push("add_one");
        Some(g + 1.0)
    });
    let times_three = Hook::new(move |g, _| {
        l2.lock().unwrap().push("times_three");
        Some(g * 3.0)
    });
    let scope = model.registry.scope();
    scope.add(&HookSpec::backward("hook_out", add_one)).unwrap();
    scope
        .prepend(&HookSpec::backward("hook_out", times_three))
        .unwrap();
    let (seen, rec) = recorder();
    scope.add(&HookSpec::backward("hook_out", rec)).unwrap();
    backward(&sum(&model.forward(&x).unwrap())).unwrap();
    assert_eq!(*log.lock().unwrap(), vec!["times_three", "add_one"]);
    // Upstream gradient is 1: prepended x3 first, then +1 => 4 everywhere.
    let g = &seen.lock().unwrap()[0].1;
    assert!(max_abs_diff(g, &g.ones_like().fill_(4.0)) < 1e-6);
}

#[test]
fn forward_hooks_run_in_order_and_prepend_goes_first() {
    let model = TinyModel::new(Device::Cpu);
    let x = input(Device::Cpu);
    let add_one = Hook::new(|t, _| Some(t + 1.0));
    let double = Hook::new(|t, _| Some(t * 2.0));
    let (seen, rec) = recorder();
    let h1 = model
        .registry
        .add_hook(&HookSpec::forward("hook_in", add_one))
        .unwrap();
    let h2 = model
        .registry
        .add_with(
            &HookSpec::forward("hook_in", double),
            AddOptions {
                prepend: true,
                scope: None,
            },
        )
        .unwrap();
    let h3 = model
        .registry
        .add_hook(&HookSpec::forward("hook_in", rec))
        .unwrap();
    let _ = model.forward(&x).unwrap();
    // double first, then add one: 2x + 1.
    assert!(max_abs_diff(&seen.lock().unwrap()[0].1, &(&x * 2.0 + 1.0)) < 1e-6);
    drop((h1, h2, h3));
    assert_eq!(model.registry.hook_count(), 0);
}

#[test]
fn handles_remove_on_drop_keep_and_permanent() {
    let model = TinyModel::new(Device::Cpu);
    let noop = Hook::new(|_, _| None);
    let spec = HookSpec::forward("hook_out", noop);
    {
        let _handles = model.registry.add_hook(&spec).unwrap();
        assert_eq!(model.registry.hook_count(), 1);
    }
    assert_eq!(
        model.registry.hook_count(),
        0,
        "dropping the handle removes the hook"
    );

    model
        .registry
        .add_hook(&spec)
        .unwrap()
        .into_iter()
        .for_each(|h| h.keep());
    for handle in model.registry.add_hook(&spec).unwrap() {
        handle.make_permanent();
    }
    assert_eq!(model.registry.hook_count(), 2);
    assert_eq!(
        model.registry.reset_hooks(false),
        1,
        "reset removes the kept hook only"
    );
    assert_eq!(
        model.registry.hook_count(),
        1,
        "the permanent hook survives reset_hooks"
    );
    assert_eq!(model.registry.reset_hooks(true), 1);
    assert_eq!(model.registry.hook_count(), 0);

    let handle = model.registry.add_hook(&spec).unwrap().pop().unwrap();
    assert!(handle.remove());
}

#[test]
fn nested_scopes_unwind_independently() {
    let model = TinyModel::new(Device::Cpu);
    let noop = Hook::new(|_, _| None);
    let outer = model.registry.scope();
    outer
        .add(&HookSpec::forward("hook_in", noop.clone()))
        .unwrap();
    {
        let inner = model.registry.scope();
        inner
            .add(&HookSpec::forward("hook_in", noop.clone()))
            .unwrap();
        inner
            .add(&HookSpec::backward("hook_out", noop.clone()))
            .unwrap();
        assert_eq!(model.registry.hook_count(), 3);
    }
    assert_eq!(
        model.registry.hook_count(),
        1,
        "the inner scope removed only its own hooks"
    );
    let point = model.registry.get("hook_in").unwrap();
    assert_eq!(point.hook_count(Direction::Forward), 1);
    drop(outer);
    assert_eq!(model.registry.hook_count(), 0);
}

#[test]
fn a_panicking_forward_hook_is_an_error_and_leaves_no_hook() {
    let model = TinyModel::new(Device::Cpu);
    let x = input(Device::Cpu);
    let boom = Hook::new(|_, _| panic!("forward boom"));
    let error = model
        .registry
        .with_hooks(&[HookSpec::forward("hidden.hook_post", boom)], || {
            model.forward(&x)
        })
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&error, HookError::HookPanicked { hook, direction: Direction::Forward, message }
        if hook == "hidden.hook_post" && message == "forward boom")
    );
    assert_eq!(model.registry.hook_count(), 0);
}

#[rstest]
#[case::cpu(Device::Cpu)]
#[ignore = "needs a CUDA device"]
#[case::cuda(Device::Cuda(0))]
fn a_panicking_backward_hook_is_reported_after_backward(#[case] device: Device) {
    require_device(device);
    let model = TinyModel::new(device);
    let x = input(device);
    let boom = Hook::new(|_, _| panic!("backward boom"));
    let error = model
        .registry
        .with_hooks(&[HookSpec::backward("hidden.hook_pre", boom)], || {
            backward(&sum(&model.forward(&x)?))
        })
        .unwrap()
        .unwrap_err();
    match &error {
        HookError::HookPanicked {
            hook,
            direction,
            message,
        } => {
            assert_eq!(hook, "hidden.hook_pre");
            assert_eq!(*direction, Direction::Backward);
            assert_eq!(message, "backward boom");
        }
        other => panic!("expected HookPanicked, got {other:?}"),
    }
    assert_eq!(model.registry.hook_count(), 0);
    // The model still works afterwards.
    backward(&sum(&model.forward(&x).unwrap())).unwrap();
}

#[test]
fn a_wrong_shape_gradient_is_an_error() {
    let model = TinyModel::new(Device::Cpu);
    let x = input(Device::Cpu);
    let bad = Hook::new(|g, _| Some(g.sum(Kind::Float)));
    let error = model
        .registry
        .with_hooks(&[HookSpec::backward("hook_out", bad)], || {
            backward(&sum(&model.forward(&x)?))
        })
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&error, HookError::ShapeMismatch { hook, expected, actual }
        if hook == "hook_out" && expected == &vec![2, 2] && actual.is_empty())
    );
}

#[test]
fn a_panicking_scope_body_leaves_no_hook() {
    let model = TinyModel::new(Device::Cpu);
    let noop = Hook::new(|_, _| None);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        model
            .registry
            .with_hooks(&[HookSpec::forward("hook_in", noop)], || {
                panic!("body boom")
            })
    }));
    assert!(outcome.is_err());
    assert_eq!(model.registry.hook_count(), 0);
}

#[test]
fn unknown_names_are_errors_with_suggestions() {
    let model = TinyModel::new(Device::Cpu);
    let noop = Hook::new(|_, _| None);
    let error = model
        .registry
        .add_hook(&HookSpec::forward("hidden.hook_psot", noop.clone()))
        .unwrap_err();
    match &error {
        HookError::UnknownHook { name, suggestions } => {
            assert_eq!(name, "hidden.hook_psot");
            assert_eq!(
                suggestions.first().map(String::as_str),
                Some("hidden.hook_post")
            );
        }
        other => panic!("expected UnknownHook, got {other:?}"),
    }
    assert!(error.to_string().contains("did you mean hidden.hook_post"));
    // A list with one unknown name adds nothing at all.
    let names = NamesFilter::from(["hook_in", "hook_nope"]);
    assert!(model
        .registry
        .add_hook(&HookSpec::forward(names, noop.clone()))
        .is_err());
    assert_eq!(model.registry.hook_count(), 0);
    let scoped = model
        .registry
        .with_hooks(&[HookSpec::forward("nope", noop)], || ());
    assert!(matches!(scoped, Err(HookError::UnknownHook { .. })));
}

#[test]
fn gated_hook_points_name_their_option() {
    let model = TinyModel::new(Device::Cpu);
    let noop = Hook::new(|_, _| None);
    let error = model
        .registry
        .add_hook(&HookSpec::forward("hidden.hook_gated", noop))
        .unwrap_err();
    assert!(matches!(&error, HookError::FlagNotEnabled { hook, flag }
        if hook == "hidden.hook_gated" && flag == "use_gated_hook"));
}

#[test]
fn aliases_reach_the_point_and_tell_the_hook_the_alias() {
    let model = TinyModel::new(Device::Cpu);
    let x = input(Device::Cpu);
    let (seen, rec) = recorder();
    let _ = model
        .registry
        .with_hooks(&[HookSpec::forward("hook_hidden", rec)], || {
            model.forward(&x)
        })
        .unwrap()
        .unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "hook_hidden");
    assert_eq!(
        model.registry.canonical_name("hook_hidden").unwrap(),
        "hidden.hook_post"
    );
}

#[test]
fn predicate_filters_select_each_point_once() {
    let model = TinyModel::new(Device::Cpu);
    let everything_hidden = NamesFilter::predicate(|name| name.contains("hidden"));
    let selected = model.registry.select(&everything_hidden).unwrap();
    let names: Vec<&str> = selected.iter().map(|s| s.point.name()).collect();
    assert_eq!(
        names,
        vec!["hidden.hook_pre", "hidden.hook_post", "hidden.hook_gated"]
    );
}

#[test]
fn an_unhooked_point_passes_the_tensor_through_untouched() {
    let model = TinyModel::new(Device::Cpu);
    let point = model.registry.get("hook_in").unwrap();
    let x = input(Device::Cpu).set_requires_grad(true);
    let y = point.run(x.shallow_clone()).unwrap();
    assert_eq!(x.data_ptr(), y.data_ptr());
    assert!(
        y.is_leaf(),
        "no autograd node is added when no hook is attached"
    );
}

#[test]
fn run_noting_edits_tells_reads_from_edits() {
    let point = hookpoint::HookPoint::new("probe");
    let x = || Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    let passed = |hook: Option<(Direction, Hook)>| {
        let _handle =
            hook.map(|(direction, hook)| point.add_hook(direction, hook, AddOptions::default()));
        let input = x().set_requires_grad(true);
        let out = point.run_noting_edits(input.shallow_clone()).unwrap();
        (out.untouched, out.activation)
    };
    let read = |direction| Some((direction, Hook::new(|_, _| None)));

    // No hook, a hook that only reads, a hook that returns its input (or a view of all of it).
    assert!(passed(None).0);
    assert!(passed(read(Direction::Forward)).0);
    assert!(
        passed(Some((
            Direction::Forward,
            Hook::new(|t, _| Some(t.shallow_clone()))
        )))
        .0
    );
    assert!(
        passed(Some((
            Direction::Forward,
            Hook::new(|t, _| Some(t.view([3])))
        )))
        .0
    );

    // A replacement with other values, even equal ones, is an edit; so is a changed kind.
    let (untouched, out) = passed(Some((Direction::Forward, Hook::new(|t, _| Some(t * 2.0)))));
    assert!(!untouched);
    assert_eq!(out, x() * 2.0);
    assert!(!passed(Some((Direction::Forward, Hook::new(|t, _| Some(t.copy()))))).0);
    assert!(
        !passed(Some((
            Direction::Forward,
            Hook::new(|t, _| Some(t.to_kind(Kind::Double)))
        )))
        .0
    );

    // An in-place change without a replacement is an edit (seen through the version counter).
    let in_place = Hook::new(|t, _| {
        let _ = tch::no_grad(|| t.shallow_clone().g_mul_scalar_(3.0));
        None
    });
    let input = x().set_requires_grad(true);
    let handle = point.add_hook(Direction::Forward, in_place, AddOptions::default());
    let out = tch::no_grad(|| point.run_noting_edits(input.detach()).unwrap());
    drop(handle);
    assert!(!out.untouched);
    assert_eq!(out.activation, x() * 3.0);

    // A backward hook needs the returned tensor in the graph: not untouched.
    assert!(!passed(read(Direction::Backward)).0);
}
