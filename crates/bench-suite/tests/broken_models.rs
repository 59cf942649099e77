//! Every benchmark fails on a deliberately broken model (and passes on the intact one), so no
//! check is one that cannot fail.

use bench_suite::benchmarks::{
    backward, cache, forward, generation, hooks, weights, GradientTarget, Inputs,
};
use bench_suite::BenchmarkResult;
use bridge::{CompatibilityOptions, HfForward, TransformerBridge};
use hooked_ref::{HookedTransformer, ProcessingOptions};
use hookpoint::{Hook, HookRegistry, HookSpec};
use lens_core::generation::generate_with;
use lens_core::model::{
    ForwardOptions, ForwardOutput, GenerateOptions, LensModel, ModelDims, ModelResult,
};
use lens_core::{Tokenizer, DEFAULT_MODEL};
use tch::{Device, Kind, Tensor};

const TOL: f64 = 1e-5;

fn bridge() -> TransformerBridge {
    TransformerBridge::boot(DEFAULT_MODEL, Device::Cpu, Kind::Float).unwrap()
}

fn reference() -> HookedTransformer {
    HookedTransformer::from_pretrained_no_processing(DEFAULT_MODEL, &Default::default()).unwrap()
}

fn inputs(model: &TransformerBridge) -> Inputs {
    let tokens = |t: &str| model.to_tokens(&[t], None, None).unwrap().ids;
    Inputs {
        text: "When Mary and John went to the store, John gave a drink to".into(),
        tokens: tokens("When Mary and John went to the store, John gave a drink to"),
        prompts: ["The quick brown fox", "Hello world", "Machine learning is"]
            .iter()
            .map(|p| tokens(p))
            .collect(),
    }
}

/// Asserts the benchmark passes on the intact model and fails on the broken one.
fn fails_only_when_broken(name: &str, intact: BenchmarkResult, broken: BenchmarkResult) {
    assert!(
        intact.passed && intact.ran(),
        "{name} should pass on the intact model:\n{intact}"
    );
    assert!(
        !broken.passed,
        "{name} should fail on the broken model:\n{broken}"
    );
    assert_eq!(broken.name, intact.name);
}

/// Adds `delta` to the first feature of an activation, permanently (not to every feature: a
/// shift shared by all of d_model is exactly what the next LayerNorm removes).
fn perturb_activation(model: &dyn LensModel, hook: &str, delta: f64) {
    let bump = move |t: &Tensor| {
        let out = t.copy();
        let _ = out.narrow(-1, 0, 1).g_add_scalar_(delta);
        out
    };
    let spec = HookSpec::forward(hook, Hook::new(move |t, _| Some(bump(t))));
    model
        .hooks()
        .add_hook(&spec)
        .unwrap()
        .into_iter()
        .for_each(|h| h.make_permanent());
}

/// Scales the gradient at a hook, permanently.
fn perturb_gradient(model: &dyn LensModel, hook: &str, factor: f64) {
    let spec = HookSpec::backward(hook, Hook::new(move |g, _| Some(g * factor)));
    model
        .hooks()
        .add_hook(&spec)
        .unwrap()
        .into_iter()
        .for_each(|h| h.make_permanent());
}

/// A defect a wrapper gives a working model.
#[derive(Clone, Copy, PartialEq)]
enum Defect {
    /// forward ignores the hooks (runs the raw HF model).
    IgnoresHooks,
    /// An extra registered hook point that never fires.
    SilentHook,
    /// Setting a gating option does nothing.
    FlagsIgnored,
    /// Generation returns one token fewer than asked.
    GeneratesShort,
    /// The KV-cache path drops the first position.
    KvCacheDropsPosition,
    /// Generation ignores the attention mask.
    IgnoresMask,
    /// The TL weight views are copies: writing to them does not reach the model.
    WeightsAreCopies,
    /// Declares every weight a constant, so that none would need a gradient.
    ClaimsConstants,
}

struct Broken {
    inner: TransformerBridge,
    registry: HookRegistry,
    defect: Defect,
}

impl Broken {
    fn new(inner: TransformerBridge, defect: Defect) -> Self {
        let mut registry = inner.hooks().clone();
        if defect == Defect::SilentHook {
            registry.register("blocks.0.hook_never_fires");
        }
        Broken {
            inner,
            registry,
            defect,
        }
    }
}

impl LensModel for Broken {
    fn model_name(&self) -> &str {
        "broken bridge"
    }
    fn dims(&self) -> ModelDims {
        self.inner.dims()
    }
    fn device(&self) -> Device {
        LensModel::device(&self.inner)
    }
    fn kind(&self) -> Kind {
        LensModel::kind(&self.inner)
    }
    fn hooks(&self) -> &HookRegistry {
        &self.registry
    }
    fn tokenizer(&self) -> Option<&Tokenizer> {
        LensModel::tokenizer(&self.inner)
    }
    fn forward(&self, tokens: &Tensor, options: &ForwardOptions) -> ModelResult<ForwardOutput> {
        if self.defect != Defect::IgnoresHooks {
            return LensModel::forward(&self.inner, tokens, options);
        }
        let logits = self
            .inner
            .hf_model()
            .forward(HfForward {
                input_ids: Some(tokens),
                ..HfForward::default()
            })?
            .logits;
        let with_loss = LensModel::forward(&self.inner, tokens, options)?;
        Ok(ForwardOutput {
            logits: Some(logits),
            loss: with_loss.loss.map(|_| hf_loss(&self.inner, tokens)),
            residual: None,
        })
    }
    fn generate(
        &self,
        tokens: &Tensor,
        mask: Option<&Tensor>,
        options: &GenerateOptions,
    ) -> ModelResult<Tensor> {
        match self.defect {
            Defect::GeneratesShort => {
                let out = LensModel::generate(&self.inner, tokens, mask, options)?;
                Ok(out.narrow(1, 0, out.size()[1] - 1))
            }
            Defect::IgnoresMask => LensModel::generate(&self.inner, tokens, None, options),
            Defect::KvCacheDropsPosition if options.use_past_kv_cache => {
                generate_with(tokens, mask, options, 50256, |all, _, _| {
                    let dropped = all.narrow(1, 1, all.size()[1] - 1);
                    Ok(
                        LensModel::forward(&self.inner, &dropped, &ForwardOptions::default())?
                            .logits()?
                            .select(1, -1),
                    )
                })
            }
            _ => LensModel::generate(&self.inner, tokens, mask, options),
        }
    }
    fn tl_weight(&self, name: &str) -> ModelResult<Tensor> {
        let view = self.inner.tl_weight(name)?;
        Ok(if self.defect == Defect::WeightsAreCopies {
            view.copy()
        } else {
            view
        })
    }
    fn tl_weight_names(&self) -> Vec<String> {
        self.inner.tl_weight_names()
    }
    fn tl_weight_grad(&self, name: &str) -> ModelResult<Option<Tensor>> {
        self.inner.tl_weight_grad(name)
    }
    fn tl_weight_is_constant(&self, name: &str) -> bool {
        self.defect == Defect::ClaimsConstants || self.inner.tl_weight_is_constant(name)
    }
    fn zero_grad(&self) {
        self.inner.zero_grad()
    }
    fn hook_flags(&self) -> Vec<(&'static str, bool)> {
        self.inner.hook_flags()
    }
    fn set_hook_flag(&mut self, flag: &str, enabled: bool) -> ModelResult<()> {
        if self.defect == Defect::FlagsIgnored {
            return Ok(());
        }
        self.inner.set_hook_flag(flag, enabled)?;
        self.registry = self.inner.hooks().clone();
        Ok(())
    }
}

fn hf_loss(model: &TransformerBridge, tokens: &Tensor) -> Tensor {
    let out = model
        .hf_model()
        .forward(HfForward {
            input_ids: Some(tokens),
            labels: Some(tokens),
            ..HfForward::default()
        })
        .unwrap();
    out.loss.unwrap()
}

/// The forward checks (logits against the raw HF model's and the reference's, the loss, every
/// hook, the critical hooks) pass on `intact` and fail on `broken`.
fn forward_checks_fail_only_when_broken(
    intact: &TransformerBridge,
    broken: &dyn LensModel,
    reference: &HookedTransformer,
    inputs: &Inputs,
) {
    let hf_logits = tch::no_grad(|| {
        intact
            .hf_model()
            .forward(HfForward {
                input_ids: Some(&inputs.tokens),
                ..HfForward::default()
            })
            .unwrap()
            .logits
    });
    fails_only_when_broken(
        "forward_pass",
        forward::forward_pass(intact, inputs, &hf_logits, TOL),
        forward::forward_pass(broken, inputs, &hf_logits, TOL),
    );
    fails_only_when_broken(
        "logits_equivalence",
        forward::logits_equivalence(intact, reference, inputs, TOL),
        forward::logits_equivalence(broken, reference, inputs, TOL),
    );
    fails_only_when_broken(
        "loss_equivalence",
        forward::loss_equivalence(intact, reference, inputs, TOL),
        forward::loss_equivalence(broken, reference, inputs, TOL),
    );
    fails_only_when_broken(
        "forward_hooks",
        hooks::forward_hooks(intact, reference, inputs, TOL),
        hooks::forward_hooks(broken, reference, inputs, TOL),
    );
    fails_only_when_broken(
        "critical_forward_hooks",
        hooks::critical_forward_hooks(intact, reference, inputs, TOL),
        hooks::critical_forward_hooks(broken, reference, inputs, TOL),
    );
}

#[test]
fn forward_benchmarks_fail_on_a_perturbed_activation() {
    let (intact, reference) = (bridge(), reference());
    let inputs = inputs(&intact);
    let broken = bridge();
    perturb_activation(&broken, "blocks.0.hook_resid_mid", 0.5);
    forward_checks_fail_only_when_broken(&intact, &broken, &reference, &inputs);
    // The suite's way: both from one recording per model.
    let shared = |model| hooks::critical_and_all_forward_hooks(model, &reference, &inputs, TOL);
    let ([intact_critical, intact_all], [broken_critical, broken_all]) =
        (shared(&intact), shared(&broken));
    assert_eq!(intact_critical.name, "critical_forward_hooks");
    assert_eq!(intact_all.name, "forward_hooks");
    fails_only_when_broken("critical_forward_hooks", intact_critical, broken_critical);
    fails_only_when_broken("forward_hooks", intact_all, broken_all);
    fails_only_when_broken(
        "activation_cache",
        cache::activation_cache(&intact, &reference, &inputs, TOL),
        cache::activation_cache(&broken, &reference, &inputs, TOL),
    );
}

#[test]
fn backward_benchmarks_fail_on_a_perturbed_gradient() {
    let (intact, reference) = (bridge(), reference());
    let inputs = inputs(&intact);
    let broken = bridge();
    perturb_gradient(&broken, "blocks.0.hook_resid_post", 1.001);
    let t = GradientTarget::SumLastLogits;
    fails_only_when_broken(
        "backward_hooks",
        backward::backward_hooks(&intact, &reference, &inputs, t, TOL),
        backward::backward_hooks(&broken, &reference, &inputs, t, TOL),
    );
    fails_only_when_broken(
        "critical_backward_hooks",
        backward::critical_backward_hooks(&intact, &reference, &inputs, t, TOL),
        backward::critical_backward_hooks(&broken, &reference, &inputs, t, TOL),
    );
    fails_only_when_broken(
        "gradient_computation",
        backward::gradient_computation(&intact, Some(&reference), &inputs, t, TOL),
        backward::gradient_computation(&broken, Some(&reference), &inputs, t, TOL),
    );
    // The suite's way: both hook-gradient benchmarks from one recording per model.
    let shared =
        |model| backward::critical_and_all_backward_hooks(model, &reference, &inputs, t, TOL);
    let ([intact_critical, intact_all], [broken_critical, broken_all]) =
        (shared(&intact), shared(&broken));
    assert_eq!(intact_critical.name, "critical_backward_hooks");
    assert_eq!(intact_all.name, "backward_hooks");
    fails_only_when_broken("critical_backward_hooks", intact_critical, broken_critical);
    fails_only_when_broken("backward_hooks", intact_all, broken_all);
}

#[test]
fn gradient_computation_fails_when_real_weights_are_declared_constant() {
    let (intact, reference) = (bridge(), reference());
    let inputs = inputs(&intact);
    let broken = Broken::new(bridge(), Defect::ClaimsConstants);
    let t = GradientTarget::SumLastLogits;
    fails_only_when_broken(
        "gradient_computation",
        backward::gradient_computation(&intact, Some(&reference), &inputs, t, TOL),
        backward::gradient_computation(&broken, Some(&reference), &inputs, t, TOL),
    );
}

#[test]
fn a_layer_norm_scale_gradient_off_by_one_percent_fails_despite_its_conditioning() {
    let (intact, reference) = (bridge(), reference());
    let inputs = inputs(&intact);
    let broken = bridge();
    perturb_gradient(&broken, "blocks.1.ln2.hook_scale", 1.01);
    let t = GradientTarget::SumLastLogits;
    let result = backward::backward_hooks(&broken, &reference, &inputs, t, TOL);
    fails_only_when_broken(
        "backward_hooks",
        backward::backward_hooks(&intact, &reference, &inputs, t, TOL),
        result.clone(),
    );
    assert!(
        result.to_string().contains("blocks.1.ln2.hook_scale_grad"),
        "{result}"
    );
}

#[test]
fn hook_benchmarks_fail_on_broken_hooks() {
    let (intact, reference) = (bridge(), reference());
    let inputs = inputs(&intact);
    let ignores = Broken::new(bridge(), Defect::IgnoresHooks);
    fails_only_when_broken(
        "hook_functionality",
        hooks::hook_functionality(&intact, Some(&reference), &inputs, TOL),
        hooks::hook_functionality(&ignores, Some(&reference), &inputs, TOL),
    );
    let silent = Broken::new(bridge(), Defect::SilentHook);
    fails_only_when_broken(
        "forward_hooks (never fired)",
        hooks::forward_hooks(&intact, &reference, &inputs, TOL),
        hooks::forward_hooks(&silent, &reference, &inputs, TOL),
    );
    fails_only_when_broken(
        "run_with_cache",
        cache::run_with_cache(&intact, Some(&reference), &inputs),
        cache::run_with_cache(&silent, Some(&reference), &inputs),
    );
    // The reference has a hook name the bridge lacks.
    fails_only_when_broken(
        "hook_registry",
        hooks::hook_registry(&intact, &reference),
        hooks::hook_registry(&intact, &silent),
    );
    let mut intact_mut = bridge();
    let mut flags_ignored = Broken::new(bridge(), Defect::FlagsIgnored);
    fails_only_when_broken(
        "gated_hooks_fire",
        hooks::gated_hooks_fire(&mut intact_mut, &inputs),
        hooks::gated_hooks_fire(&mut flags_ignored, &inputs),
    );
}

#[test]
fn generation_benchmarks_fail_on_broken_generation() {
    let (intact, reference) = (bridge(), reference());
    let inputs = inputs(&intact);
    let short = Broken::new(bridge(), Defect::GeneratesShort);
    fails_only_when_broken(
        "generation",
        generation::generation(&intact, Some(&reference), &inputs, TOL),
        generation::generation(&short, Some(&reference), &inputs, TOL),
    );
    let kv = Broken::new(bridge(), Defect::KvCacheDropsPosition);
    fails_only_when_broken(
        "generation_with_kv_cache",
        generation::generation_with_kv_cache(&intact, &inputs),
        generation::generation_with_kv_cache(&kv, &inputs),
    );
    let unmasked = Broken::new(bridge(), Defect::IgnoresMask);
    fails_only_when_broken(
        "multiple_generation_calls",
        generation::multiple_generation_calls(&intact, &inputs),
        generation::multiple_generation_calls(&unmasked, &inputs),
    );
}

fn processed(options: CompatibilityOptions) -> TransformerBridge {
    let mut model = bridge();
    model.enable_compatibility_mode(options).unwrap();
    model
}

#[test]
fn weight_processing_benchmarks_fail_when_a_step_is_skipped() {
    let intact = processed(CompatibilityOptions::default());
    let mut reference = reference();
    reference
        .process_weights(ProcessingOptions::default())
        .unwrap();
    let skip = |f: fn(&mut CompatibilityOptions)| {
        let mut options = CompatibilityOptions::default();
        f(&mut options);
        processed(options)
    };
    let no_fold_ln = skip(|o| o.fold_ln = false);
    fails_only_when_broken(
        "layer_norm_folding",
        weights::layer_norm_folding(&intact),
        weights::layer_norm_folding(&no_fold_ln),
    );
    let no_centering = skip(|o| o.center_writing_weights = false);
    fails_only_when_broken(
        "attention_output_centering",
        weights::attention_output_centering(&intact, TOL),
        weights::attention_output_centering(&no_centering, TOL),
    );
    fails_only_when_broken(
        "mlp_output_centering",
        weights::mlp_output_centering(&intact, TOL),
        weights::mlp_output_centering(&no_centering, TOL),
    );
    let no_unembed = skip(|o| o.center_unembed = false);
    fails_only_when_broken(
        "unembed_centering",
        weights::unembed_centering(&intact, TOL),
        weights::unembed_centering(&no_unembed, TOL),
    );
    let no_value_bias = skip(|o| o.fold_value_biases = false);
    fails_only_when_broken(
        "value_bias_folding",
        weights::value_bias_folding(&intact),
        weights::value_bias_folding(&no_value_bias),
    );
    fails_only_when_broken(
        "weight_processing",
        weights::weight_processing(&intact, &reference, TOL),
        weights::weight_processing(&no_value_bias, &reference, TOL),
    );
}

#[test]
fn weight_benchmarks_fail_on_broken_weights() {
    let (intact, reference) = (bridge(), reference());
    let inputs = inputs(&intact);
    let with_nan = bridge();
    let _ = tch::no_grad(|| {
        with_nan
            .tl_weight("blocks.1.mlp.W_in")
            .unwrap()
            .get(0)
            .get(0)
            .fill_(f64::NAN)
    });
    fails_only_when_broken(
        "no_nan_inf",
        weights::no_nan_inf(&intact),
        weights::no_nan_inf(&with_nan),
    );
    let huge = bridge();
    let _ = tch::no_grad(|| {
        huge.tl_weight("blocks.1.mlp.W_out")
            .unwrap()
            .get(0)
            .get(0)
            .fill_(1e4)
    });
    fails_only_when_broken(
        "weight_magnitudes",
        weights::weight_magnitudes(&intact),
        weights::weight_magnitudes(&huge),
    );
    let copies = Broken::new(bridge(), Defect::WeightsAreCopies);
    fails_only_when_broken(
        "weight_modification",
        weights::weight_modification(&intact, &inputs),
        weights::weight_modification(&copies, &inputs),
    );
    let nudged = bridge();
    let _ = tch::no_grad(|| {
        nudged
            .tl_weight("blocks.0.attn.W_V")
            .unwrap()
            .get(1)
            .get(0)
            .get(0)
            .fill_(0.5)
    });
    fails_only_when_broken(
        "weight_sharing",
        weights::weight_sharing(&intact, &reference, &inputs, TOL),
        weights::weight_sharing(&nudged, &reference, &inputs, TOL),
    );
}

/// A Llama-family fixture (tests/fixtures/dec-c: Mistral, grouped heads, a sliding window).
fn llama_family_model() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/dec-c/model")
        .display()
        .to_string()
}

fn llama_inputs() -> Inputs {
    Inputs {
        text: "ids".into(),
        tokens: Tensor::from_slice(&[383i64, 5, 17, 42, 99, 7, 250, 3, 64, 11, 8]).view([1, -1]),
        prompts: Vec::new(),
    }
}

#[test]
fn llama_family_forward_benchmarks_fail_when_keys_skip_the_rotary_embedding() {
    let model = llama_family_model();
    let boot = || TransformerBridge::boot(&model, Device::Cpu, Kind::Float).unwrap();
    let reference =
        HookedTransformer::from_pretrained_no_processing(&model, &Default::default()).unwrap();
    let (intact, broken) = (boot(), boot());
    let inputs = llama_inputs();
    // Layer 0's keys leave the rotary embedding as they entered it.
    let unrotated: std::sync::Arc<std::sync::Mutex<Option<Tensor>>> = Default::default();
    let (keep, give) = (unrotated.clone(), unrotated);
    for spec in [
        HookSpec::forward(
            "blocks.0.attn.hook_k",
            Hook::new(move |k, _| {
                *keep.lock().unwrap() = Some(k.shallow_clone());
                None
            }),
        ),
        HookSpec::forward(
            "blocks.0.attn.hook_rot_k",
            Hook::new(move |_, _| give.lock().unwrap().take()),
        ),
    ] {
        broken
            .hooks()
            .add_hook(&spec)
            .unwrap()
            .into_iter()
            .for_each(|h| h.make_permanent());
    }
    forward_checks_fail_only_when_broken(&intact, &broken, &reference, &inputs);
}

#[test]
fn llama_family_weight_benchmarks_fail_when_an_rms_norm_is_left_unfolded() {
    let model = llama_family_model();
    let boot = || {
        let mut bridge = TransformerBridge::boot(&model, Device::Cpu, Kind::Float).unwrap();
        bridge
            .enable_compatibility_mode(CompatibilityOptions::default())
            .unwrap();
        bridge
    };
    let mut reference =
        HookedTransformer::from_pretrained_no_processing(&model, &Default::default()).unwrap();
    reference
        .process_weights(ProcessingOptions::default())
        .unwrap();
    let (intact, broken) = (boot(), boot());
    // ln2 of layer 1 gets a weight other than the identity it was folded to.
    let _ = tch::no_grad(|| {
        broken
            .tl_weight("blocks.1.ln2.w")
            .unwrap()
            .get(0)
            .fill_(1.5)
    });
    fails_only_when_broken(
        "layer_norm_folding",
        weights::layer_norm_folding(&intact),
        weights::layer_norm_folding(&broken),
    );
    let inputs = llama_inputs();
    fails_only_when_broken(
        "logits_equivalence",
        forward::logits_equivalence(&intact, &reference, &inputs, TOL),
        forward::logits_equivalence(&broken, &reference, &inputs, TOL),
    );
}
