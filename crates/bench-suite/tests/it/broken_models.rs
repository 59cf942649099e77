//! Every benchmark fails on a deliberately broken model (and passes on the intact one), so no
//! check is one that cannot fail.

use bench_suite::benchmarks::{
    backward, cache, forward, generation, hooks, recording, weights, GradientTarget, Inputs,
};
use bench_suite::compare::tolerances_for;
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

use crate::common::{edited_checkpoint, fixture_model};

const TOL: f64 = 1e-5;

/// The models the defects are given to: the embedded GPT-2, and the embedded Mistral (grouped
/// key/value heads, a sliding window, RMSNorm, rotary), which stands for the Llama family.
const MODELS: [&str; 2] = [DEFAULT_MODEL, "tiny-mistral"];

fn bridge_of(model: &str) -> TransformerBridge {
    TransformerBridge::boot(model, Device::Cpu, Kind::Float).unwrap()
}

fn reference_of(model: &str) -> HookedTransformer {
    HookedTransformer::from_pretrained_no_processing(model, &Default::default()).unwrap()
}

fn bridge() -> TransformerBridge {
    bridge_of(DEFAULT_MODEL)
}

fn reference() -> HookedTransformer {
    reference_of(DEFAULT_MODEL)
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

/// The checks the suite judges on one recording of both models: each passes for the intact model
/// and those named in `failing` fail for the broken one (the rest pass).
fn recorded_checks_fail_only_when_broken(
    intact: &dyn LensModel,
    broken: &dyn LensModel,
    reference: &dyn LensModel,
    inputs: &Inputs,
    failing: &[&str],
) {
    let tolerances = tolerances_for(Kind::Float);
    let t = GradientTarget::SumLastLogits;
    let passing = recording::recorded_benchmarks(intact, reference, inputs, t, tolerances).results;
    let judged = recording::recorded_benchmarks(broken, reference, inputs, t, tolerances).results;
    assert_eq!(passing.len(), 9);
    for (intact, broken) in passing.into_iter().zip(judged) {
        let name = intact.name.clone();
        if failing.contains(&name.as_str()) {
            fails_only_when_broken(&name, intact, broken);
        } else {
            assert!(intact.passed && broken.passed, "{intact}\n{broken}");
        }
    }
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
    fn tl_weight_constant(&self, name: &str) -> Option<f64> {
        match self.defect {
            Defect::ClaimsConstants => Some(0.0),
            _ => self.inner.tl_weight_constant(name),
        }
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
    logit_checks_fail_only_when_broken(intact, broken, reference, inputs, true);
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

#[rstest::rstest]
fn forward_benchmarks_fail_on_a_perturbed_activation(#[values(MODELS[0], MODELS[1])] model: &str) {
    let (intact, reference) = (bridge_of(model), reference_of(model));
    let inputs = inputs(&intact);
    let broken = bridge_of(model);
    perturb_activation(&broken, "blocks.0.hook_resid_mid", 0.5);
    forward_checks_fail_only_when_broken(&intact, &broken, &reference, &inputs);
    // Phases 5 and 6: log-probs against the unprocessed HF model's.
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
        "log_probs_equivalence",
        forward::log_probs_equivalence(&intact, &inputs, &hf_logits, TOL),
        forward::log_probs_equivalence(&broken, &inputs, &hf_logits, TOL),
    );
    // Block 0 run alone passes through the perturbed hook point.
    fails_only_when_broken(
        "all_components",
        forward::all_components(&intact, TOL),
        forward::all_components(&broken, TOL),
    );
    // The suite's way: every check of one recording per model and phase.
    recorded_checks_fail_only_when_broken(
        &intact,
        &broken,
        &reference,
        &inputs,
        &[
            "logits_equivalence",
            "loss_equivalence",
            "critical_forward_hooks",
            "forward_hooks",
            "activation_cache",
            "gradient_computation",
            "critical_backward_hooks",
            "backward_hooks",
        ],
    );
    fails_only_when_broken(
        "activation_cache",
        cache::activation_cache(&intact, &reference, &inputs, TOL),
        cache::activation_cache(&broken, &reference, &inputs, TOL),
    );
}

#[rstest::rstest]
fn backward_benchmarks_fail_on_a_perturbed_gradient(#[values(MODELS[0], MODELS[1])] model: &str) {
    let (intact, reference) = (bridge_of(model), reference_of(model));
    let inputs = inputs(&intact);
    let broken = bridge_of(model);
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
    // The suite's way: every check of one recording per model and phase.
    recorded_checks_fail_only_when_broken(
        &intact,
        &broken,
        &reference,
        &inputs,
        &[
            "gradient_computation",
            "critical_backward_hooks",
            "backward_hooks",
        ],
    );
}

#[rstest::rstest]
fn gradient_computation_fails_when_real_weights_are_declared_constant(
    #[values(MODELS[0], MODELS[1])] model: &str,
) {
    let (intact, reference) = (bridge_of(model), reference_of(model));
    let inputs = inputs(&intact);
    let broken = Broken::new(bridge_of(model), Defect::ClaimsConstants);
    let t = GradientTarget::SumLastLogits;
    fails_only_when_broken(
        "gradient_computation",
        backward::gradient_computation(&intact, Some(&reference), &inputs, t, TOL),
        backward::gradient_computation(&broken, Some(&reference), &inputs, t, TOL),
    );
}

#[rstest::rstest]
fn a_layer_norm_scale_gradient_off_by_one_percent_fails_despite_its_conditioning(
    #[values(MODELS[0], MODELS[1])] model: &str,
) {
    let (intact, reference) = (bridge_of(model), reference_of(model));
    let inputs = inputs(&intact);
    let broken = bridge_of(model);
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

#[rstest::rstest]
fn hook_benchmarks_fail_on_broken_hooks(#[values(MODELS[0], MODELS[1])] model: &str) {
    let (intact, reference) = (bridge_of(model), reference_of(model));
    let inputs = inputs(&intact);
    let ignores = Broken::new(bridge_of(model), Defect::IgnoresHooks);
    fails_only_when_broken(
        "hook_functionality",
        hooks::hook_functionality(&intact, Some(&reference), &inputs, TOL),
        hooks::hook_functionality(&ignores, Some(&reference), &inputs, TOL),
    );
    let silent = Broken::new(bridge_of(model), Defect::SilentHook);
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
    let mut intact_mut = bridge_of(model);
    let mut flags_ignored = Broken::new(bridge_of(model), Defect::FlagsIgnored);
    fails_only_when_broken(
        "gated_hooks_fire",
        hooks::gated_hooks_fire(&mut intact_mut, &inputs),
        hooks::gated_hooks_fire(&mut flags_ignored, &inputs),
    );
}

#[rstest::rstest]
fn generation_benchmarks_fail_on_broken_generation(#[values(MODELS[0], MODELS[1])] model: &str) {
    let (intact, reference) = (bridge_of(model), reference_of(model));
    let inputs = inputs(&intact);
    let short = Broken::new(bridge_of(model), Defect::GeneratesShort);
    fails_only_when_broken(
        "generation",
        generation::generation(&intact, Some(&reference), &inputs, TOL),
        generation::generation(&short, Some(&reference), &inputs, TOL),
    );
    let kv = Broken::new(bridge_of(model), Defect::KvCacheDropsPosition);
    fails_only_when_broken(
        "generation_with_kv_cache",
        generation::generation_with_kv_cache(&intact, &inputs),
        generation::generation_with_kv_cache(&kv, &inputs),
    );
    let unmasked = Broken::new(bridge_of(model), Defect::IgnoresMask);
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

/// The processing steps that apply to an RMSNorm model (no centring of writing weights: TL does
/// not centre them), each skipped in turn on the embedded Qwen2, whose value biases are real.
#[test]
fn llama_family_weight_processing_benchmarks_fail_when_a_step_is_skipped() {
    let model = "tiny-qwen2";
    let processed = |f: fn(&mut CompatibilityOptions)| {
        let mut options = CompatibilityOptions::default();
        f(&mut options);
        let mut bridge = bridge_of(model);
        bridge.enable_compatibility_mode(options).unwrap();
        bridge
    };
    let intact = processed(|_| {});
    let mut reference = reference_of(model);
    reference
        .process_weights(ProcessingOptions::default())
        .unwrap();
    fails_only_when_broken(
        "layer_norm_folding",
        weights::layer_norm_folding(&intact),
        weights::layer_norm_folding(&processed(|o| o.fold_ln = false)),
    );
    fails_only_when_broken(
        "unembed_centering",
        weights::unembed_centering(&intact, TOL),
        weights::unembed_centering(&processed(|o| o.center_unembed = false), TOL),
    );
    let no_value_bias = processed(|o| o.fold_value_biases = false);
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

#[rstest::rstest]
fn weight_benchmarks_fail_on_broken_weights(#[values(MODELS[0], MODELS[1])] model: &str) {
    let (intact, reference) = (bridge_of(model), reference_of(model));
    let inputs = inputs(&intact);
    let with_nan = bridge_of(model);
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
    let huge = bridge_of(model);
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
    let copies = Broken::new(bridge_of(model), Defect::WeightsAreCopies);
    fails_only_when_broken(
        "weight_modification",
        weights::weight_modification(&intact, &inputs),
        weights::weight_modification(&copies, &inputs),
    );
    let nudged = bridge_of(model);
    let _ = tch::no_grad(|| {
        nudged
            .tl_weight(value_weight(model))
            .unwrap()
            .get(0)
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

/// The value weight that is the model's own parameter: `W_V`, or `_W_V` where key/value heads
/// are grouped (the per-query-head `W_V` is then an expanded copy).
fn value_weight(model: &str) -> &'static str {
    if model == DEFAULT_MODEL {
        "blocks.0.attn.W_V"
    } else {
        "blocks.0.attn._W_V"
    }
}

/// A Llama-family fixture (tests/fixtures/dec-c: Mistral, grouped heads, a sliding window).
fn llama_family_model() -> String {
    fixture_model("dec-c")
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

/// The forward checks pass on the fixture `config` and fail on `broken_dir`, a broken copy of
/// it, both judged against the HookedTransformer of the intact fixture.
fn forward_checks_fail_on_broken_checkpoint(config: &str, broken_dir: &str) {
    let model = fixture_model(config);
    let intact = TransformerBridge::boot(&model, Device::Cpu, Kind::Float).unwrap();
    let broken = TransformerBridge::boot(broken_dir, Device::Cpu, Kind::Float).unwrap();
    let reference =
        HookedTransformer::from_pretrained_no_processing(&model, &Default::default()).unwrap();
    forward_checks_fail_only_when_broken(&intact, &broken, &reference, &llama_inputs());
}

/// The forward checks fail on dec-c with its tensors edited by `edit`.
fn forward_checks_fail_on_edited_dec_c(edit: impl Fn(&str, Tensor) -> Tensor) {
    forward_checks_fail_on_edited("dec-c", |_| {}, edit);
}

/// `config`'s fixture with its config.json edited by `edit_config` and each tensor by
/// `edit_tensor` fails the forward checks that the intact fixture passes.
fn forward_checks_fail_on_edited(
    config: &str,
    edit_config: impl Fn(&mut serde_json::Value),
    edit_tensor: impl Fn(&str, Tensor) -> Tensor,
) {
    let dir = tempfile::tempdir().unwrap();
    let broken = edited_checkpoint(&fixture_model(config), dir.path(), edit_config, edit_tensor);
    forward_checks_fail_on_broken_checkpoint(config, &broken);
}

/// Rows `index` of `t` along `axis` of its view `shape`, back in `t`'s shape.
fn permuted(t: &Tensor, shape: &[i64], axis: i64, index: &[i64]) -> Tensor {
    t.view(shape)
        .index_select(axis, &Tensor::from_slice(index))
        .reshape(t.size().as_slice())
}

/// Key/value heads shared the wrong way: a model that tiles its key/value heads across the
/// query heads (query head h reads key head `h % n_kv`) where HuggingFace repeats each one for
/// consecutive query heads (`h / groups`). Built as a checkpoint: query heads and their `o_proj`
/// columns permuted so that the correct code computes exactly what the tiling bug computes on
/// the intact weights (the sum over heads does not depend on their order).
#[test]
fn llama_family_forward_benchmarks_fail_when_grouped_heads_are_tiled() {
    let (heads, kv_heads, head_dim, d) = (4i64, 2i64, 16i64, 64i64); // tests/fixtures/dec-c
    let groups = heads / kv_heads;
    let order: Vec<i64> = (0..heads)
        .map(|h| (h % groups) * kv_heads + h / groups)
        .collect();
    forward_checks_fail_on_edited_dec_c(|name, t| {
        if name.ends_with("q_proj.weight") {
            permuted(&t, &[heads, head_dim, d], 0, &order)
        } else if name.ends_with("o_proj.weight") {
            permuted(&t, &[d, heads, head_dim], 1, &order)
        } else {
            t
        }
    });
}

/// The wrong rotary pairs: a model that rotates adjacent pairs of each head's features
/// (`2i`, `2i + 1`, GPT-J's layout) where Llama rotates the halves (`i`, `i + d_head / 2`). Built
/// as a checkpoint whose q and k features are reordered so that the half-split rotation meets
/// exactly the pairs the bug rotates (scores do not depend on the order of features).
#[test]
fn llama_family_forward_benchmarks_fail_when_rotary_pairs_are_adjacent() {
    let (heads, kv_heads, head_dim, d) = (4i64, 2i64, 16i64, 64i64); // tests/fixtures/dec-c
    let order: Vec<i64> = (0..head_dim / 2)
        .map(|i| 2 * i)
        .chain((0..head_dim / 2).map(|i| 2 * i + 1))
        .collect();
    forward_checks_fail_on_edited_dec_c(|name, t| {
        if name.ends_with("q_proj.weight") {
            permuted(&t, &[heads, head_dim, d], 1, &order)
        } else if name.ends_with("k_proj.weight") {
            permuted(&t, &[kv_heads, head_dim, d], 1, &order)
        } else {
            t
        }
    });
}

/// Rope scaling ignored: dec-a (llama3 scaling) and dec-b (linear scaling) read as if their
/// configs had plain rotary with the same base.
#[test]
fn llama_family_forward_benchmarks_fail_when_rope_scaling_is_ignored() {
    for config in ["dec-a", "dec-b"] {
        forward_checks_fail_on_edited(
            config,
            |c| {
                let theta = c["rope_parameters"]["rope_theta"].clone();
                c["rope_parameters"] =
                    serde_json::json!({"rope_type": "default", "rope_theta": theta});
            },
            |_, t| t,
        );
    }
}

/// The sliding window ignored: dec-c (Mistral, a window of 4 keys) read as if every layer
/// attended to the whole prefix; the inputs are 11 tokens long.
#[test]
fn llama_family_forward_benchmarks_fail_when_the_sliding_window_is_ignored() {
    forward_checks_fail_on_edited(
        "dec-c",
        |c| c["sliding_window"] = serde_json::Value::Null,
        |_, t| t,
    );
}

/// RMSNorm in half precision: layer 0's `input_layernorm` takes its statistics and its
/// normalisation in f16 and casts back (HuggingFace computes them in f32 whatever the model's
/// dtype), a relative error near 1e-3 that the f32 tolerance catches in the logits and the
/// hooks. The loss, one mean over every position, moves by 4.8e-6 and still passes: it is not
/// the check for this defect.
#[test]
fn llama_family_forward_benchmarks_fail_when_rms_norm_runs_in_half_precision() {
    let (intact, broken, reference) = intact_broken_and_reference("dec-c");
    let eps = 1e-5; // tests/fixtures/dec-c's rms_norm_eps
    replace_from_input(
        &broken,
        "blocks.0.ln1.hook_in",
        "blocks.0.ln1.hook_normalized",
        move |x| {
            let x = x.to_kind(Kind::Half);
            let variance = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Half);
            (&x * (variance + eps).rsqrt()).to_kind(Kind::Float)
        },
    );
    let inputs = llama_inputs();
    logit_checks_fail_only_when_broken(&intact, &broken, &reference, &inputs, false);
    fails_only_when_broken(
        "forward_hooks",
        hooks::forward_hooks(&intact, &reference, &inputs, TOL),
        hooks::forward_hooks(&broken, &reference, &inputs, TOL),
    );
}

/// Two bridges over fixture `config` (one to break, one intact) and its HookedTransformer.
fn intact_broken_and_reference(
    config: &str,
) -> (TransformerBridge, TransformerBridge, HookedTransformer) {
    let model = fixture_model(config);
    let boot = || TransformerBridge::boot(&model, Device::Cpu, Kind::Float).unwrap();
    let reference =
        HookedTransformer::from_pretrained_no_processing(&model, &Default::default()).unwrap();
    (boot(), boot(), reference)
}

/// Makes `model` compute `output_hook`'s value as `f` of `input_hook`'s (permanent hooks): a
/// module replaced by a buggy one, with the rest of the model intact.
fn replace_from_input(
    model: &TransformerBridge,
    input_hook: &str,
    output_hook: &str,
    f: impl Fn(Tensor) -> Tensor + Send + Sync + 'static,
) {
    let input: std::sync::Arc<std::sync::Mutex<Option<Tensor>>> = Default::default();
    let (keep, give) = (input.clone(), input);
    for spec in [
        HookSpec::forward(
            input_hook,
            Hook::new(move |x, _| {
                *keep.lock().unwrap() = Some(x.shallow_clone());
                None
            }),
        ),
        HookSpec::forward(
            output_hook,
            Hook::new(move |_, _| give.lock().unwrap().take().map(&f)),
        ),
    ] {
        model
            .hooks()
            .add_hook(&spec)
            .unwrap()
            .into_iter()
            .for_each(|h| h.make_permanent());
    }
}

/// The checks that read the logits (against the HF model and the HookedTransformer) and, with
/// `loss`, the loss: each passes on `intact` and fails on `broken`.
fn logit_checks_fail_only_when_broken(
    intact: &TransformerBridge,
    broken: &dyn LensModel,
    reference: &HookedTransformer,
    inputs: &Inputs,
    loss: bool,
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
    if loss {
        fails_only_when_broken(
            "loss_equivalence",
            forward::loss_equivalence(intact, reference, inputs, TOL),
            forward::loss_equivalence(broken, reference, inputs, TOL),
        );
    }
}

/// The forward checks fail on neox-a (parallel residual, a quarter of each head rotated, rope
/// base 500) read through a config edited by `edit` or with tensors edited by `edit_tensor`.
fn forward_checks_fail_on_edited_neox_a(
    edit: impl Fn(&mut serde_json::Value),
    edit_tensor: impl Fn(&str, Tensor) -> Tensor,
) {
    forward_checks_fail_on_edited("neox-a", edit, edit_tensor);
}

/// GPT-NeoX's parallel block run in sequence (the MLP reading the residual after attention).
#[test]
fn gpt_neox_forward_benchmarks_fail_when_the_parallel_block_runs_in_sequence() {
    forward_checks_fail_on_edited_neox_a(|c| c["use_parallel_residual"] = false.into(), |_, t| t);
}

/// The rotary embedding on every dimension of each head instead of the first quarter.
#[test]
fn gpt_neox_forward_benchmarks_fail_when_rotary_turns_every_dimension() {
    forward_checks_fail_on_edited_neox_a(
        |c| c["rope_parameters"]["partial_rotary_factor"] = 1.0.into(),
        |_, t| t,
    );
}

/// The checkpoint's rope base ignored for 10000 (what TransformerLens 3.9.0's GPT-NeoX
/// configuration does).
#[test]
fn gpt_neox_forward_benchmarks_fail_when_the_rope_base_is_ignored() {
    forward_checks_fail_on_edited_neox_a(
        |c| c["rope_parameters"]["rope_theta"] = 10000.0.into(),
        |_, t| t,
    );
}

/// The fused projection split as GPT-2's is (all queries, then all keys, then all values)
/// where GPT-NeoX interleaves them per head. Built as a checkpoint whose `query_key_value` rows
/// are reordered so that the per-head split meets exactly what the contiguous split reads from
/// the intact weights.
#[test]
fn gpt_neox_forward_benchmarks_fail_when_qkv_is_split_contiguously() {
    let (heads, head_dim) = (4i64, 16i64); // tests/fixtures/neox-a
    forward_checks_fail_on_edited_neox_a(
        |_| {},
        |name, t| {
            if !name.contains("query_key_value") {
                return t;
            }
            // Rows [part, head, j] (the contiguous reading) moved to [head, part, j].
            let mut shape = vec![3, heads, head_dim];
            shape.extend(t.size().into_iter().skip(1));
            t.view(shape.as_slice())
                .transpose(0, 1)
                .reshape(t.size().as_slice())
        },
    );
}

/// The wrong rotary pairs for GPT-J: a model that rotates the halves of the rotated
/// dimensions (`i`, `i + r / 2`, Llama's and NeoX's layout) where GPT-J rotates adjacent pairs
/// (`2i`, `2i + 1`). Built as a checkpoint whose q and k features are reordered so that the
/// adjacent-pair rotation meets exactly the pairs the bug rotates (scores do not depend on the
/// order of features).
#[test]
fn gptj_forward_benchmarks_fail_when_rotary_pairs_are_halves() {
    let (heads, head_dim, rotary_dim, d) = (4i64, 16i64, 8i64, 64i64); // tests/fixtures/gptj-a
    let half = rotary_dim / 2;
    let order: Vec<i64> = (0..half)
        .flat_map(|i| [i, i + half])
        .chain(rotary_dim..head_dim)
        .collect();
    forward_checks_fail_on_edited(
        "gptj-a",
        |_| {},
        |name, t| {
            if name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight") {
                permuted(&t, &[heads, head_dim, d], 1, &order)
            } else {
                t
            }
        },
    );
}

/// GPT-J's rotary on every dimension of each head instead of its `rotary_dim`, and Phi's at the
/// width TransformerLens 3.9.0 rounds to (8 of 16 dimensions where HF truncates to 6).
#[test]
fn gptj_and_phi_forward_benchmarks_fail_when_the_rotary_width_is_wrong() {
    for (config, edit) in [
        (
            "gptj-a",
            (|c: &mut serde_json::Value| c["rotary_dim"] = 16.into()) as fn(&mut _),
        ),
        ("phi-a", |c| {
            c["rope_parameters"]["partial_rotary_factor"] = 0.5.into()
        }),
    ] {
        forward_checks_fail_on_edited(config, edit, |_, t| t);
    }
}

/// Phi's q/k LayerNorms skipped: phi-c read with `qk_layernorm` off (its norm weights left
/// unread) fails the forward checks.
#[test]
fn phi_forward_benchmarks_fail_when_the_qk_layernorm_is_skipped() {
    forward_checks_fail_on_edited("phi-c", |c| c["qk_layernorm"] = false.into(), |_, t| t);
}

/// GPT-Neo's local window ignored: neo-a (a window of 4 keys on its second layer) read as if
/// every layer attended to the whole prefix; the inputs are 11 tokens long.
#[test]
fn gpt_neo_forward_benchmarks_fail_when_the_local_window_is_ignored() {
    forward_checks_fail_on_edited(
        "neo-a",
        |c| c["attention_layers"] = serde_json::json!(["global", "global"]),
        |_, t| t,
    );
}

/// OPT's position offset forgotten: a model that looks position `p` up at row `p` where OPT
/// reads row `p + 2`. Built as a checkpoint whose table is moved down two rows, so that the
/// correct lookup meets exactly the rows the bug reads.
#[test]
fn opt_forward_benchmarks_fail_when_the_position_offset_is_forgotten() {
    forward_checks_fail_on_edited(
        "opt-a",
        |_| {},
        |name, t| {
            if name.ends_with("embed_positions.weight") {
                let rows = t.size()[0];
                Tensor::cat(&[t.narrow(0, 0, 2), t.narrow(0, 0, rows - 2)], 0)
            } else {
                t
            }
        },
    );
}

/// OPT-350m's LayerNorms read as if before the sublayers: opt-c (post-LN, projected) loaded
/// as a pre-LN model without a final LayerNorm fails the forward checks.
#[test]
fn opt_forward_benchmarks_fail_when_post_ln_is_read_as_pre_ln() {
    let dir = tempfile::tempdir().unwrap();
    let broken = crate::common::opt_c_read_pre_ln_without_final_norm(dir.path());
    forward_checks_fail_on_broken_checkpoint("opt-c", &broken);
}

/// Gemma's RMSNorms read as `w` instead of `1 + w`: gemma-a with every norm weight less one,
/// so that the correct `1 + w` meets exactly the factor the bug would use.
#[test]
fn gemma_forward_benchmarks_fail_when_norms_multiply_by_w() {
    forward_checks_fail_on_edited(
        "gemma-a",
        |_| {},
        |name, t| {
            if name.ends_with("norm.weight") {
                t - 1.0
            } else {
                t
            }
        },
    );
}

/// Gemma's embeddings left unscaled: gemma-a (tied) with an untied copy of its embedding
/// divided by `sqrt(d_model)` = 8, so that the correct scaling meets the bug's unscaled rows
/// while the unembedding is the intact one.
#[test]
fn gemma_forward_benchmarks_fail_when_the_embedding_scale_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixture_model("gemma-a");
    let tensors =
        Tensor::read_safetensors(std::path::Path::new(&source).join("model.safetensors")).unwrap();
    let (_, embedding) = tensors
        .iter()
        .find(|(n, _)| n == "model.embed_tokens.weight")
        .unwrap();
    let unembedding = embedding.copy();
    let broken = edited_checkpoint(
        &source,
        dir.path(),
        |c| c["tie_word_embeddings"] = serde_json::json!(false),
        |name, t| {
            if name == "model.embed_tokens.weight" {
                t / 8.0
            } else {
                t
            }
        },
    );
    // The untied unembedding is the intact embedding matrix.
    let path = std::path::Path::new(&broken).join("model.safetensors");
    let mut written = Tensor::read_safetensors(&path).unwrap();
    written.push(("lm_head.weight".to_owned(), unembedding));
    lens_core::weights::write_safetensors(&path, &written, Default::default()).unwrap();
    forward_checks_fail_on_broken_checkpoint("gemma-a", &broken);
}

/// Gemma 2's attention soft cap left out: gemma2-a (a cap of 1.5 that binds on its weights)
/// read without it.
#[test]
fn gemma2_forward_benchmarks_fail_without_the_attention_soft_cap() {
    forward_checks_fail_on_edited(
        "gemma2-a",
        |c| c["attn_logit_softcapping"] = serde_json::Value::Null,
        |_, t| t,
    );
}

/// Gemma 2's final soft cap left out: gemma2-a (a cap of 2.5 on its logits) read without it.
/// The cap follows `unembed.hook_out`, so every hook agrees; the logits and the loss do not.
#[test]
fn gemma2_logit_benchmarks_fail_without_the_final_soft_cap() {
    let model = fixture_model("gemma2-a");
    let dir = tempfile::tempdir().unwrap();
    let broken_dir = edited_checkpoint(
        &model,
        dir.path(),
        |c| c["final_logit_softcapping"] = serde_json::Value::Null,
        |_, t| t,
    );
    let (intact, _, reference) = intact_broken_and_reference("gemma2-a");
    let broken = TransformerBridge::boot(&broken_dir, Device::Cpu, Kind::Float).unwrap();
    logit_checks_fail_only_when_broken(&intact, &broken, &reference, &llama_inputs(), true);
}

/// Gemma 2's sliding and global layers shifted by one: gemma2-a (layer 0 sliding with a window
/// of 4, layer 1 global) read as global, then sliding.
#[test]
fn gemma2_forward_benchmarks_fail_when_the_layer_pattern_is_shifted() {
    forward_checks_fail_on_edited(
        "gemma2-a",
        |c| c["layer_types"] = serde_json::json!(["full_attention", "sliding_attention"]),
        |_, t| t,
    );
}

/// A norm after a sublayer skipped: gemma2-a's bridge with layer 0's `ln1_post` replaced by the
/// identity (a hook returning the norm's input as its output).
#[test]
fn gemma2_forward_benchmarks_fail_when_a_post_sublayer_norm_is_skipped() {
    let (intact, broken, reference) = intact_broken_and_reference("gemma2-a");
    replace_from_input(
        &broken,
        "blocks.0.ln1_post.hook_in",
        "blocks.0.ln1_post.hook_out",
        |x| x,
    );
    forward_checks_fail_only_when_broken(&intact, &broken, &reference, &llama_inputs());
}

/// Gemma 3's sliding layers rotated with the global base: gemma3-a read with its local rotary
/// base (100) replaced by the global one.
#[test]
fn gemma3_forward_benchmarks_fail_when_the_local_rotary_base_is_ignored() {
    forward_checks_fail_on_edited(
        "gemma3-a",
        |c| {
            let global = c["rope_parameters"]["full_attention"]["rope_theta"].clone();
            c["rope_parameters"]["sliding_attention"]["rope_theta"] = global;
        },
        |_, t| t,
    );
}

/// Phi-3's partial rotary ignored: phi3-a (half of each head rotated) read as rotating all of it.
#[test]
fn phi3_forward_benchmarks_fail_when_every_dimension_rotates() {
    forward_checks_fail_on_edited(
        "phi3-a",
        |c| c["rope_parameters"]["partial_rotary_factor"] = serde_json::json!(1.0),
        |_, t| t,
    );
}

/// Phi-3's fused gate and up halves swapped: phi3-a with the halves of `gate_up_proj`
/// exchanged, so that the correct split meets what a model reading up first would compute.
#[test]
fn phi3_forward_benchmarks_fail_when_gate_and_up_are_swapped() {
    forward_checks_fail_on_edited(
        "phi3-a",
        |_| {},
        |name, t| {
            if name.ends_with("gate_up_proj.weight") {
                let halves = t.chunk(2, 0);
                Tensor::cat(&[&halves[1], &halves[0]], 0)
            } else {
                t
            }
        },
    );
}

/// OLMo-2's q/k norms taken per head instead of over the whole projection: olmo2-a's bridge
/// with layer 0's `q_norm` output replaced by each head's own RMSNorm of its input (times the
/// weight).
#[test]
fn olmo2_forward_benchmarks_fail_when_qk_norms_are_per_head() {
    let (intact, broken, reference) = intact_broken_and_reference("olmo2-a");
    let weight =
        std::sync::Mutex::new(broken.tl_weight("blocks.0.attn.q_norm.w").unwrap().detach());
    let (heads, eps) = (4i64, 1e-6); // tests/fixtures/olmo2-a
    replace_from_input(
        &broken,
        "blocks.0.attn.q_norm.hook_in",
        "blocks.0.attn.q_norm.hook_out",
        move |x| {
            let shape = x.size();
            let per_head = x.reshape([shape[0], shape[1], heads, -1]);
            let variance = per_head
                .pow_tensor_scalar(2)
                .mean_dim(-1, true, Kind::Float);
            let normed = (&per_head * (variance + eps).rsqrt()).reshape(shape.as_slice());
            normed * &*weight.lock().unwrap()
        },
    );
    forward_checks_fail_only_when_broken(&intact, &broken, &reference, &llama_inputs());
}
