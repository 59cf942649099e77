//! HookedTransformer against TransformerLens 3.9.0's goldens (tests/fixtures): every hook
//! activation and every backward-hook gradient, logits and losses, for both fixture configs.
//! err = max|ours - golden| / max(1, max|golden|) per tensor, in f32, must be <= 1e-5.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hooked_ref::{
    convert_gpt2, ForwardOptions, HookedTransformer, HookedTransformerConfig, NormType,
    ProcessingOptions, ReturnType,
};
use hookpoint::{ActivationCache, CacheOptions};
use lens_core::config::Activation;
use rstest::rstest;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_tensors(path: &Path) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// The HookedTransformerConfig as TransformerLens recorded it in the golden.
fn config_from_golden(cfg: &serde_json::Value, flags: bool) -> HookedTransformerConfig {
    let int = |k: &str| cfg[k].as_i64().unwrap_or_else(|| panic!("cfg.{k}"));
    let flag = |k: &str| cfg[k].as_bool().unwrap_or_else(|| panic!("cfg.{k}"));
    HookedTransformerConfig {
        d_model: int("d_model"),
        d_head: int("d_head"),
        n_heads: int("n_heads"),
        d_mlp: int("d_mlp"),
        n_layers: int("n_layers"),
        n_ctx: int("n_ctx"),
        d_vocab: int("d_vocab"),
        act_fn: cfg["act_fn"]
            .as_str()
            .unwrap()
            .parse::<Activation>()
            .unwrap(),
        eps: cfg["eps"].as_f64().unwrap(),
        normalization_type: NormType::LayerNorm,
        use_attn_scale: flag("use_attn_scale"),
        scale_attn_by_inverse_layer_idx: flag("scale_attn_by_inverse_layer_idx"),
        default_prepend_bos: true,
        use_attn_result: flags,
        use_split_qkv_input: flags,
        use_attn_in: false,
        use_hook_mlp_in: flags,
        use_hook_tokens: false,
        bos_token_id: int("d_vocab") - 1,
        eos_token_id: int("d_vocab") - 1,
        n_key_value_heads: None,
        rotary: None,
        gated_mlp: false,
        qk_norm: lens_core::config::QkNorm::None,
        norm_placement: lens_core::config::NormPlacement::Before,
        norms_on_residual: false,
        final_norm: true,
        d_embed: None,
        attn_scale: None,
        attn_scores_soft_cap: None,
        output_logits_soft_cap: None,
        rotary_local: None,
        longrope: None,
        bidirectional: false,
        windows: vec![None; int("n_layers") as usize],
        parallel_attn_mlp: false,
        original_architecture: "GPT2LMHeadModel".to_owned(),
    }
}

/// The three golden variants of TransformerLens's HookedTransformer.
#[derive(Clone, Copy, Debug)]
enum Variant {
    Unprocessed,
    Processed,
    Flags,
}

impl Variant {
    fn file(self) -> &'static str {
        match self {
            Variant::Unprocessed => "hooked_unprocessed",
            Variant::Processed => "hooked_processed",
            Variant::Flags => "hooked_flags_unprocessed",
        }
    }

    fn model(self, config: &str) -> HookedTransformer {
        let mut model = load_model(config, matches!(self, Variant::Flags));
        if matches!(self, Variant::Processed) {
            model.process_weights(ProcessingOptions::default()).unwrap();
        }
        model
    }
}

fn load_model(config: &str, flags: bool) -> HookedTransformer {
    let dir = fixtures().join(config);
    let golden = read_json(&dir.join("hooked_unprocessed.json"));
    let cfg = config_from_golden(&golden["cfg"], flags);
    let hf_config = read_json(&dir.join("model/config.json"));
    let tied = hf_config["tie_word_embeddings"].as_bool().unwrap_or(true);
    let mut weights = read_tensors(&dir.join("model/model.safetensors"));
    let params = convert_gpt2(&cfg, tied, |name, shape, last| {
        let t = if last {
            weights.remove(name)
        } else {
            weights.get(name).map(Tensor::shallow_clone)
        }
        .ok_or_else(|| lens_core::model::ModelError::InvalidInput(format!("missing {name}")))?;
        let fits = t.size().len() == shape.len()
            && t.size().iter().zip(shape).all(|(a, b)| *b < 0 || a == b);
        if fits {
            Ok(t)
        } else {
            Err(lens_core::model::ModelError::InvalidInput(format!(
                "{name}: shape {:?}, expected {shape:?}",
                t.size()
            )))
        }
    })
    .unwrap();
    HookedTransformer::from_params(cfg, params.requires_grad(true))
}

/// err = max|a - b| / max(1, max|b|) over entries where `keep` holds.
fn relative_error(ours: &Tensor, golden: &Tensor, keep: Option<&Tensor>) -> f64 {
    let (ours, golden) = (ours.to_kind(Kind::Double), golden.to_kind(Kind::Double));
    let (ours, golden) = match keep {
        Some(keep) => (ours.masked_select(keep), golden.masked_select(keep)),
        None => (ours, golden),
    };
    if golden.numel() == 0 {
        return 0.0;
    }
    let scale = golden.abs().max().double_value(&[]).max(1.0);
    (ours - golden).abs().max().double_value(&[]) / scale
}

/// Compares one tensor; attention scores (and their gradients) on unmasked entries, with the
/// masked entries required to be -inf (scores) or 0 (gradients).
fn compare(
    name: &str,
    ours: &Tensor,
    golden: &Tensor,
    scores_mask: Option<&Tensor>,
) -> Result<f64, String> {
    if ours.size() != golden.size() {
        return Err(format!(
            "{name}: shape {:?} vs golden {:?}",
            ours.size(),
            golden.size()
        ));
    }
    let ours = ours.to_device(Device::Cpu);
    let is_scores = name.ends_with("hook_attn_scores") || name.ends_with("hook_attn_scores_grad");
    if let (true, Some(unmasked)) = (is_scores, scores_mask) {
        let masked = unmasked.logical_not();
        let masked_values = ours.masked_select(&masked);
        let expected = if name.ends_with("_grad") {
            0.0
        } else {
            f64::NEG_INFINITY
        };
        if masked_values.numel() > 0 && !bool::try_from(masked_values.eq(expected).all()).unwrap() {
            return Err(format!("{name}: masked entries are not {expected}"));
        }
        return Ok(relative_error(&ours, golden, Some(unmasked)));
    }
    if !bool::try_from(golden.isfinite().all()).unwrap() {
        return Err(format!(
            "{name}: golden has non-finite entries outside attention scores"
        ));
    }
    Ok(relative_error(&ours, golden, None))
}

/// The scalar the goldens' gradients are of: the summed last-position logits, or for processed
/// models the summed last-position log-probs (the summed logits have an exactly zero gradient
/// after center_unembed; see tests/fixtures/README.md).
fn gradient_target(logits: &Tensor, processed: bool) -> Tensor {
    let last = logits.select(1, -1);
    if processed {
        last.log_softmax(-1, Kind::Float).sum(Kind::Float)
    } else {
        last.sum(Kind::Float)
    }
}

fn run_prompt(
    model: &HookedTransformer,
    tokens: &Tensor,
    mask: Option<&Tensor>,
    processed: bool,
) -> (Tensor, Tensor, ActivationCache) {
    let options = CacheOptions {
        incl_bwd: true,
        ..CacheOptions::default()
    };
    let forward = ForwardOptions {
        attention_mask: mask,
        ..ForwardOptions::default()
    };
    let mut logits = None;
    let (_, cache) = model
        .run_with_cache_fn(&options, |m| {
            let out = m.forward(tokens, &forward)?;
            let l = out.logits()?.shallow_clone();
            let target = gradient_target(&l, processed);
            logits = Some(l.detach());
            Ok(target)
        })
        .unwrap();
    let loss_options = ForwardOptions {
        attention_mask: mask,
        return_type: ReturnType::Loss,
        ..ForwardOptions::default()
    };
    let loss = model
        .forward(tokens, &loss_options)
        .unwrap()
        .loss
        .unwrap()
        .detach();
    (logits.unwrap(), loss, cache)
}

#[rstest]
fn matches_transformer_lens(
    #[values("small", "knobs")] config: &str,
    #[values(Variant::Unprocessed, Variant::Processed, Variant::Flags)] variant: Variant,
) {
    let model = variant.model(config);
    compare_with_golden(
        config,
        variant.file(),
        &model,
        matches!(variant, Variant::Processed),
    );
}

/// Llama (GQA, llama3 and linear rope, every bias), Mistral (a window of 4), Qwen2 (q/k/v
/// biases, a fractional rope_theta), Qwen3 (q/k norms, head_dim 24): every hook activation and
/// gradient of TransformerLens 3.9.0 on the unprocessed model, loaded from the checkpoint.
#[rstest]
fn llama_family_matches_transformer_lens(
    #[values("dec-a", "dec-b", "dec-c", "dec-d", "dec-e")] config: &str,
) {
    let dir = fixtures().join(config).join("model");
    let model = HookedTransformer::from_pretrained(
        dir.to_str().unwrap(),
        &lens_core::LoadOptions::default(),
        ProcessingOptions::none(),
    )
    .unwrap();
    compare_with_golden(config, "hooked_unprocessed", &model, false);
}

/// The same after TransformerLens's default processing (for RMSNorm: fold the norm weights,
/// no centring of writing weights, center_unembed, fold_value_biases with grouped values).
#[rstest]
fn processed_llama_family_matches_transformer_lens(
    #[values("dec-a", "dec-b", "dec-c", "dec-d", "dec-e")] config: &str,
) {
    let model = decoder(config, ProcessingOptions::default());
    compare_with_golden(config, "hooked_processed", &model, true);
    processed_weights_match(config, &model);
}

/// GPT-NeoX (parallel and sequential blocks, partial rotary: a quarter, half, all of each head;
/// a rope base and linear scaling TransformerLens 3.9.0 would not read, which its goldens
/// correct; no attention biases), GPT-J (adjacent pairs, one LayerNorm for both branches, an
/// `n_inner` and an epsilon TransformerLens ignores) and Phi (6 of 16 dimensions rotated): every
/// hook activation and gradient, unprocessed and processed, and the processed weights.
#[rstest]
fn classic_families_match_transformer_lens(
    #[values(
        "neox-a", "neox-b", "neox-c", "gptj-a", "gptj-b", "phi-a", "neo-a", "neo-b", "opt-a",
        "opt-b"
    )]
    config: &str,
) {
    let model = decoder(config, ProcessingOptions::none());
    compare_with_golden(config, "hooked_unprocessed", &model, false);
    let model = decoder(config, ProcessingOptions::default());
    compare_with_golden(config, "hooked_processed", &model, true);
    processed_weights_match(config, &model);
}

/// Gemma (`1 + w` norms and the embedding scale folded into the weights, MQA), Gemma 2 (norms
/// after the sublayers too, both soft caps, `query_pre_attn_scalar`, sliding and global layers),
/// Gemma 3 (q/k norms, the local rotary base, a linearly scaled global one), Phi-3 (fused
/// projections split, half of each head rotated, a window on every layer), OLMo-2 (norms after
/// the sublayers only, q/k norms over the projection): every hook activation and gradient,
/// unprocessed and processed (with TransformerLens's refusals), and the processed weights.
#[rstest]
fn todays_small_families_match_transformer_lens(
    #[values("gemma-a", "gemma2-a", "gemma3-a", "phi3-a", "olmo2-a")] config: &str,
) {
    let model = decoder(config, ProcessingOptions::none());
    compare_with_golden(config, "hooked_unprocessed", &model, false);
    let model = decoder(config, ProcessingOptions::default());
    compare_with_golden(config, "hooked_processed", &model, true);
    processed_weights_match(config, &model);
}

fn decoder(config: &str, processing: ProcessingOptions) -> HookedTransformer {
    let dir = fixtures().join(config).join("model");
    HookedTransformer::from_pretrained(
        dir.to_str().unwrap(),
        &lens_core::LoadOptions::default(),
        processing,
    )
    .unwrap()
}

/// A decoder fixture's HookedTransformer with one knob of its configuration changed, as code
/// ignoring that knob would build it.
fn decoder_ignoring(
    config: &str,
    change: impl FnOnce(&mut HookedTransformerConfig),
) -> HookedTransformer {
    let model = decoder(config, ProcessingOptions::none());
    let mut cfg = model.cfg().clone();
    change(&mut cfg);
    let params = model.params().map(|t| t.detach().copy());
    HookedTransformer::from_params(cfg, params.requires_grad(true))
}

#[rstest]
#[case::rotary_base_truncated("dec-d", |c: &mut HookedTransformerConfig| {
    if let Some(r) = c.rotary.as_mut() { r.base = r.base.trunc() }
})]
#[case::window_ignored("dec-c", |c: &mut HookedTransformerConfig| c.windows = vec![None; 2])]
#[case::llama3_scaling_ignored("dec-a", |c: &mut HookedTransformerConfig| {
    if let Some(r) = c.rotary.as_mut() { r.scaling = lens_core::RopeScaling::None }
})]
#[case::adjacent_pairs("dec-b", |c: &mut HookedTransformerConfig| {
    if let Some(r) = c.rotary.as_mut() { r.adjacent_pairs = true }
})]
#[case::qk_norm_dropped("dec-e", |c: &mut HookedTransformerConfig| c.qk_norm = lens_core::config::QkNorm::None)]
#[case::parallel_block_in_sequence("neox-a", |c: &mut HookedTransformerConfig| {
    c.parallel_attn_mlp = false
})]
#[case::rotary_on_every_dimension("neox-a", |c: &mut HookedTransformerConfig| {
    if let Some(r) = c.rotary.as_mut() { r.dim = c.d_head }
})]
#[case::neox_rope_base_of_transformer_lens("neox-a", |c: &mut HookedTransformerConfig| {
    if let Some(r) = c.rotary.as_mut() { r.base = 10000.0 }
})]
#[case::neox_linear_scaling_ignored("neox-b", |c: &mut HookedTransformerConfig| {
    if let Some(r) = c.rotary.as_mut() { r.scaling = lens_core::RopeScaling::None }
})]
#[should_panic(expected = "mismatches")]
fn a_rotary_family_knob_ignored_fails_the_goldens(
    #[case] config: &str,
    #[case] change: fn(&mut HookedTransformerConfig),
) {
    let model = decoder_ignoring(config, change);
    compare_with_golden(config, "hooked_unprocessed", &model, false);
}

/// A LayerNorm's `hook_scale` gradient is `-sum_d(grad_normalized * normalized) / scale`: terms
/// of both signs that cancel to a small fraction of their magnitude, so its f32 rounding (in
/// TransformerLens's golden as in ours) is a fraction of that magnitude, not of the result.
/// `err` (relative to `max(1, max|golden|)`) measured against
/// `max(1, max|golden|, max sum_d |grad_normalized * normalized| / scale)`.
fn err_vs_summed_terms(err: f64, golden: &BTreeMap<String, Tensor>, pid: &str, name: &str) -> f64 {
    let prefix = name.trim_end_matches("hook_scale_grad");
    let get = |what: &str| golden.get(&format!("{pid}/{prefix}{what}"));
    let (Some(g), Some(n), Some(scale), Some(result)) = (
        get("hook_normalized_grad"),
        get("hook_normalized"),
        get("hook_scale"),
        golden.get(&format!("{pid}/{name}")),
    ) else {
        return err;
    };
    let terms = (g * n).abs().sum_dim_intlist(-1, true, Kind::Float) / scale;
    let plain = result.abs().max().double_value(&[]).max(1.0);
    err * plain / terms.max().double_value(&[]).max(plain)
}

/// Every activation, gradient and loss of the golden `file` of `config`, hook for hook, and
/// nothing that fired here without firing there.
fn compare_with_golden(config: &str, file: &str, model: &HookedTransformer, processed: bool) {
    let dir = fixtures().join(config);
    let golden_meta = read_json(&dir.join(format!("{file}.json")));
    let golden = read_tensors(&dir.join(format!("{file}.safetensors")));
    let mut worst: BTreeMap<String, f64> = BTreeMap::new();
    let mut failures = Vec::new();
    for prompt in golden_meta["prompt_order"].as_array().unwrap() {
        let pid = prompt.as_str().unwrap();
        let tokens = &golden[&format!("{pid}/tokens")];
        let mask = golden.get(&format!("{pid}/attention_mask"));
        let padded = mask.is_some_and(|m| m.min().int64_value(&[]) == 0);
        let (logits, loss, cache) =
            run_prompt(model, tokens, if padded { mask } else { None }, processed);
        let scores_mask = |layer_key: &str| golden.get(layer_key).map(|s| s.isfinite());
        let mut fired: Vec<String> = cache.keys().map(str::to_owned).collect();
        for (key, golden_tensor) in golden
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{pid}/")))
        {
            let name = &key[pid.len() + 1..];
            let ours = match name {
                "tokens" | "attention_mask" => continue,
                n if n.starts_with("generate.") => continue,
                "loss" => loss.shallow_clone(),
                "loss_per_token" => {
                    let o = ForwardOptions {
                        attention_mask: if padded { mask } else { None },
                        return_type: ReturnType::Loss,
                        loss_per_token: true,
                        ..Default::default()
                    };
                    model.forward(tokens, &o).unwrap().loss.unwrap().detach()
                }
                _ => match cache.get(name) {
                    Ok(t) => {
                        fired.retain(|f| f != name);
                        t.shallow_clone()
                    }
                    Err(_) => {
                        failures.push(format!("{pid}/{name}: in the golden but never fired here"));
                        continue;
                    }
                },
            };
            let activation_key = format!("{pid}/{}", name.trim_end_matches("_grad"));
            match compare(
                name,
                &ours,
                golden_tensor,
                scores_mask(&activation_key).as_ref(),
            ) {
                Ok(err) => {
                    let err = if name.ends_with("hook_scale_grad") {
                        err_vs_summed_terms(err, &golden, pid, name)
                    } else {
                        err
                    };
                    let family = name.rsplit('.').next().unwrap_or(name).to_owned();
                    let w = worst.entry(family).or_insert(0.0);
                    *w = w.max(err);
                    if err > TOLERANCE {
                        failures.push(format!("{pid}/{name}: err {err:.3e}"));
                    }
                }
                Err(message) => failures.push(format!("{pid}/{message}")),
            }
        }
        // The logits are `unembed.hook_out`, soft-capped after it where the model caps.
        let unembedded = &golden[&format!("{pid}/unembed.hook_out")];
        let expected = match model.cfg().output_logits_soft_cap {
            Some(cap) => (unembedded / cap).tanh() * cap,
            None => unembedded.shallow_clone(),
        };
        let logits_err = relative_error(&logits, &expected, None);
        if logits_err > TOLERANCE {
            failures.push(format!("{pid}/logits: err {logits_err:.3e}"));
        }
        for extra in fired {
            failures.push(format!("{pid}/{extra}: fired here but not in the golden"));
        }
    }
    eprintln!("{config} {file}: worst err per hook family: {worst:?}");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[rstest]
fn processed_weights_equal_transformer_lens(#[values("small", "knobs")] config: &str) {
    processed_weights_match(config, &Variant::Processed.model(config));
}

/// Every processed parameter of `model` equals the golden state dict of `config`, name for name.
fn processed_weights_match(config: &str, model: &HookedTransformer) {
    let golden = read_tensors(&fixtures().join(config).join("hooked_processed.safetensors"));
    let ours: BTreeMap<String, Tensor> = model
        .params()
        .named()
        .into_iter()
        .map(|(n, t)| (n, t.detach()))
        .collect();
    let theirs: BTreeMap<&str, &Tensor> = golden
        .iter()
        .filter_map(|(k, t)| k.strip_prefix("weights/").map(|n| (n, t)))
        .collect();
    let our_names: Vec<&str> = ours.keys().map(String::as_str).collect();
    let their_names: Vec<&str> = theirs.keys().copied().collect();
    assert_eq!(our_names, their_names, "processed parameter names");
    for (name, t) in &ours {
        let err = relative_error(t, theirs[name.as_str()], None);
        assert!(err <= TOLERANCE, "{name}: err {err:.3e}");
    }
}

#[rstest]
fn processing_keeps_log_probs(#[values("small", "knobs")] config: &str) {
    let golden = read_tensors(&fixtures().join(config).join("hf.safetensors"));
    let tokens = &golden["single_bos12/tokens"];
    let log_probs = |model: &HookedTransformer| {
        let out = model.forward(tokens, &ForwardOptions::default()).unwrap();
        out.logits().unwrap().log_softmax(-1, Kind::Float).detach()
    };
    let before = log_probs(&Variant::Unprocessed.model(config));
    let after = log_probs(&Variant::Processed.model(config));
    let err = relative_error(&after, &before, None);
    assert!(
        err <= TOLERANCE,
        "log-probs changed by processing: err {err:.3e}"
    );
    // ... while the logits themselves do move (center_unembed shifts them per position).
    let logits = |v: Variant| {
        v.model(config)
            .forward(tokens, &ForwardOptions::default())
            .unwrap()
            .logits
            .unwrap()
            .detach()
    };
    assert!(
        relative_error(
            &logits(Variant::Processed),
            &logits(Variant::Unprocessed),
            None
        ) > 1e-4
    );
}

#[rstest]
fn greedy_generation_matches_transformer_lens_with_and_without_cache(
    #[values("small", "knobs")] config: &str,
) {
    let golden = read_tensors(
        &fixtures()
            .join(config)
            .join("hooked_unprocessed.safetensors"),
    );
    let meta = read_json(&fixtures().join(config).join("hooked_unprocessed.json"));
    let model = Variant::Unprocessed.model(config);
    assert_generation_matches(&model, config, &golden, &meta);
}

/// Each prompt of an HF golden (`meta`'s order): its id, its tokens, and its attention mask
/// where it pads.
fn golden_prompts<'a>(
    golden: &'a BTreeMap<String, Tensor>,
    meta: &'a serde_json::Value,
) -> impl Iterator<Item = (&'a str, &'a Tensor, Option<&'a Tensor>)> {
    meta["prompt_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|prompt| {
            let pid = prompt.as_str().unwrap();
            let mask = golden
                .get(&format!("{pid}/attention_mask"))
                .filter(|m| m.min().int64_value(&[]) == 0);
            (pid, &golden[&format!("{pid}/tokens")], mask)
        })
}

/// Greedy generation of 8 tokens, with and without the KV cache, equals the golden's
/// (`{prompt}/generate.use_cache`) for every prompt of `meta`.
fn assert_generation_matches(
    model: &HookedTransformer,
    config: &str,
    golden: &BTreeMap<String, Tensor>,
    meta: &serde_json::Value,
) {
    for (pid, tokens, mask) in golden_prompts(golden, meta) {
        for use_cache in [true, false] {
            let options = lens_core::model::GenerateOptions {
                max_new_tokens: 8,
                use_past_kv_cache: use_cache,
                ..Default::default()
            };
            let ours = tch::no_grad(|| model.generate(tokens, mask, &options)).unwrap();
            let expected = &golden[&format!("{pid}/generate.use_cache")];
            assert!(
                ours.equal(expected),
                "{config}/{pid} use_cache={use_cache}: {ours:?} vs {expected:?}"
            );
        }
    }
}

/// Greedy generation of the Llama-family HookedTransformer, with and without its KV cache (keys
/// cached before rotation, re-rotated every step, as TransformerLens), equals HuggingFace's for
/// every prompt: Mistral's generations run past its window of 4 keys.
#[rstest]
fn llama_family_generation_matches_transformers(
    #[values("dec-a", "dec-b", "dec-c", "dec-d", "dec-e")] config: &str,
) {
    let golden = read_tensors(&fixtures().join(config).join("hf.safetensors"));
    let meta = read_json(&fixtures().join(config).join("hf.json"));
    let model = decoder(config, ProcessingOptions::none());
    assert_generation_matches(&model, config, &golden, &meta);
}

/// TransformerLens's optional paths on a Llama-family model with grouped key/value heads:
/// per-head results, split q/k/v inputs (keys and values one per key/value head) and the MLP
/// input leave the logits as they were; one shared input for every head is refused.
#[test]
fn hook_flags_work_with_grouped_heads() {
    let plain = decoder("dec-a", ProcessingOptions::none());
    let mut flagged = decoder("dec-a", ProcessingOptions::none());
    flagged.set_use_attn_result(true);
    flagged.set_use_split_qkv_input(true).unwrap();
    flagged.set_use_hook_mlp_in(true);
    let tokens = Tensor::from_slice(&[383i64, 5, 17, 99, 3]).unsqueeze(0);
    let logits = |m: &HookedTransformer| {
        m.forward(&tokens, &ForwardOptions::default())
            .unwrap()
            .logits
            .unwrap()
    };
    assert!(relative_error(&logits(&flagged), &logits(&plain), None) <= TOLERANCE);
    let (_, cache) = lens_core::model::LensModel::run_with_cache(
        &flagged,
        &tokens,
        &ForwardOptions::default(),
        &CacheOptions::default(),
    )
    .unwrap();
    assert_eq!(
        cache.get("blocks.0.hook_q_input").unwrap().size(),
        vec![1, 5, 4, 64]
    );
    assert_eq!(
        cache.get("blocks.0.hook_k_input").unwrap().size(),
        vec![1, 5, 2, 64]
    );
    assert_eq!(
        cache.get("blocks.1.attn.hook_result").unwrap().size(),
        vec![1, 5, 4, 64]
    );
    let mut shared = decoder("dec-a", ProcessingOptions::none());
    let refused = shared.set_use_attn_in(true).unwrap_err().to_string();
    assert!(refused.contains("use_split_qkv_input"), "{refused}");
}

/// GPT-J's and Phi's one LayerNorm becomes two parameters, `ln1` and `ln2`, with storage of
/// their own (as TransformerLens copies it): an edit of one leaves the other alone.
#[rstest]
fn a_shared_layer_norm_becomes_two_independent_parameters(
    #[values("gptj-a", "phi-a")] config: &str,
) {
    let model = decoder(config, ProcessingOptions::none());
    let weight = |name: &str| {
        model
            .params()
            .named()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
            .unwrap()
    };
    let (ln1, ln2) = (weight("blocks.0.ln1.w"), weight("blocks.0.ln2.w"));
    assert!(ln1.equal(&ln2), "{config}: the same values");
    let before = ln2.copy();
    tch::no_grad(|| {
        let _ = ln1.shallow_clone().fill_(3.0);
    });
    assert!(ln2.equal(&before), "{config}: ln2 kept its values");
}

/// In bfloat16, Gemma's norms keep `1 + w` in f32 and multiply before the cast back, as
/// transformers does (tests/fixtures/gemma2-a/hf_bf16.safetensors); TransformerLens rounds
/// `1 + w` to bf16, up to 0.4% off. Unprocessed and processed, the logits stay within bf16
/// rounding of transformers' bf16 logits.
#[rstest]
fn gemma_norms_keep_their_weight_in_f32_in_bf16(#[values(false, true)] processed: bool) {
    let dir = fixtures().join("gemma2-a");
    let options = lens_core::LoadOptions {
        kind: Some(Kind::BFloat16),
        ..lens_core::LoadOptions::default()
    };
    let processing = if processed {
        ProcessingOptions::default()
    } else {
        ProcessingOptions::none()
    };
    let model = HookedTransformer::from_pretrained(
        dir.join("model").to_str().unwrap(),
        &options,
        processing,
    )
    .unwrap();
    let kinds: BTreeMap<String, Kind> = model
        .params()
        .named()
        .into_iter()
        .map(|(name, t)| (name, t.kind()))
        .collect();
    let norm = if processed {
        "blocks.0.ln1_post.w"
    } else {
        "blocks.0.ln1.w"
    };
    assert_eq!(kinds[norm], Kind::Float, "{norm}");
    assert_eq!(kinds["blocks.0.attn.W_Q"], Kind::BFloat16);
    let golden = read_tensors(&dir.join("hf_bf16.safetensors"));
    let tokens = &golden["single_bos12/tokens"];
    let logits = tch::no_grad(|| model.forward(tokens, &ForwardOptions::default()))
        .unwrap()
        .logits
        .unwrap();
    assert_eq!(logits.kind(), Kind::BFloat16);
    let err = relative_error(&logits, &golden["single_bos12/logits"], None);
    // Unprocessed, the same operations in the same dtypes; processed, the folded weights are
    // rounded to bf16 once more.
    let bound = if processed { 0.05 } else { TOLERANCE };
    assert!(err <= bound, "logits err {err:.3e} > {bound:e}");
}

/// Layouts TransformerLens 3.9.0 cannot hold (Phi's grouped key/value heads, phi-b; Phi's
/// `qk_layernorm`, phi-c; OPT-350m's LayerNorms after the residual additions, no final
/// LayerNorm and projected embeddings, opt-c; OPT's LayerNorms without parameters, opt-d, held
/// as TransformerLens's with weight one and bias zero), where transformers' goldens are the
/// reference: the
/// HookedTransformer's log-probs, unprocessed and processed, equal transformers' on every
/// prompt (the padded batch on its real tokens), and its greedy generations, with and without
/// the cache, equal transformers'.
#[rstest]
fn layouts_transformer_lens_cannot_hold_match_transformers(
    #[values("phi-b", "phi-c", "opt-c", "opt-d")] config: &str,
) {
    let golden = read_tensors(&fixtures().join(config).join("hf.safetensors"));
    let meta = read_json(&fixtures().join(config).join("hf.json"));
    for processing in [ProcessingOptions::none(), ProcessingOptions::default()] {
        let model = decoder(config, processing);
        for (pid, tokens, mask) in golden_prompts(&golden, &meta) {
            let options = ForwardOptions {
                attention_mask: mask,
                ..ForwardOptions::default()
            };
            let out = tch::no_grad(|| model.forward(tokens, &options)).unwrap();
            let log_probs = |t: &Tensor| t.log_softmax(-1, Kind::Float);
            let keep = mask.map(|m| {
                m.to_kind(Kind::Bool)
                    .unsqueeze(-1)
                    .expand([-1, -1, model.cfg().d_vocab], false)
            });
            let err = relative_error(
                &log_probs(&out.logits.unwrap()),
                &log_probs(&golden[&format!("{pid}/logits")]),
                keep.as_ref(),
            );
            let processed = processing != ProcessingOptions::none();
            eprintln!("{config}/{pid} processed={processed}: log-prob err {err:.3e}");
            assert!(
                err <= TOLERANCE,
                "{config}/{pid} {processing:?}: err {err:.3e}"
            );
        }
        assert_generation_matches(&model, config, &golden, &meta);
    }
}
