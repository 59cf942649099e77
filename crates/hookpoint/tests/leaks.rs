//! Registering and removing hooks many times leaves nothing behind: neither hook entries nor
//! native callbacks. In its own test binary, so the process-wide live count is ours alone.

#[path = "it/common/mod.rs"]
mod common;

use common::{input, sum, TinyModel};
use hookpoint::{backward, live_backward_hooks, Hook, HookSpec};
use tch::Device;

#[test]
fn ten_thousand_register_remove_cycles_leave_nothing_behind() {
    let model = TinyModel::new(Device::Cpu);
    let x = input(Device::Cpu);
    let baseline = live_backward_hooks();
    let noop = Hook::new(|_, _| None);
    for _ in 0..10_000 {
        let forward = model
            .registry
            .add_hook(&HookSpec::forward("hidden.hook_pre", noop.clone()))
            .unwrap();
        let backward_hook = model
            .registry
            .add_hook(&HookSpec::backward("hidden.hook_post", noop.clone()))
            .unwrap();
        assert_eq!(model.registry.hook_count(), 2);
        drop((forward, backward_hook));
    }
    assert_eq!(model.registry.hook_count(), 0);
    // Now with the native hooks really registered on graphs, run forward and backward.
    for _ in 0..2_000 {
        model
            .registry
            .with_hooks(
                &[HookSpec::backward("hidden.hook_post", noop.clone())],
                || backward(&sum(&model.forward(&x)?)),
            )
            .unwrap()
            .unwrap();
    }
    assert_eq!(model.registry.hook_count(), 0);
    assert_eq!(
        live_backward_hooks(),
        baseline,
        "native callbacks were released with their graphs"
    );
    // A graph that is never run backward releases its callbacks when it is dropped.
    let out = model
        .registry
        .with_hooks(&[HookSpec::backward("hook_out", noop)], || {
            model.forward(&x)
        })
        .unwrap()
        .unwrap();
    assert_eq!(live_backward_hooks(), baseline + 1);
    drop(out);
    assert_eq!(live_backward_hooks(), baseline);
}
