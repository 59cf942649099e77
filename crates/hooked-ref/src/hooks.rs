//! The hook points of a HookedTransformer, registered in TransformerLens's `hook_dict` order.

use std::sync::Arc;

use hookpoint::{HookPoint, HookRegistry};

use lens_core::config::{NormPlacement, QkNorm};

use crate::config::HookedTransformerConfig;

/// Hook points of a LayerNorm (`ln1`, `ln2`, `ln_final`).
pub(crate) struct LnHooks {
    pub scale: Arc<HookPoint>,
    pub normalized: Arc<HookPoint>,
}

/// Hook points of one block.
pub(crate) struct BlockHooks {
    pub ln1: LnHooks,
    pub ln2: LnHooks,
    pub k: Arc<HookPoint>,
    pub q: Arc<HookPoint>,
    pub v: Arc<HookPoint>,
    pub z: Arc<HookPoint>,
    pub attn_scores: Arc<HookPoint>,
    pub pattern: Arc<HookPoint>,
    pub result: Arc<HookPoint>,
    pub mlp_pre: Arc<HookPoint>,
    pub mlp_post: Arc<HookPoint>,
    pub attn_in: Arc<HookPoint>,
    pub q_input: Arc<HookPoint>,
    pub k_input: Arc<HookPoint>,
    pub v_input: Arc<HookPoint>,
    pub mlp_in: Arc<HookPoint>,
    pub attn_out: Arc<HookPoint>,
    pub mlp_out: Arc<HookPoint>,
    pub resid_pre: Arc<HookPoint>,
    /// The residual between attention and MLP (`None` in a parallel block, which has none).
    pub resid_mid: Option<Arc<HookPoint>>,
    pub resid_post: Arc<HookPoint>,
    /// Rotary attention: queries and keys after rotation.
    pub rot_q: Option<Arc<HookPoint>>,
    pub rot_k: Option<Arc<HookPoint>>,
    /// A gated MLP: the linear (non-gate) branch, `x W_in`.
    pub mlp_pre_linear: Option<Arc<HookPoint>>,
    /// The q/k RMSNorms (Qwen3, Gemma 3: per head; OLMo-2: over the projection).
    pub q_norm: Option<LnHooks>,
    pub k_norm: Option<LnHooks>,
    /// Gemma 2's and 3's norms of the sublayers' outputs.
    pub ln1_post: Option<LnHooks>,
    pub ln2_post: Option<LnHooks>,
}

/// Every hook point of the model.
pub(crate) struct ModelHooks {
    pub tokens: Option<Arc<HookPoint>>,
    pub embed: Arc<HookPoint>,
    /// A projected embedding's hook (`hook_project_in`, OPT-350m).
    pub project_in: Option<Arc<HookPoint>>,
    /// A learned positional embedding's hook (`None` under rotary attention).
    pub pos_embed: Option<Arc<HookPoint>>,
    pub blocks: Vec<BlockHooks>,
    /// `None` where the model has no final norm.
    pub ln_final: Option<LnHooks>,
    pub unembed_in: Arc<HookPoint>,
    pub unembed_out: Arc<HookPoint>,
}

fn ln_hooks(registry: &mut HookRegistry, prefix: &str) -> LnHooks {
    LnHooks {
        scale: registry.register(format!("{prefix}.hook_scale")),
        normalized: registry.register(format!("{prefix}.hook_normalized")),
    }
}

impl ModelHooks {
    /// Registers every hook point (TransformerLens's module order) and gates the optional ones.
    pub fn register(registry: &mut HookRegistry, cfg: &HookedTransformerConfig) -> ModelHooks {
        let embed = registry.register("hook_embed");
        let project_in = cfg
            .d_embed
            .is_some()
            .then(|| registry.register("hook_project_in"));
        let pos_embed = cfg
            .rotary
            .is_none()
            .then(|| registry.register("hook_pos_embed"));
        let tokens = cfg
            .use_hook_tokens
            .then(|| registry.register("hook_tokens"));
        let blocks = (0..cfg.n_layers)
            .map(|l| Self::block(registry, cfg, l))
            .collect();
        let ln_final = cfg.final_norm.then(|| ln_hooks(registry, "ln_final"));
        let unembed_in = registry.register("unembed.hook_in");
        let unembed_out = registry.register("unembed.hook_out");
        ModelHooks {
            tokens,
            embed,
            project_in,
            pos_embed,
            blocks,
            ln_final,
            unembed_in,
            unembed_out,
        }
    }

    fn block(registry: &mut HookRegistry, cfg: &HookedTransformerConfig, layer: i64) -> BlockHooks {
        let p = |s: &str| format!("blocks.{layer}.{s}");
        let sandwich = cfg.norm_placement == NormPlacement::BeforeAndAfter;
        let ln1 = ln_hooks(registry, &p("ln1"));
        let ln1_post = sandwich.then(|| ln_hooks(registry, &p("ln1_post")));
        let ln2 = ln_hooks(registry, &p("ln2"));
        let ln2_post = sandwich.then(|| ln_hooks(registry, &p("ln2_post")));
        let qk_norm = cfg.qk_norm != QkNorm::None;
        let q_norm = qk_norm.then(|| ln_hooks(registry, &p("attn.q_norm")));
        let k_norm = qk_norm.then(|| ln_hooks(registry, &p("attn.k_norm")));
        let mut reg = |s: &str| registry.register(p(s));
        let hooks = BlockHooks {
            ln1,
            ln2,
            k: reg("attn.hook_k"),
            q: reg("attn.hook_q"),
            v: reg("attn.hook_v"),
            z: reg("attn.hook_z"),
            attn_scores: reg("attn.hook_attn_scores"),
            pattern: reg("attn.hook_pattern"),
            result: reg("attn.hook_result"),
            mlp_pre: reg("mlp.hook_pre"),
            mlp_post: reg("mlp.hook_post"),
            attn_in: reg("hook_attn_in"),
            q_input: reg("hook_q_input"),
            k_input: reg("hook_k_input"),
            v_input: reg("hook_v_input"),
            mlp_in: reg("hook_mlp_in"),
            attn_out: reg("hook_attn_out"),
            mlp_out: reg("hook_mlp_out"),
            resid_pre: reg("hook_resid_pre"),
            resid_mid: (!cfg.parallel_attn_mlp).then(|| reg("hook_resid_mid")),
            resid_post: reg("hook_resid_post"),
            rot_q: None,
            rot_k: None,
            mlp_pre_linear: None,
            q_norm,
            k_norm,
            ln1_post,
            ln2_post,
        };
        let mut hooks = hooks;
        if cfg.rotary.is_some() {
            hooks.rot_k = Some(registry.register(p("attn.hook_rot_k")));
            hooks.rot_q = Some(registry.register(p("attn.hook_rot_q")));
        }
        if cfg.gated_mlp {
            hooks.mlp_pre_linear = Some(registry.register(p("mlp.hook_pre_linear")));
        }
        let gates = [
            ("attn.hook_result", "use_attn_result", cfg.use_attn_result),
            ("hook_attn_in", "use_attn_in", cfg.use_attn_in),
            (
                "hook_q_input",
                "use_split_qkv_input",
                cfg.use_split_qkv_input,
            ),
            (
                "hook_k_input",
                "use_split_qkv_input",
                cfg.use_split_qkv_input,
            ),
            (
                "hook_v_input",
                "use_split_qkv_input",
                cfg.use_split_qkv_input,
            ),
            ("hook_mlp_in", "use_hook_mlp_in", cfg.use_hook_mlp_in),
        ];
        for (name, flag, enabled) in gates {
            registry
                .set_gate(&p(name), flag, enabled)
                .expect("registered just above");
        }
        hooks
    }
}

/// The hook names a HookedTransformer with configuration `cfg` registers, in TransformerLens's
/// `hook_dict` order (gated hooks included): the names a TransformerLens `ActivationCache` of
/// such a model can hold. No weights are needed.
pub fn hook_names(cfg: &HookedTransformerConfig) -> Vec<String> {
    let mut registry = HookRegistry::new();
    ModelHooks::register(&mut registry, cfg);
    registry.names().map(str::to_owned).collect()
}
