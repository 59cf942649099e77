//! `tl-bench`: the command-line entry point of the benchmark suite.
//!
//! The suite itself is not written yet; until it is, this reports what is ready: the libtorch
//! it runs on and whether the native backward hooks work on each available device.

use std::process::ExitCode;

use hookpoint::{backward, Hook, HookRegistry, HookSpec};
use tch::{Device, Kind, Tensor};

/// Doubles the gradient at a hook point and checks that the doubled value reaches the leaf.
fn backward_hooks_work(device: Device) -> Result<(), String> {
    let mut registry = HookRegistry::new();
    let point = registry.register("probe.hook_out");
    let leaf = Tensor::ones([3], (Kind::Float, device)).set_requires_grad(true);
    let doubled = Hook::new(|gradient, _| Some(gradient * 2.0));
    let outcome = registry.with_hooks(&[HookSpec::backward("probe.hook_out", doubled)], || {
        let out = point.run(&leaf * 3.0)?;
        backward(&out.sum(Kind::Float))
    });
    outcome.and_then(|r| r).map_err(|e| e.to_string())?;
    let grad = leaf.grad().sum(Kind::Float).double_value(&[]);
    if (grad - 18.0).abs() < 1e-6 {
        Ok(())
    } else {
        Err(format!("expected gradient sum 18, got {grad}"))
    }
}

fn main() -> ExitCode {
    println!("transformer-lens-rs: the benchmark suite is not implemented yet.");
    println!("Ready: the hookpoint crate (forward hooks, native backward hooks, scopes, activation cache).");
    let mut devices = vec![Device::Cpu];
    if tch::Cuda::is_available() {
        devices.push(Device::Cuda(0));
    } else {
        println!("CUDA: not available on this machine (CPU only).");
    }
    let mut ok = true;
    for device in devices {
        match backward_hooks_work(device) {
            Ok(()) => println!("native backward hooks on {device:?}: working"),
            Err(error) => {
                ok = false;
                println!("native backward hooks on {device:?}: FAILED: {error}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
