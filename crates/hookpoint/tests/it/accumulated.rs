//! Accumulated-gradient hooks on leaves: called once per leaf and pass with the whole gradient
//! (every use of a tied leaf summed), able to free it, removed afterwards, panics reported.

use hookpoint::{clear_grad, with_accumulated_gradient_hooks, Direction, HookError};
use tch::{Kind, Tensor};

fn leaf(values: &[f32]) -> Tensor {
    Tensor::from_slice(values).set_requires_grad(true)
}

#[test]
fn each_leaf_is_seen_once_with_its_summed_gradient_and_can_be_freed() {
    let (a, b) = (leaf(&[1.0, 2.0]), leaf(&[3.0]));
    let x = Tensor::from_slice(&[5.0f32, 7.0]);
    // `a` is used twice (a tied weight): its gradient is x + 2 a.
    let loss = (&a * &x).sum(Kind::Float) + (&a * &a).sum(Kind::Float) + &b * 4.0;
    let mut seen: Vec<(usize, Vec<f32>)> = Vec::new();
    let mut on_gradient = |index: usize, leaf: &Tensor| {
        seen.push((index, Vec::<f32>::try_from(leaf.grad()).unwrap()));
        clear_grad(leaf).unwrap();
    };
    let leaves = [a.shallow_clone(), b.shallow_clone()];
    with_accumulated_gradient_hooks(&leaves, &mut on_gradient, || {
        loss.sum(Kind::Float).backward()
    })
    .unwrap();
    seen.sort_by_key(|(index, _)| *index);
    assert_eq!(seen, vec![(0, vec![7.0, 11.0]), (1, vec![4.0])]);
    // Freed by the hook; and the hooks are gone: a second pass only accumulates.
    assert!(!a.grad().defined() && !b.grad().defined());
    (&a * 3.0).sum(Kind::Float).backward();
    assert_eq!(Vec::<f32>::try_from(a.grad()).unwrap(), vec![3.0, 3.0]);
}

#[test]
fn a_panicking_hook_is_reported_and_removed() {
    let a = leaf(&[1.0]);
    let mut calls = 0;
    let mut on_gradient = |_: usize, _: &Tensor| {
        calls += 1;
        panic!("no gradient wanted");
    };
    let result = with_accumulated_gradient_hooks(&[a.shallow_clone()], &mut on_gradient, || {
        (&a * 2.0).sum(Kind::Float).backward()
    });
    match result {
        Err(HookError::HookPanicked {
            direction, message, ..
        }) => {
            assert_eq!(direction, Direction::Backward);
            assert!(message.contains("no gradient wanted"), "{message}");
        }
        other => panic!("expected a panic report, got {other:?}"),
    }
    assert_eq!(calls, 1);
    // The accumulation itself happened, and no hook is left behind.
    assert_eq!(Vec::<f32>::try_from(a.grad()).unwrap(), vec![2.0]);
    (&a * 2.0).sum(Kind::Float).backward();
    assert_eq!(Vec::<f32>::try_from(a.grad()).unwrap(), vec![4.0]);
}
