//! A small model built for the tests: x -> hook_in -> (x W1) -> hidden.hook_pre -> relu ->
//! hidden.hook_post -> (h W2) -> hook_out, with known weights so every number can be checked.

#![allow(dead_code)]

use std::sync::Arc;

use hookpoint::{HookError, HookPoint, HookRegistry};
use tch::{Device, Kind, Tensor};

pub struct TinyModel {
    pub registry: HookRegistry,
    pub w1: Tensor,
    pub w2: Tensor,
    hook_in: Arc<HookPoint>,
    hook_pre: Arc<HookPoint>,
    hook_post: Arc<HookPoint>,
    hook_out: Arc<HookPoint>,
}

pub const HOOK_NAMES: [&str; 4] = ["hook_in", "hidden.hook_pre", "hidden.hook_post", "hook_out"];

impl TinyModel {
    /// W1 [3, 4] and W2 [4, 2] with fixed values; both require grad.
    pub fn new(device: Device) -> Self {
        let mut registry = HookRegistry::new();
        let hook_in = registry.register("hook_in");
        let hook_pre = registry.register("hidden.hook_pre");
        let hook_post = registry.register("hidden.hook_post");
        let hook_out = registry.register("hook_out");
        registry.register("hidden.hook_gated");
        registry
            .set_gate("hidden.hook_gated", "use_gated_hook", false)
            .unwrap();
        registry
            .add_alias("hook_hidden", "hidden.hook_post")
            .unwrap();
        let w1 = Tensor::from_slice(&[
            0.5f32, -1.0, 2.0, 0.25, 1.5, 0.5, -0.5, 1.0, -2.0, 1.0, 0.75, -0.25,
        ])
        .reshape([3, 4])
        .to_device(device)
        .set_requires_grad(true);
        let w2 = Tensor::from_slice(&[1.0f32, -1.0, 0.5, 2.0, -1.5, 0.25, 2.0, 1.0])
            .reshape([4, 2])
            .to_device(device)
            .set_requires_grad(true);
        TinyModel {
            registry,
            w1,
            w2,
            hook_in,
            hook_pre,
            hook_post,
            hook_out,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor, HookError> {
        let x = self.hook_in.run(x.shallow_clone())?;
        let pre = self.hook_pre.run(x.matmul(&self.w1))?;
        let post = self.hook_post.run(pre.relu())?;
        self.hook_out.run(post.matmul(&self.w2))
    }

    /// The same computation with no hook points at all.
    pub fn plain_forward(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.w1).relu().matmul(&self.w2)
    }
}

/// Input [2, 3]: batch of two.
pub fn input(device: Device) -> Tensor {
    Tensor::from_slice(&[1.0f32, 2.0, -1.0, 0.5, -0.5, 3.0])
        .reshape([2, 3])
        .to_device(device)
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_device(Device::Cpu) - b.to_device(Device::Cpu))
        .abs()
        .max()
        .double_value(&[])
}

pub fn sum(t: &Tensor) -> Tensor {
    t.sum(Kind::Float)
}

/// Fails the test when `device` is not on this machine. The CUDA cases of the tests are
/// `#[ignore = "needs a CUDA device"]`, so they run only when asked for (`cargo xtask test` asks
/// on a machine with a GPU, or with `TLRS_REQUIRE_CUDA=1`); asked for without a device, they
/// fail rather than pass without checking anything.
pub fn require_device(device: Device) {
    if let Device::Cuda(_) = device {
        assert!(
            tch::Cuda::is_available(),
            "this CUDA test was asked for, but no CUDA device is available"
        );
    }
}
