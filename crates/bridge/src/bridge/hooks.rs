//! The bridge's hook points: one per [`Site`], under the Python TransformerBridge's component
//! names (`embed.hook_out`, `blocks.0.attn.q.hook_out`, ...), plus the TransformerLens names as
//! aliases (`hook_embed`, `blocks.0.attn.hook_q`, ...). See `docs/bridge-hook-names.md`.

use std::collections::HashMap;
use std::sync::Arc;

use hookpoint::{HookPoint, HookRegistry};
use lens_core::model::{ModelError, ModelResult};
use tch::Tensor;

use crate::tap::{BlockSite, LinSite, LnSite, MaskStyle, Passed, Projection, Site, Tap, TlPaths};

fn ln_suffix(site: LnSite) -> &'static str {
    match site {
        LnSite::In => "hook_in",
        LnSite::Out => "hook_out",
        LnSite::Normalized => "hook_normalized",
        LnSite::Scale => "hook_scale",
    }
}

fn lin_suffix(site: LinSite) -> &'static str {
    match site {
        LinSite::In => "hook_in",
        LinSite::Out => "hook_out",
    }
}

/// The canonical hook name of a site.
pub(crate) fn site_name(site: Site) -> String {
    match site {
        Site::EmbedIn => "embed.hook_in".into(),
        Site::EmbedOut => "embed.hook_out".into(),
        Site::PosEmbedIn => "pos_embed.hook_in".into(),
        Site::PosEmbedOut => "pos_embed.hook_out".into(),
        Site::Projection(Projection::In, s) => format!("project_in.{}", lin_suffix(s)),
        Site::Projection(Projection::Out, s) => format!("project_out.{}", lin_suffix(s)),
        Site::LnFinal(s) => format!("ln_final.{}", ln_suffix(s)),
        Site::UnembedIn => "unembed.hook_in".into(),
        Site::UnembedOut => "unembed.hook_out".into(),
        Site::RotaryIn => "rotary_emb.hook_in".into(),
        Site::RotaryCos => "rotary_emb.hook_cos".into(),
        Site::RotarySin => "rotary_emb.hook_sin".into(),
        Site::Block(l, s) => {
            let rest = match s {
                BlockSite::In => "hook_in".to_string(),
                BlockSite::Out => "hook_out".to_string(),
                BlockSite::MlpIn => "hook_mlp_in".to_string(),
                BlockSite::ResidMid => "hook_resid_mid".to_string(),
                BlockSite::Ln1(s) => format!("ln1.{}", ln_suffix(s)),
                BlockSite::Ln2(s) => format!("ln2.{}", ln_suffix(s)),
                BlockSite::Ln1Post(s) => format!("ln1_post.{}", ln_suffix(s)),
                BlockSite::Ln2Post(s) => format!("ln2_post.{}", ln_suffix(s)),
                BlockSite::AttnIn => "attn.hook_in".to_string(),
                BlockSite::AttnOut => "attn.hook_out".to_string(),
                BlockSite::AttnScores => "attn.hook_attn_scores".to_string(),
                BlockSite::Pattern => "attn.hook_pattern".to_string(),
                BlockSite::HiddenStates => "attn.hook_hidden_states".to_string(),
                BlockSite::Result => "attn.hook_result".to_string(),
                BlockSite::AttnInput => "attn.hook_attn_in".to_string(),
                BlockSite::QInput => "attn.hook_q_input".to_string(),
                BlockSite::KInput => "attn.hook_k_input".to_string(),
                BlockSite::VInput => "attn.hook_v_input".to_string(),
                BlockSite::Q(s) => format!("attn.q.{}", lin_suffix(s)),
                BlockSite::K(s) => format!("attn.k.{}", lin_suffix(s)),
                BlockSite::V(s) => format!("attn.v.{}", lin_suffix(s)),
                BlockSite::Qkv(s) => format!("attn.qkv.{}", lin_suffix(s)),
                BlockSite::O(s) => format!("attn.o.{}", lin_suffix(s)),
                BlockSite::MlpCompIn => "mlp.hook_in".to_string(),
                BlockSite::MlpCompOut => "mlp.hook_out".to_string(),
                BlockSite::MlpFc(s) => format!("mlp.in.{}", lin_suffix(s)),
                BlockSite::MlpProj(s) => format!("mlp.out.{}", lin_suffix(s)),
                BlockSite::MlpGate(s) => format!("mlp.gate.{}", lin_suffix(s)),
                BlockSite::RotQ => "attn.hook_rot_q".to_string(),
                BlockSite::RotK => "attn.hook_rot_k".to_string(),
                BlockSite::Cos => "attn.hook_cos".to_string(),
                BlockSite::Sin => "attn.hook_sin".to_string(),
                BlockSite::QNorm(s) => format!("attn.q_norm.{}", ln_suffix(s)),
                BlockSite::QNormed => "attn.hook_q_normed".to_string(),
                BlockSite::KNormed => "attn.hook_k_normed".to_string(),
                BlockSite::KNorm(s) => format!("attn.k_norm.{}", ln_suffix(s)),
            };
            format!("blocks.{l}.{rest}")
        }
    }
}

/// The sites of one block, in the Python bridge's `hook_dict` order (with `hook_resid_mid`, a
/// hook point of its own here, after `hook_mlp_in`).
fn block_sites(l: usize) -> Vec<Site> {
    use BlockSite as B;
    let (ln, lin) = (norm_sites, linear_sites);
    let mut sites = RESIDUAL_SITES.to_vec();
    sites.extend(ln(B::Ln1));
    sites.extend(ATTENTION_SITES);
    for f in [B::Q, B::K, B::V, B::Qkv, B::O] {
        sites.extend(lin(f));
    }
    sites.extend(ln(B::Ln2));
    sites.extend([B::MlpCompIn, B::MlpCompOut]);
    sites.extend(lin(B::MlpFc));
    sites.extend(lin(B::MlpProj));
    sites.into_iter().map(|s| Site::Block(l, s)).collect()
}

/// A block's residual-stream sites, first in every architecture's `hook_dict`.
const RESIDUAL_SITES: [BlockSite; 4] = [
    BlockSite::In,
    BlockSite::Out,
    BlockSite::MlpIn,
    BlockSite::ResidMid,
];

/// The attention module's own sites and TransformerLens's per-head inputs, as every
/// architecture lists them.
const ATTENTION_SITES: [BlockSite; 10] = [
    BlockSite::AttnIn,
    BlockSite::AttnOut,
    BlockSite::AttnScores,
    BlockSite::Pattern,
    BlockSite::HiddenStates,
    BlockSite::Result,
    BlockSite::AttnInput,
    BlockSite::QInput,
    BlockSite::KInput,
    BlockSite::VInput,
];

/// A normalisation's four sites.
fn norm_sites<S>(site: fn(LnSite) -> S) -> [S; 4] {
    [LnSite::In, LnSite::Out, LnSite::Normalized, LnSite::Scale].map(site)
}

/// A linear layer's two sites.
fn linear_sites(site: fn(LinSite) -> BlockSite) -> [BlockSite; 2] {
    [LinSite::In, LinSite::Out].map(site)
}

/// Every site of a model with `n_layers` blocks, in registration (`hook_dict`) order.
pub(crate) fn all_sites(n_layers: usize) -> Vec<Site> {
    let mut sites = vec![
        Site::EmbedIn,
        Site::EmbedOut,
        Site::PosEmbedIn,
        Site::PosEmbedOut,
    ];
    for l in 0..n_layers {
        sites.extend(block_sites(l));
    }
    sites.extend(norm_sites(Site::LnFinal));
    sites.extend([Site::UnembedIn, Site::UnembedOut]);
    sites
}

/// The TransformerLens names of a block's attention and residual hook points, in the Python
/// bridge's order, which every architecture shares (its MLP's names follow them).
const BLOCK_ALIASES: [(&str, BlockSite); 12] = [
    ("hook_attn_in", BlockSite::AttnInput),
    ("hook_k_input", BlockSite::KInput),
    ("hook_attn_out", BlockSite::AttnOut),
    ("hook_q_input", BlockSite::QInput),
    ("hook_v_input", BlockSite::VInput),
    ("attn.hook_k", BlockSite::K(LinSite::Out)),
    ("attn.hook_z", BlockSite::O(LinSite::In)),
    ("attn.hook_q", BlockSite::Q(LinSite::Out)),
    ("attn.hook_v", BlockSite::V(LinSite::Out)),
    ("hook_resid_pre", BlockSite::In),
    ("hook_resid_post", BlockSite::Out),
    ("hook_mlp_out", BlockSite::MlpCompOut),
];

/// The TransformerLens names, each an alias of a hook point, in the Python bridge's order.
pub(crate) fn aliases(n_layers: usize) -> Vec<(String, Site)> {
    use BlockSite as B;
    let mut out = vec![
        ("hook_embed".to_string(), Site::EmbedOut),
        ("hook_pos_embed".to_string(), Site::PosEmbedOut),
        ("hook_unembed".to_string(), Site::UnembedOut),
    ];
    for l in 0..n_layers {
        let mlp = [
            ("mlp.hook_pre", B::MlpFc(LinSite::Out)),
            ("mlp.hook_post", B::MlpProj(LinSite::In)),
        ];
        for (name, site) in BLOCK_ALIASES.into_iter().chain(mlp) {
            out.push((format!("blocks.{l}.{name}"), Site::Block(l, site)));
        }
    }
    out
}

/// A gated site: the option it needs, and whether that option is in effect under `paths`.
fn gate(site: Site, paths: &TlPaths) -> Option<(&'static str, bool)> {
    let Site::Block(_, s) = site else { return None };
    Some(match s {
        BlockSite::Result => ("use_attn_result", paths.use_attn_result),
        BlockSite::AttnInput => ("use_attn_in", paths.use_attn_in),
        BlockSite::QInput | BlockSite::KInput | BlockSite::VInput => {
            ("use_split_qkv_input", paths.use_split_qkv_input)
        }
        BlockSite::MlpIn => ("use_hook_mlp_in", paths.use_hook_mlp_in),
        BlockSite::AttnIn | BlockSite::Qkv(_) => (
            "use_split_qkv_input and use_attn_in both off",
            !paths.per_head_inputs(),
        ),
        _ => return None,
    })
}

/// An architecture's hook points and TransformerLens aliases, in the Python bridge's
/// `hook_dict` order.
pub(crate) struct Layout {
    sites: Vec<Site>,
    aliases: Vec<(String, Site)>,
}

impl Layout {
    /// GPT-2's (`GPT2LMHeadModel`).
    pub fn gpt2(n_layers: usize) -> Self {
        Layout {
            sites: all_sites(n_layers),
            aliases: aliases(n_layers),
        }
    }

    /// The Llama family's, under the names of TransformerLens 3.9.0's Llama, Mistral, Qwen2
    /// and Qwen3 adapters (tests/fixtures/dec-*/bridge_hooks.json). Declined as for GPT-2:
    /// `hook_resid_mid` is a point of its own; and the rotary module's `hook_out`, which never
    /// fires there (and its alias `hook_pos_embed`), is not registered, as a rotary
    /// HookedTransformer has no `hook_pos_embed`.
    pub fn llama(cfg: &lens_core::LlamaConfig) -> Self {
        use lens_core::config::{NormPlacement, QkNorm};
        use BlockSite as B;
        let (ln, lin) = (norm_sites, linear_sites);
        let qk_norm = cfg.qk_norm != QkNorm::None;
        let placement = cfg.norm_placement;
        let block = |_| {
            let mut block = RESIDUAL_SITES.to_vec();
            block.extend(ln(B::Ln1));
            if placement == NormPlacement::BeforeAndAfter {
                block.extend(ln(B::Ln1Post));
            }
            block.extend(ln(B::Ln2));
            if placement == NormPlacement::BeforeAndAfter {
                block.extend(ln(B::Ln2Post));
            }
            block.extend(ATTENTION_SITES);
            block.extend([B::RotK, B::RotQ, B::Cos, B::Sin]);
            if qk_norm {
                block.extend([B::QNormed, B::KNormed]);
            }
            for f in [B::Q, B::K, B::V] {
                block.extend(lin(f));
            }
            if cfg.fused_projections {
                block.extend(lin(B::Qkv));
            }
            block.extend(lin(B::O));
            if qk_norm {
                block.extend(ln(B::QNorm));
                block.extend(ln(B::KNorm));
            }
            block.extend([B::MlpCompIn, B::MlpCompOut]);
            for f in [B::MlpGate, B::MlpFc, B::MlpProj] {
                block.extend(lin(f));
            }
            block
        };
        let mlp = [
            ("mlp.hook_pre", B::MlpGate(LinSite::Out)),
            ("mlp.hook_pre_linear", B::MlpFc(LinSite::Out)),
            ("mlp.hook_post", B::MlpProj(LinSite::In)),
        ];
        let mut layout = Self::rotary(cfg.num_hidden_layers as usize, block, &mlp);
        // Where a norm follows a sublayer, TransformerLens's `hook_attn_out` / `hook_mlp_out`
        // are that norm's output: what joins the residual stream.
        let (attn_out, mlp_out) = match placement {
            NormPlacement::Before => (B::AttnOut, B::MlpCompOut),
            NormPlacement::BeforeAndAfter => (B::Ln1Post(LnSite::Out), B::Ln2Post(LnSite::Out)),
            NormPlacement::After => (B::Ln1(LnSite::Out), B::Ln2(LnSite::Out)),
        };
        for (alias, site) in &mut layout.aliases {
            if let Site::Block(l, _) = *site {
                if alias.ends_with(".hook_attn_out") {
                    *site = Site::Block(l, attn_out);
                } else if alias.ends_with(".hook_mlp_out") {
                    *site = Site::Block(l, mlp_out);
                }
            }
        }
        layout
    }

    /// GPT-NeoX's, under the names of TransformerLens 3.9.0's GPT-NeoX adapter
    /// (tests/fixtures/neox-*/bridge_hooks.json): the fused `attn.qkv` with its q, k and v
    /// slices, rotary sites, a plain MLP. A parallel block has no `hook_resid_mid` (nothing sits
    /// between attention and MLP), as in the Python bridge. Declined as for the Llama family:
    /// the rotary module's `hook_out` and its alias `hook_pos_embed` (they never fire there).
    pub fn gpt_neox(n_layers: usize, parallel: bool) -> Self {
        use BlockSite as B;
        let (ln, lin) = (norm_sites, linear_sites);
        let block = |_| {
            let mut block: Vec<BlockSite> = RESIDUAL_SITES
                .into_iter()
                .filter(|s| !(parallel && *s == B::ResidMid))
                .collect();
            block.extend(ln(B::Ln1));
            block.extend(ln(B::Ln2));
            block.extend(ATTENTION_SITES);
            block.extend([B::RotK, B::RotQ, B::Cos, B::Sin]);
            for f in [B::Q, B::K, B::V, B::Qkv, B::O] {
                block.extend(lin(f));
            }
            block.extend([B::MlpCompIn, B::MlpCompOut]);
            for f in [B::MlpFc, B::MlpProj] {
                block.extend(lin(f));
            }
            block
        };
        let mlp = [
            ("mlp.hook_pre", B::MlpFc(LinSite::Out)),
            ("mlp.hook_post", B::MlpProj(LinSite::In)),
        ];
        Self::rotary(n_layers, block, &mlp)
    }

    /// GPT-J's and Phi's, under the names of TransformerLens 3.9.0's adapters for them
    /// (tests/fixtures/gptj-*/, phi-*/bridge_hooks.json), plus `ln2`: the block's one
    /// LayerNorm seen from the MLP's side, which the Python bridge does not have (its `ln1`
    /// then carries both branches' gradients) and the HookedTransformer does. No
    /// `hook_resid_mid` (a parallel block has none). Phi has a rotary module with sites;
    /// GPT-J's sines and cosines come from a table inside each attention. Phi's `qk_layernorm`
    /// adds `attn.q_norm` and `attn.k_norm`, as the HookedTransformer's.
    pub fn parallel(n_layers: usize, rotary_module: bool, qk_layernorm: bool) -> Self {
        use BlockSite as B;
        let (ln, lin) = (norm_sites, linear_sites);
        let block = |_| {
            let mut block: Vec<BlockSite> = RESIDUAL_SITES
                .into_iter()
                .filter(|s| *s != B::ResidMid)
                .collect();
            block.extend(ln(B::Ln1));
            block.extend(ln(B::Ln2));
            block.extend(ATTENTION_SITES);
            block.extend([B::RotK, B::RotQ, B::Cos, B::Sin]);
            for f in [B::Q, B::K, B::V, B::O] {
                block.extend(lin(f));
            }
            if qk_layernorm {
                block.extend(ln(B::QNorm));
                block.extend(ln(B::KNorm));
            }
            block.extend([B::MlpCompIn, B::MlpCompOut]);
            for f in [B::MlpFc, B::MlpProj] {
                block.extend(lin(f));
            }
            block
        };
        let mlp = [
            ("mlp.hook_pre", B::MlpFc(LinSite::Out)),
            ("mlp.hook_post", B::MlpProj(LinSite::In)),
        ];
        let mut layout = Self::rotary(n_layers, block, &mlp);
        if !rotary_module {
            layout.sites.retain(|s| {
                // GPT-J's sines and cosines are a table lookup inside HF's attention, with
                // no module and no hook of the Python bridge's.
                !matches!(
                    s,
                    Site::RotaryIn
                        | Site::RotaryCos
                        | Site::RotarySin
                        | Site::Block(_, BlockSite::Cos | BlockSite::Sin)
                )
            });
        }
        layout
    }

    /// GPT-Neo's, under the names of TransformerLens 3.9.0's GPT-Neo adapter
    /// (tests/fixtures/neo-*/bridge_hooks.json): GPT-2's with separate q, k and v projections
    /// and no fused `attn.qkv`; `hook_resid_mid` a point of its own (difference 1).
    pub fn gpt_neo(n_layers: usize) -> Self {
        use BlockSite as B;
        let (ln, lin) = (norm_sites, linear_sites);
        let mut sites = vec![
            Site::EmbedIn,
            Site::EmbedOut,
            Site::PosEmbedIn,
            Site::PosEmbedOut,
        ];
        for l in 0..n_layers {
            let mut block = RESIDUAL_SITES.to_vec();
            block.extend(ln(B::Ln1));
            block.extend(ATTENTION_SITES);
            for f in [B::Q, B::K, B::V, B::O] {
                block.extend(lin(f));
            }
            block.extend(ln(B::Ln2));
            block.extend([B::MlpCompIn, B::MlpCompOut]);
            block.extend(lin(B::MlpFc));
            block.extend(lin(B::MlpProj));
            sites.extend(block.into_iter().map(|s| Site::Block(l, s)));
        }
        sites.extend(norm_sites(Site::LnFinal));
        sites.extend([Site::UnembedIn, Site::UnembedOut]);
        Layout {
            sites,
            aliases: aliases(n_layers),
        }
    }

    /// OPT's, under the names of TransformerLens 3.9.0's OPT adapter
    /// (tests/fixtures/opt-*/bridge_hooks.json): GPT-Neo's sites, with `hook_mlp_out` on the
    /// second projection's output (the adapter's MLP has no module of its own around them; the
    /// values are the same). OPT-350m's layout (the adapter's too) has `project_in` and
    /// `project_out` (`hook_project_in`, as the HookedTransformer's) and no `ln_final`.
    pub fn opt(cfg: &lens_core::OptConfig) -> Self {
        let n_layers = cfg.num_hidden_layers as usize;
        let mut layout = Self::gpt_neo(n_layers);
        if !cfg.has_final_layer_norm() {
            layout.sites.retain(|s| !matches!(s, Site::LnFinal(_)));
        }
        if cfg.projects() {
            let after_embedding = 1 + layout
                .sites
                .iter()
                .position(|s| *s == Site::EmbedOut)
                .unwrap_or(0);
            let project_in =
                [LinSite::In, LinSite::Out].map(|s| Site::Projection(Projection::In, s));
            layout
                .sites
                .splice(after_embedding..after_embedding, project_in);
            let before_unembedding = layout
                .sites
                .iter()
                .position(|s| *s == Site::UnembedIn)
                .unwrap_or(layout.sites.len());
            let project_out =
                [LinSite::In, LinSite::Out].map(|s| Site::Projection(Projection::Out, s));
            layout
                .sites
                .splice(before_unembedding..before_unembedding, project_out);
            layout.aliases.push((
                "hook_project_in".into(),
                Site::Projection(Projection::In, LinSite::Out),
            ));
        }
        for (alias, site) in &mut layout.aliases {
            if alias.ends_with(".hook_mlp_out") {
                if let Site::Block(l, _) = *site {
                    *site = Site::Block(l, BlockSite::MlpProj(LinSite::Out));
                }
            }
        }
        layout
    }

    /// A rotary model's layout: the embedding and the rotary module's sites, `block(l)` for each
    /// block, the final norm and the unembedding; the TransformerLens aliases every family
    /// shares, then the MLP's (`mlp`).
    fn rotary(
        n_layers: usize,
        block: impl Fn(usize) -> Vec<BlockSite>,
        mlp: &[(&str, BlockSite)],
    ) -> Self {
        let mut sites = vec![
            Site::EmbedIn,
            Site::EmbedOut,
            Site::RotaryIn,
            Site::RotaryCos,
            Site::RotarySin,
        ];
        for l in 0..n_layers {
            sites.extend(block(l).into_iter().map(|s| Site::Block(l, s)));
        }
        sites.extend(norm_sites(Site::LnFinal));
        sites.extend([Site::UnembedIn, Site::UnembedOut]);
        let mut aliases = vec![
            ("hook_embed".to_string(), Site::EmbedOut),
            ("hook_unembed".to_string(), Site::UnembedOut),
        ];
        for l in 0..n_layers {
            for &(name, site) in BLOCK_ALIASES.iter().chain(mlp) {
                aliases.push((format!("blocks.{l}.{name}"), Site::Block(l, site)));
            }
        }
        Layout { sites, aliases }
    }
}

/// The hook points of a bridge, by site, in a registry with the TransformerLens aliases.
pub(crate) struct BridgeHooks {
    pub registry: HookRegistry,
    points: HashMap<Site, Arc<HookPoint>>,
    sites: Vec<Site>,
    alias_list: Vec<(String, Site)>,
}

impl BridgeHooks {
    /// Registers every hook point and alias of `layout`, and gates the optional ones for
    /// `paths`.
    pub fn new(layout: Layout, paths: &TlPaths) -> Self {
        let mut registry = HookRegistry::new();
        let Layout {
            sites,
            aliases: alias_list,
        } = layout;
        let points = sites
            .iter()
            .map(|&site| (site, registry.register(site_name(site))))
            .collect();
        for (alias, site) in &alias_list {
            registry
                .add_alias(alias.clone(), &site_name(*site))
                .expect("alias targets are registered above");
        }
        let mut hooks = BridgeHooks {
            registry,
            points,
            sites,
            alias_list,
        };
        hooks.apply_gates(paths);
        hooks
    }

    /// Opens or closes the gated hook points for `paths`.
    pub fn apply_gates(&mut self, paths: &TlPaths) {
        for &site in &self.sites {
            if let Some((flag, enabled)) = gate(site, paths) {
                self.registry
                    .set_gate(&site_name(site), flag, enabled)
                    .expect("every site is registered");
            }
        }
    }

    /// Canonical names then aliases, in the Python bridge's `hook_dict` order.
    pub fn hook_dict_names(&self) -> Vec<String> {
        self.sites
            .iter()
            .map(|&s| site_name(s))
            .chain(self.alias_list.iter().map(|(a, _)| a.clone()))
            .collect()
    }

    /// Every alias with the canonical name it stands for, in `hook_dict` order.
    pub fn alias_pairs(&self) -> Vec<(String, String)> {
        self.alias_list
            .iter()
            .map(|(a, s)| (a.clone(), site_name(*s)))
            .collect()
    }

    /// The hook point of `site`; an error (not a panic) for a site this architecture's layout
    /// does not have, which would be a defect of the layout.
    fn point(&self, site: Site) -> ModelResult<&Arc<HookPoint>> {
        self.points.get(&site).ok_or_else(|| {
            ModelError::Unsupported(format!(
                "internal: the pass reached {}, which this architecture's bridge does not register",
                site_name(site)
            ))
        })
    }
}

/// The bridge's tap: every site runs its hook point; TransformerLens masking; the optional
/// paths the bridge's options enable.
pub(crate) struct BridgeTap<'a> {
    pub hooks: &'a BridgeHooks,
    pub paths: TlPaths,
}

impl Tap for BridgeTap<'_> {
    fn at(&self, site: Site, x: Tensor) -> ModelResult<Tensor> {
        Ok(self.hooks.point(site)?.run(x)?)
    }

    fn at_noting_edits(&self, site: Site, x: Tensor) -> ModelResult<Passed> {
        Ok(self.hooks.point(site)?.run_noting_edits(x)?)
    }

    fn hooked(&self, site: Site) -> bool {
        self.hooks.point(site).is_ok_and(|p| p.has_hooks())
    }

    fn mask_style(&self) -> MaskStyle {
        MaskStyle::NegInf
    }

    fn paths(&self) -> TlPaths {
        self.paths
    }
}
