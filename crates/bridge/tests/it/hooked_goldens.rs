//! The TransformerBridge against TransformerLens 3.9.0 HookedTransformer goldens
//! (tests/fixtures/*/hooked_*.safetensors): every hook activation and every backward-hook
//! gradient, logits, losses and greedy generation, for both fixture configs, unprocessed, with
//! the three hook flags, and in compatibility mode against the processed HookedTransformer.
//!
//! Hooks with a TransformerLens name are compared with the golden of that name. Every other
//! hook that fires (the bridge's component hooks: `ln1.hook_out`, `attn.qkv.hook_out`, ...) is
//! compared with the value it must have given the goldens (e.g. `ln1.hook_out =
//! ln1.hook_normalized * w + b`, its gradient times `w` = `ln1.hook_normalized`'s gradient), so
//! no hook goes unchecked. The padded batch is compared on real positions: TransformerLens
//! zeroes the positional embedding of padding while HuggingFace (and so the bridge) gives
//! padding position 1.

use std::collections::{BTreeMap, BTreeSet};

use crate::common::*;
use bridge::{CompatibilityOptions, TransformerBridge};
use hookpoint::{ActivationCache, CacheOptions};
use lens_core::model::{ForwardOptions, ForwardOutput, GenerateOptions, LensModel, ReturnType};
use rstest::rstest;
use tch::{Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Unprocessed,
    Flags,
    Processed,
}

impl Variant {
    fn file(self) -> &'static str {
        match self {
            Variant::Unprocessed => "hooked_unprocessed",
            Variant::Flags => "hooked_flags_unprocessed",
            Variant::Processed => "hooked_processed",
        }
    }

    fn bridge(self, config: &str, kind: Kind) -> TransformerBridge {
        let mut b = bridge_on(config, tch::Device::Cpu, kind);
        match self {
            Variant::Unprocessed => {}
            Variant::Flags => {
                b.set_use_attn_result(true);
                b.set_use_split_qkv_input(true).expect("flag");
                b.set_use_hook_mlp_in(true);
            }
            Variant::Processed => b
                .enable_compatibility_mode(CompatibilityOptions::default())
                .expect("compatibility mode"),
        }
        b
    }
}

/// The golden's scalar: summed last-position logits, or (processed) summed last-position
/// log-probs; see tests/fixtures/README.md.
fn target(processed: bool) -> impl Fn(&ForwardOutput) -> lens_core::model::ModelResult<Tensor> {
    move |out| {
        let last = out.logits()?.select(1, -1);
        Ok(if processed {
            last.log_softmax(-1, Kind::Float).sum(Kind::Float)
        } else {
            last.sum(Kind::Float)
        })
    }
}

/// Which entries of an activation belong to real tokens, `None` when every token is real.
fn keep_mask(name: &str, shape: &[i64], mask: Option<&Tensor>) -> Option<Tensor> {
    let m = mask?.to_kind(Kind::Bool);
    let (b, p) = (m.size()[0], m.size()[1]);
    let keep = if name.ends_with("hook_attn_scores") || name.ends_with("hook_pattern") {
        // [b, h, q, k]: real queries and real keys (padding keys hold different values).
        m.view([b, 1, p, 1]).logical_and(&m.view([b, 1, 1, p]))
    } else {
        let mut view = vec![b, p];
        view.extend(std::iter::repeat_n(1, shape.len().saturating_sub(2)));
        m.view(view.as_slice())
    };
    Some(keep.expand(shape, false))
}

/// Compares on `keep` (all when `None`): non-finite golden entries must be matched exactly
/// (masked scores are -inf), the others within the error measure; ours must have no NaN.
fn compare(ours: &Tensor, golden: &Tensor, keep: Option<&Tensor>) -> Result<f64, String> {
    if ours.size() != golden.size() {
        return Err(format!(
            "shape {:?} vs golden {:?}",
            ours.size(),
            golden.size()
        ));
    }
    let ours = ours.to_kind(Kind::Float);
    let keep = keep.map_or_else(
        || golden.ones_like().to_kind(Kind::Bool),
        Tensor::shallow_clone,
    );
    if bool::try_from(ours.isnan().logical_and(&keep).any()).unwrap() {
        return Err("NaN where the golden is compared".into());
    }
    let finite = golden.isfinite();
    let special = keep.logical_and(&finite.logical_not());
    if bool::try_from(special.any()).unwrap() {
        let (o, g) = (ours.masked_select(&special), golden.masked_select(&special));
        if bool::try_from(g.isnan().any()).unwrap() || o != g {
            return Err("non-finite golden entries (masked scores) not matched exactly".into());
        }
    }
    Ok(relative_error(
        &ours,
        golden,
        Some(&keep.logical_and(&finite)),
    ))
}

struct Ctx<'a> {
    bridge: &'a TransformerBridge,
    golden: &'a BTreeMap<String, Tensor>,
    pid: &'a str,
    variant: Variant,
    n_layers: usize,
}

impl Ctx<'_> {
    fn g(&self, name: &str) -> Option<&Tensor> {
        self.golden.get(&format!("{}/{name}", self.pid))
    }

    fn w(&self, name: &str) -> Tensor {
        self.bridge
            .tl_weight(name)
            .expect("weight")
            .detach()
            .to_kind(Kind::Float)
    }

    /// The TransformerLens name under which the golden holds canonical hook `name`.
    fn tl_name(&self, canonical: &str) -> Option<String> {
        if self.g(canonical).is_some() {
            return Some(canonical.to_owned());
        }
        self.bridge
            .hook_aliases()
            .into_iter()
            .find(|(alias, target)| target == canonical && self.g(alias).is_some())
            .map(|(alias, _)| alias)
    }

    /// `x * w + b` over the last axis.
    fn affine(&self, x: &Tensor, prefix: &str) -> Tensor {
        x * self.w(&format!("{prefix}.w")) + self.w(&format!("{prefix}.b"))
    }

    fn layer_norm(&self, x: &Tensor, prefix: &str) -> Tensor {
        let d = *x.size().last().unwrap();
        let eps = self
            .bridge
            .config()
            .as_gpt2()
            .expect("a GPT-2 bridge")
            .layer_norm_epsilon;
        x.layer_norm(
            [d],
            Some(&self.w(&format!("{prefix}.w"))),
            Some(&self.w(&format!("{prefix}.b"))),
            eps,
            false,
        )
    }

    /// The value (or, with `grad`, the gradient) a component hook without a TransformerLens
    /// name must have, from the goldens and the weights.
    fn expected(
        &self,
        name: &str,
        grad: bool,
        tokens: &Tensor,
        positions: &Tensor,
    ) -> Option<Tensor> {
        let split = self.variant == Variant::Flags;
        let g = |n: &str| -> Option<Tensor> {
            self.g(&format!("{n}{}", if grad { "_grad" } else { "" }))
                .map(Tensor::shallow_clone)
        };
        let act = |n: &str| self.g(n).map(Tensor::shallow_clone);
        let last = self.n_layers - 1;
        match name {
            "embed.hook_in" if !grad => return Some(tokens.shallow_clone()),
            "pos_embed.hook_in" if !grad => return Some(positions.shallow_clone()),
            "ln_final.hook_in" => return g(&format!("blocks.{last}.hook_resid_post")),
            "ln_final.hook_out" => return g("unembed.hook_in"),
            _ => {}
        }
        let rest = name.strip_prefix("blocks.")?;
        let (l, site) = rest.split_once('.')?;
        let b = |s: &str| format!("blocks.{l}.{s}");
        let flat = |t: Tensor| {
            let mut s = t.size();
            let dh = s.pop().unwrap();
            let h = s.pop().unwrap();
            s.push(h * dh);
            t.reshape(s.as_slice())
        };
        // Gradients through `out = normalized * w + b` are `d normalized / w`.
        let ln_out = |ln: &str| -> Option<Tensor> {
            if grad {
                Some(g(&b(&format!("{ln}.hook_normalized")))? / self.w(&b(&format!("{ln}.w"))))
            } else {
                Some(self.affine(&act(&b(&format!("{ln}.hook_normalized")))?, &b(ln)))
            }
        };
        Some(match site {
            "ln1.hook_in" if split => {
                if grad {
                    g(&b("hook_q_input"))? + g(&b("hook_k_input"))? + g(&b("hook_v_input"))?
                } else {
                    act(&b("hook_v_input"))? // the last of the three firings
                }
            }
            "ln1.hook_in" if grad => g(&b("hook_resid_pre"))? - g(&b("hook_resid_mid"))?,
            "ln1.hook_in" => act(&b("hook_resid_pre"))?,
            "ln1.hook_out" => ln_out("ln1")?,
            "attn.hook_in" | "attn.qkv.hook_in" => ln_out("ln1")?,
            "attn.q.hook_in" | "attn.k.hook_in" | "attn.v.hook_in" => {
                let x = &site[5..6].to_uppercase();
                let w = self.w(&b(&format!("attn.W_{x}"))); // [h, d, dh]
                match (split, grad) {
                    (false, false) => ln_out("ln1")?,
                    (false, true) => {
                        let dq = flat(g(&b(&format!("attn.hook_{}", x.to_lowercase())))?);
                        let w_hf = w.permute([1, 0, 2]).reshape([w.size()[1], -1]); // [d, h dh]
                        dq.matmul(&w_hf.transpose(0, 1))
                    }
                    (true, false) => self.layer_norm(
                        &act(&b(&format!("hook_{}_input", x.to_lowercase())))?,
                        &b("ln1"),
                    ),
                    (true, true) => {
                        let dq = g(&b(&format!("attn.hook_{}", x.to_lowercase())))?;
                        Tensor::einsum("bphk,hdk->bphd", &[&dq, &w], None::<&[i64]>)
                    }
                }
            }
            "attn.qkv.hook_out" => Tensor::cat(
                &[
                    flat(g(&b("attn.hook_q"))?),
                    flat(g(&b("attn.hook_k"))?),
                    flat(g(&b("attn.hook_v"))?),
                ],
                -1,
            ),
            "attn.o.hook_out" | "attn.hook_hidden_states" => g(&b("hook_attn_out"))?,
            "ln2.hook_in" if self.variant == Variant::Flags => g(&b("hook_mlp_in"))?,
            "ln2.hook_in" if grad => g(&b("hook_resid_mid"))? - g(&b("hook_resid_post"))?,
            "ln2.hook_in" => act(&b("hook_resid_mid"))?,
            "ln2.hook_out" | "mlp.hook_in" | "mlp.in.hook_in" => ln_out("ln2")?,
            "mlp.out.hook_out" => g(&b("hook_mlp_out"))?,
            _ => return None,
        })
    }
}

/// Runs one prompt with every hook cached, activations and gradients.
fn cached_run(
    bridge: &TransformerBridge,
    tokens: &Tensor,
    mask: Option<&Tensor>,
    processed: bool,
) -> (ForwardOutput, ActivationCache) {
    let options = ForwardOptions {
        attention_mask: mask,
        ..ForwardOptions::default()
    };
    let result = bridge
        .run_with_cache_and_backward(
            tokens,
            &options,
            &CacheOptions::default(),
            &target(processed),
        )
        .expect("run_with_cache");
    bridge.zero_grad();
    result
}

/// Compares `bridge` with one golden variant.
fn run_variant(config: &str, variant: Variant, bridge: &TransformerBridge, report: &mut Report) {
    let dir = fixtures().join(config);
    let meta = read_json(&dir.join(format!("{}.json", variant.file())));
    let golden = read_tensors(&dir.join(format!("{}.safetensors", variant.file())));
    let n_layers = bridge.dims().n_layers as usize;
    let processed = variant == Variant::Processed;
    for pid in prompt_ids(&meta) {
        let ctx = Ctx {
            bridge,
            golden: &golden,
            pid: &pid,
            variant,
            n_layers,
        };
        let tokens = ctx.g("tokens").expect("tokens").shallow_clone();
        let mask = padding_mask(&golden, &pid);
        let positions = match &mask {
            Some(m) => bridge::hf_position_ids(m),
            None => Tensor::arange(tokens.size()[1], (Kind::Int64, tokens.device())).unsqueeze(0),
        };
        let options = ForwardOptions {
            attention_mask: mask.as_ref(),
            ..ForwardOptions::default()
        };
        let (out, cache) = cached_run(bridge, &tokens, mask.as_ref(), processed);
        let mut matched_golden: BTreeSet<String> = BTreeSet::new();
        check_cache(
            &ctx,
            &cache,
            &tokens,
            &positions,
            mask.as_ref(),
            &mut matched_golden,
            report,
        );
        // Logits, losses.
        let logits = out.logits().expect("logits");
        match compare(
            logits,
            ctx.g("unembed.hook_out").expect("logits golden"),
            keep_mask("logits", &logits.size(), mask.as_ref()).as_ref(),
        ) {
            Ok(err) => report.check("logits", &format!("{pid}/logits"), err),
            Err(e) => report.fail(format!("{pid}/logits: {e}")),
        }
        for (key, per_token) in [("loss", false), ("loss_per_token", true)] {
            let o = ForwardOptions {
                return_type: ReturnType::Loss,
                loss_per_token: per_token,
                ..options
            };
            let loss = tch::no_grad(|| bridge.forward(&tokens, &o)).expect("loss");
            report.check(
                "loss",
                &format!("{pid}/{key}"),
                relative_error(
                    loss.loss().expect("loss"),
                    ctx.g(key).expect("loss golden"),
                    None,
                ),
            );
            matched_golden.insert(key.to_owned());
        }
        // Greedy generation (the variants that have it).
        for (key, use_cache) in [("generate.use_cache", true), ("generate.no_cache", false)] {
            if let Some(expected) = ctx.g(key) {
                let options = GenerateOptions {
                    max_new_tokens: 8,
                    use_past_kv_cache: use_cache,
                    ..GenerateOptions::default()
                };
                let generated = bridge
                    .generate(&tokens, mask.as_ref(), &options)
                    .expect("generate");
                if generated != *expected {
                    report.fail(format!("{pid}/{key}: {generated:?} != {expected:?}"));
                }
                matched_golden.insert(key.to_owned());
            }
        }
        for key in golden
            .keys()
            .filter_map(|k| k.strip_prefix(&format!("{pid}/")))
        {
            let bookkeeping =
                matches!(key, "tokens" | "attention_mask") || key.starts_with("generate.");
            if !bookkeeping && !matched_golden.contains(key) {
                report.fail(format!(
                    "{pid}/{key}: in the golden but never fired on the bridge"
                ));
            }
        }
    }
    if processed {
        for (key, golden_w) in golden
            .iter()
            .filter_map(|(k, t)| k.strip_prefix("weights/").map(|n| (n, t)))
        {
            report.check(
                "processed weights",
                key,
                relative_error(&ctx_weight(bridge, key), golden_w, None),
            );
        }
    }
}

fn ctx_weight(bridge: &TransformerBridge, name: &str) -> Tensor {
    bridge.tl_weight(name).expect("weight").detach()
}

/// The gradient of `hook_scale` is `-sum_d(grad_normalized * normalized) / scale`: terms of
/// both signs that cancel to a small fraction of their magnitude, so an f32 evaluation of it
/// carries rounding error of up to ~1e-5 of the result (TransformerLens's golden itself is up to
/// 1.3e-5 from an f64 evaluation). When the f64 bridge is compared with the f32 golden, that
/// error is measured against the magnitude of what is summed,
/// `max(1, max|golden|, max sum_d |grad_normalized * normalized| / scale)`.
fn scale_grad_magnitude(ctx: &Ctx<'_>, key: &str, keep: Option<&Tensor>) -> Option<f64> {
    let prefix = key.strip_suffix("hook_scale_grad")?;
    let g = ctx.g(&format!("{prefix}hook_normalized_grad"))?;
    let n = ctx.g(&format!("{prefix}hook_normalized"))?;
    let s = ctx.g(&format!("{prefix}hook_scale"))?;
    let terms = (g * n).abs().sum_dim_intlist(-1, true, Kind::Float) / s;
    let terms = match keep {
        Some(k) => terms.masked_select(k),
        None => terms,
    };
    Some(terms.max().double_value(&[]))
}

/// [`scale_grad_magnitude`] from a golden file's tensors: the largest
/// `sum_d |grad_normalized * normalized| / scale` over kept positions, for `name`
/// (`blocks.{l}.ln2.hook_scale_grad`, ...).
fn summed_scale_grad_terms(
    golden: &BTreeMap<String, Tensor>,
    pid: &str,
    name: &str,
    keep: Option<&Tensor>,
) -> f64 {
    let prefix = name.trim_end_matches("hook_scale_grad");
    let get = |what: &str| &golden[&format!("{pid}/{prefix}{what}")];
    let terms = (get("hook_normalized_grad") * get("hook_normalized"))
        .abs()
        .sum_dim_intlist(-1, true, Kind::Float)
        / get("hook_scale");
    let terms = match keep {
        Some(k) => terms.masked_select(k),
        None => terms,
    };
    terms.max().double_value(&[])
}

#[allow(clippy::too_many_arguments)]
fn check_cache(
    ctx: &Ctx<'_>,
    cache: &ActivationCache,
    tokens: &Tensor,
    positions: &Tensor,
    mask: Option<&Tensor>,
    matched_golden: &mut BTreeSet<String>,
    report: &mut Report,
) {
    let pid = ctx.pid;
    for (key, ours) in cache.iter() {
        let (base, grad) = match key.strip_suffix("_grad") {
            Some(base) => (base, true),
            None => (key, false),
        };
        let suffix = if grad { "_grad" } else { "" };
        let (golden, family, what) = match ctx.tl_name(base) {
            Some(tl) => {
                let golden_key = format!("{tl}{suffix}");
                matched_golden.insert(golden_key.clone());
                let family = format!("{}{suffix}", tl.rsplit('.').next().unwrap());
                (
                    ctx.g(&golden_key).map(Tensor::shallow_clone),
                    family,
                    golden_key,
                )
            }
            None => {
                let family = format!(
                    "component {}{suffix}",
                    base.split_once("blocks.")
                        .map_or(base, |(_, r)| r.split_once('.').map_or(r, |(_, s)| s))
                );
                (
                    ctx.expected(base, grad, tokens, positions),
                    family,
                    key.to_owned(),
                )
            }
        };
        let Some(golden) = golden else {
            report.fail(format!("{pid}/{key}: fired on the bridge, but neither a golden nor a derived value checks it"));
            continue;
        };
        let keep = keep_mask(base, &ours.size(), mask);
        match compare(ours, &golden, keep.as_ref()) {
            // In f32 the bridge meets the plain bound everywhere (its weight processing is the
            // HookedTransformer's own). Against the f64 bridge, what is measured is the golden's
            // own f32 rounding, and for the ill-conditioned scale gradient that is judged
            // against the magnitude of the summed terms.
            Ok(err) => match scale_grad_magnitude(ctx, &what, keep.as_ref())
                .filter(|_| ours.kind() == Kind::Double)
            {
                Some(magnitude) => {
                    // `compare` divided by max(1, max|golden|); rescale to the summed terms.
                    let plain = golden.abs().max().double_value(&[]).max(1.0);
                    report.note(&format!("{family} (plain measure)"), err);
                    report.check(
                        &format!("{family} (vs summed terms)"),
                        &format!("{pid}/{what} ({key})"),
                        err * plain / magnitude.max(plain),
                    );
                }
                None => report.check(&family, &format!("{pid}/{what} ({key})"), err),
            },
            Err(e) => report.fail(format!("{pid}/{what} ({key}): {e}")),
        }
    }
}

#[rstest]
fn bridge_matches_hooked_transformer(
    #[values("small", "knobs")] config: &str,
    #[values(Variant::Unprocessed, Variant::Flags, Variant::Processed)] variant: Variant,
) {
    let bridge = variant.bridge(config, Kind::Float);
    let mut report = Report::default();
    run_variant(config, variant, &bridge, &mut report);
    report.assert_ok(&format!("bridge {config} {variant:?}"));
}

/// The same comparisons with the bridge in f64 (a nearly exact evaluation): every golden,
/// computed in f32, is within the bound of it.
#[rstest]
fn bridge_in_f64_matches_hooked_transformer(
    #[values("small", "knobs")] config: &str,
    #[values(Variant::Unprocessed, Variant::Flags, Variant::Processed)] variant: Variant,
) {
    let bridge = variant.bridge(config, Kind::Double);
    let mut report = Report::default();
    run_variant(config, variant, &bridge, &mut report);
    report.assert_ok(&format!("bridge f64 {config} {variant:?}"));
}

/// The comparisons can fail: a bridge with one perturbed weight, or without compatibility mode
/// against the processed goldens, does not pass.
#[test]
fn perturbed_bridge_fails_the_comparison() {
    let b = bridge("small");
    tch::no_grad(|| {
        let w = b.tl_weight("blocks.2.attn.b_V").expect("weight");
        let _ = w.narrow(0, 1, 1).f_add_scalar_(0.01).expect("write");
    });
    let mut report = Report::default();
    run_variant("small", Variant::Unprocessed, &b, &mut report);
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.contains("blocks.2.attn.hook_v ")),
        "{:?}",
        report.failures
    );
    assert!(
        !report
            .failures
            .iter()
            .any(|f| f.contains("blocks.1.attn.hook_v ")),
        "{:?}",
        report.failures
    );

    let unprocessed = bridge("knobs");
    let mut report = Report::default();
    run_variant("knobs", Variant::Processed, &unprocessed, &mut report);
    assert!(report.failures.iter().any(|f| f.contains("hook_resid_pre")));
}

/// Real-token entries of a per-head q/k-norm hook (Qwen3, Gemma 3), whose rows are
/// `(batch, pos, head)`, flattened.
fn flattened_keep(shape: &[i64], mask: Option<&Tensor>) -> Option<Tensor> {
    let m = mask?.to_kind(Kind::Bool);
    let (b, p) = (m.size()[0], m.size()[1]);
    let heads = shape[0] / (b * p);
    Some(
        m.view([b, p, 1])
            .expand([b, p, heads], false)
            .reshape([-1, 1])
            .expand(shape, false),
    )
}

/// The bridge over a decoder fixture's checkpoint (`dir/model`), f32 on the CPU.
fn decoder_bridge(dir: &std::path::Path) -> TransformerBridge {
    let model = dir.join("model");
    TransformerBridge::boot(
        model.to_str().expect("utf-8 path"),
        tch::Device::Cpu,
        Kind::Float,
    )
    .expect("boot")
}

/// The final soft cap of a fixture's checkpoint (Gemma 2 and 3), from its `config.json`.
fn logit_soft_cap(dir: &std::path::Path) -> Option<f64> {
    lens_core::HfConfig::from_file(dir.join("model").join("config.json"))
        .expect("config.json")
        .as_llama()
        .and_then(|c| c.final_logit_softcapping)
}

/// The rotary families' bridge (Llama, Mistral, Qwen2, Qwen3, GPT-NeoX) against
/// TransformerLens 3.9.0's HookedTransformer goldens, unprocessed and in compatibility mode:
/// every hook the golden has, under its TransformerLens name, activation and gradient, on real
/// positions (positions of padding differ by design, as for GPT-2); logits and the loss; and
/// every registered hook point fires exactly once.
#[rstest]
fn rotary_family_bridge_matches_hooked_transformer(
    #[values(
        "dec-a", "dec-b", "dec-c", "dec-d", "dec-e", "neox-a", "neox-b", "neox-c", "gptj-a",
        "gptj-b", "phi-a", "neo-a", "neo-b", "opt-a", "opt-b", "gemma-a", "gemma2-a", "gemma3-a",
        "phi3-a", "olmo2-a"
    )]
    config: &str,
    #[values(false, true)] processed: bool,
) {
    let dir = fixtures().join(config);
    let mut bridge = decoder_bridge(&dir);
    let file = if processed {
        bridge
            .enable_compatibility_mode(bridge::CompatibilityOptions::default())
            .expect("compatibility mode");
        "hooked_processed"
    } else {
        "hooked_unprocessed"
    };
    let meta = read_json(&dir.join(format!("{file}.json")));
    let golden = read_tensors(&dir.join(format!("{file}.safetensors")));
    let mut report = Report::default();
    for pid in prompt_ids(&meta) {
        let g = |name: &str| &golden[&format!("{pid}/{name}")];
        let mask = padding_mask(&golden, &pid);
        let (out, cache) = cached_run(&bridge, g("tokens"), mask.as_ref(), processed);
        let prefix = format!("{pid}/");
        for (key, expected) in golden.iter().filter(|(k, _)| k.starts_with(&prefix)) {
            let name = &key[prefix.len()..];
            if matches!(
                name,
                "tokens" | "attention_mask" | "loss" | "loss_per_token"
            ) {
                continue;
            }
            let Ok(ours) = cache.get(name) else {
                report.fail(format!("{key}: not in the bridge's cache"));
                continue;
            };
            let activation = name.trim_end_matches("_grad");
            // Per-head q/k norms see `(batch, pos, head)` rows; OLMo-2's, over the whole
            // projection, `[batch, pos, width]`.
            let per_head_norm = (activation.contains(".attn.q_norm.")
                || activation.contains(".attn.k_norm."))
                && expected.dim() == 2;
            let keep = if per_head_norm {
                flattened_keep(&expected.size(), mask.as_ref())
            } else {
                keep_mask(activation, &expected.size(), mask.as_ref())
            };
            let family = if name.ends_with("_grad") {
                "gradients"
            } else {
                "activations"
            };
            match compare(ours, expected, keep.as_ref()) {
                // A LayerNorm's hook_scale gradient cancels to a small fraction of what it
                // sums (see scale_grad_magnitude): its f32 rounding is measured against that.
                Ok(err) if name.ends_with("hook_scale_grad") => {
                    let magnitude = summed_scale_grad_terms(&golden, &pid, name, keep.as_ref());
                    let plain = expected.abs().max().double_value(&[]).max(1.0);
                    report.note("gradients (hook_scale, plain measure)", err);
                    report.check(
                        "gradients (hook_scale, vs summed terms)",
                        key,
                        err * plain / magnitude.max(plain),
                    );
                }
                Ok(err) => report.check(family, key, err),
                Err(message) => report.fail(format!("{key}: {message}")),
            }
        }
        let logits = out.logits.expect("logits");
        let keep = keep_mask("logits", &logits.size(), mask.as_ref());
        // The logits are `unembed.hook_out`, soft-capped after it where the model caps.
        let expected = match logit_soft_cap(&dir) {
            Some(cap) => (g("unembed.hook_out") / cap).tanh() * cap,
            None => g("unembed.hook_out").shallow_clone(),
        };
        match compare(&logits, &expected, keep.as_ref()) {
            Ok(err) => report.check("logits", &format!("{pid}/logits"), err),
            Err(message) => report.fail(format!("{pid}/logits: {message}")),
        }
        let loss = bridge
            .forward(
                g("tokens"),
                &ForwardOptions {
                    attention_mask: mask.as_ref(),
                    return_type: ReturnType::Loss,
                    ..ForwardOptions::default()
                },
            )
            .expect("loss")
            .loss
            .expect("loss");
        report.check(
            "loss",
            &format!("{pid}/loss"),
            relative_error(&loss, g("loss"), None),
        );
    }
    // Every hook point fires once per forward, in both directions.
    let counts = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<String, usize>::new()));
    let names: Vec<String> = bridge.hook_registry().names().map(str::to_owned).collect();
    let hook = {
        let counts = counts.clone();
        hookpoint::Hook::new(move |_, ctx| {
            *counts
                .lock()
                .unwrap()
                .entry(ctx.name().to_owned())
                .or_default() += 1;
            None
        })
    };
    let enabled: Vec<&String> = names
        .iter()
        .filter(|n| bridge.hook_registry().disabled_by(n).is_none())
        .collect();
    let specs: Vec<hookpoint::HookSpec> = enabled
        .iter()
        .map(|n| hookpoint::HookSpec::forward(n.as_str(), hook.clone()))
        .collect();
    // The golden's first prompt (the hook counts do not depend on which).
    let first = prompt_ids(&meta).into_iter().next().expect("a prompt");
    let tokens = &golden[&format!("{first}/tokens")];
    bridge
        .run_with_hooks(tokens, &ForwardOptions::default(), &specs)
        .expect("hooked forward");
    let counts = counts.lock().unwrap();
    for name in enabled {
        let fired = counts.get(name.as_str()).copied().unwrap_or(0);
        if fired != 1 {
            report.fail(format!("{name} fired {fired} times"));
        }
    }
    report.assert_ok(&format!("bridge vs HookedTransformer {config} ({file})"));
}

/// The Llama-family bridge has the Python bridge's hook names (tests/fixtures/dec-*/
/// bridge_hooks.json), but for the declined differences: `hook_resid_mid` is a point of its own
/// rather than an alias of `ln2.hook_in`, and the rotary module's `hook_out` (which never fires
/// there) and its alias `hook_pos_embed` are not registered.
#[rstest]
fn rotary_family_bridge_has_the_python_bridges_names(
    #[values(
        "dec-a", "dec-b", "dec-c", "dec-d", "dec-e", "neox-a", "neox-b", "gptj-a", "gptj-b",
        "phi-a", "neo-a", "neo-b", "opt-a", "opt-b", "gemma-a", "gemma2-a", "gemma3-a", "phi3-a",
        "olmo2-a"
    )]
    config: &str,
) {
    let dir = fixtures().join(config);
    let bridge = decoder_bridge(&dir);
    let python = read_json(&dir.join("bridge_hooks.json"));
    let all_theirs: Vec<String> = python["unprocessed"]["hook_dict_names"]
        .as_array()
        .expect("names")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    // A rotary model's `hook_pos_embed` is the rotary module's `hook_out`, which never fires.
    let rotary = all_theirs.iter().any(|n| n == "rotary_emb.hook_out");
    let theirs: BTreeSet<String> = all_theirs
        .into_iter()
        .filter(|n| !(rotary && (n == "rotary_emb.hook_out" || n == "hook_pos_embed")))
        .collect();
    // GPT-J and Phi: the one LayerNorm of a block is also `ln2` here (the MLP's side), as in the
    // HookedTransformer; the Python bridge has only `ln1`.
    let shared_norm = config.starts_with("gptj") || config.starts_with("phi-");
    let all_ours = bridge.hook_dict_names();
    if shared_norm {
        assert!(
            all_ours.contains(&"blocks.0.ln2.hook_normalized".to_owned()),
            "{config}: ln2 is there"
        );
    }
    let ours: BTreeSet<String> = all_ours
        .into_iter()
        .filter(|n| !(shared_norm && n.contains(".ln2.")))
        .collect();
    assert_eq!(
        ours.difference(&theirs).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "names only the Rust bridge has"
    );
    assert_eq!(
        theirs.difference(&ours).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "names only the Python bridge has"
    );
    let aliases: BTreeMap<String, String> = bridge.hook_aliases().into_iter().collect();
    assert!(
        !aliases.contains_key("blocks.0.hook_resid_mid"),
        "a point of its own"
    );
    for (alias, target) in python["unprocessed"]["aliases"]
        .as_object()
        .expect("aliases")
    {
        if (rotary && alias == "hook_pos_embed") || alias.ends_with("hook_resid_mid") {
            continue;
        }
        assert_eq!(
            aliases.get(alias).map(String::as_str),
            target.as_str(),
            "{alias}"
        );
    }
}
