//! Each architecture's weight table: every TransformerLens weight (`blocks.0.attn.W_Q`, ...) with
//! the HuggingFace parameter it lives in and the view that lays it out in TransformerLens's
//! layout. One table per architecture serves the HookedTransformer's conversion (the view,
//! copied out), the bridge's TransformerLens weights (the view of the live parameter, so a write
//! is seen by the model) and compatibility mode's read and write.

use std::collections::BTreeMap;

use tch::Tensor;

use crate::config::{
    GptNeoConfig, GptNeoxConfig, LlamaConfig, OptConfig, ParallelConfig, ParallelFamily,
    OPT_POSITION_OFFSET,
};
use crate::model::ModelDims;

/// How a TransformerLens weight is laid out on its HuggingFace parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// The parameter itself.
    Same,
    /// The first `n` rows (GPT-2's `W_pos` is `wpe[:n_ctx]`).
    Rows(i64),
    /// The rows after the first `n` (OPT's `W_pos` is `embed_positions[2:]`).
    SkipRows(i64),
    /// The transpose (`W_U` is `lm_head.weight.T`; an `nn.Linear` weight `[out, in]` is TL's
    /// `[in, out]`).
    Transpose,
    /// An `nn.Linear` projection `[heads * d_head, d]` as `[heads, d, d_head]`.
    LinearHeads {
        /// Heads.
        heads: i64,
        /// Head width.
        d_head: i64,
    },
    /// An `nn.Linear` output projection `[d, heads * d_head]` as `[heads, d_head, d]`.
    LinearHeadsOut {
        /// Heads.
        heads: i64,
        /// Head width.
        d_head: i64,
    },
    /// A bias `[heads * d_head]` as `[heads, d_head]`.
    HeadBias {
        /// Heads.
        heads: i64,
        /// Head width.
        d_head: i64,
    },
    /// Part `part` (q, k, v = 0, 1, 2) of a fused `Conv1D` `c_attn.weight` `[d, 3 d]` as
    /// `[heads, d, d_head]`.
    FusedQkv {
        /// 0, 1 or 2.
        part: i64,
        /// Heads.
        heads: i64,
        /// Head width.
        d_head: i64,
    },
    /// Part `part` of a fused `c_attn.bias` `[3 d]` as `[heads, d_head]`.
    FusedQkvBias {
        /// 0, 1 or 2.
        part: i64,
        /// Heads.
        heads: i64,
        /// Head width.
        d_head: i64,
    },
    /// Part `part` (q, k, v = 0, 1, 2) of GPT-NeoX's `query_key_value.weight` `[3 d, d]`, whose
    /// rows are per head `[h0: q k v][h1: q k v]...`, as `[heads, d, d_head]`.
    NeoxQkv {
        /// 0, 1 or 2.
        part: i64,
        /// Heads.
        heads: i64,
        /// Head width.
        d_head: i64,
    },
    /// Part `part` of GPT-NeoX's `query_key_value.bias` `[3 d]` as `[heads, d_head]`.
    NeoxQkvBias {
        /// 0, 1 or 2.
        part: i64,
        /// Heads.
        heads: i64,
        /// Head width.
        d_head: i64,
    },
    /// Rows `offset..offset + heads * d_head` of a fused `nn.Linear` projection (Phi-3's
    /// `qkv_proj`) as `[heads, d, d_head]`.
    LinearHeadsAt {
        /// The first row.
        offset: i64,
        /// Heads.
        heads: i64,
        /// Head width.
        d_head: i64,
    },
    /// Rows `offset..offset + rows` of a fused `nn.Linear` weight (Phi-3's `gate_up_proj`),
    /// transposed to `[in, rows]`.
    LinearRowsTransposed {
        /// The first row.
        offset: i64,
        /// How many rows.
        rows: i64,
    },
    /// A `Conv1D` output projection `[heads * d_head, d]` as `[heads, d_head, d]`.
    ConvHeadsOut {
        /// Heads.
        heads: i64,
        /// Head width.
        d_head: i64,
    },
}

impl View {
    /// The view of a HuggingFace parameter (or of its gradient), sharing its storage. Leading
    /// axes pass through, so the view of parameters stacked over layers (`[n_layers, ...]`) is
    /// the TransformerLens weights stacked over layers.
    pub fn apply(self, t: &Tensor) -> Tensor {
        let size = t.size();
        let lead = |rank: usize| size[..size.len().saturating_sub(rank)].to_vec();
        let shaped = |rank: usize, tail: &[i64]| [lead(rank), tail.to_vec()].concat();
        let last = |k: usize| size[size.len() - k];
        match self {
            View::Same => t.shallow_clone(),
            View::Rows(n) => t.narrow(-2, 0, n.min(last(2))),
            View::SkipRows(n) => t.narrow(-2, n, last(2) - n),
            View::Transpose => t.transpose(-2, -1),
            View::LinearHeads { heads, d_head } => t
                .view(shaped(2, &[heads, d_head, last(1)]).as_slice())
                .transpose(-2, -1),
            View::LinearHeadsOut { heads, d_head } => {
                // [.., d, heads, d_head] -> [.., heads, d_head, d]
                let lead = lead(2).len() as i64;
                let order: Vec<i64> = (0..lead).chain([lead + 1, lead + 2, lead]).collect();
                t.view(shaped(2, &[last(2), heads, d_head]).as_slice())
                    .permute(order.as_slice())
            }
            View::HeadBias { heads, d_head } => t.view(shaped(1, &[heads, d_head]).as_slice()),
            View::FusedQkv {
                part,
                heads,
                d_head,
            } => {
                let width = heads * d_head;
                t.narrow(-1, part * width, width)
                    .view(shaped(2, &[last(2), heads, d_head]).as_slice())
                    .transpose(-3, -2)
            }
            View::FusedQkvBias {
                part,
                heads,
                d_head,
            } => {
                let width = heads * d_head;
                t.narrow(-1, part * width, width)
                    .view(shaped(1, &[heads, d_head]).as_slice())
            }
            View::NeoxQkv {
                part,
                heads,
                d_head,
            } => t
                .view(shaped(2, &[heads, 3, d_head, last(1)]).as_slice())
                .select(-3, part)
                .transpose(-2, -1),
            View::NeoxQkvBias {
                part,
                heads,
                d_head,
            } => t
                .view(shaped(1, &[heads, 3, d_head]).as_slice())
                .select(-2, part),
            View::LinearHeadsAt {
                offset,
                heads,
                d_head,
            } => View::LinearHeads { heads, d_head }.apply(&t.narrow(-2, offset, heads * d_head)),
            View::LinearRowsTransposed { offset, rows } => {
                t.narrow(-2, offset, rows).transpose(-2, -1)
            }
            View::ConvHeadsOut { heads, d_head } => {
                t.view(shaped(2, &[heads, d_head, last(1)]).as_slice())
            }
        }
    }
}

/// How a TransformerLens weight's values relate to its HuggingFace parameter's (after the
/// view). Where they differ, the TransformerLens weight is a copy: a write goes back through
/// [`Value::to_hf`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    /// The same values: the TransformerLens weight is a view, writes reach the model.
    Same,
    /// One more, computed and kept in f32: Gemma's RMSNorms multiply by `1 + w` (in f32, as
    /// transformers does, whatever the model's dtype) and store `w`; TransformerLens stores the
    /// factor (rounded to the model's dtype, which ours does not do).
    PlusOne,
    /// Times a factor in the parameter's dtype: Gemma scales its embeddings by `sqrt(d_model)`
    /// at run time; TransformerLens folds the scale into `W_E`.
    Scaled(f64),
}

impl Value {
    /// The TransformerLens weight from the (viewed) HuggingFace parameter.
    pub fn to_tl(self, t: &Tensor) -> Tensor {
        match self {
            Value::Same => t.shallow_clone(),
            Value::PlusOne => t.to_kind(tch::Kind::Float) + 1.0,
            Value::Scaled(factor) => t * Tensor::from(factor).to_kind(t.kind()),
        }
    }

    /// The HuggingFace parameter's values from a TransformerLens weight.
    pub fn to_hf(self, t: &Tensor) -> Tensor {
        match self {
            Value::Same => t.shallow_clone(),
            Value::PlusOne => (t.to_kind(tch::Kind::Float) - 1.0).to_kind(t.kind()),
            Value::Scaled(factor) => t / Tensor::from(factor).to_kind(t.kind()),
        }
    }

    /// The gradient with respect to the TransformerLens weight from the parameter's.
    pub fn grad_to_tl(self, grad: &Tensor) -> Tensor {
        match self {
            Value::Same | Value::PlusOne => grad.shallow_clone(),
            Value::Scaled(factor) => grad / factor,
        }
    }

    /// The parameter's share of a gradient with respect to the TransformerLens weight (the
    /// chain rule through the relation: `grad_to_tl` undone).
    pub fn grad_to_hf(self, grad: &Tensor) -> Tensor {
        match self {
            Value::Same | Value::PlusOne => grad.shallow_clone(),
            Value::Scaled(factor) => grad * factor,
        }
    }
}

/// Where one TransformerLens weight comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    /// The HuggingFace parameter, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub hf: String,
    /// Its shape in the checkpoint (`-1`: any size on that axis).
    pub shape: Vec<i64>,
    /// How it is laid out as the TransformerLens weight.
    pub view: View,
    /// How the values relate (after the view).
    pub value: Value,
    /// The TransformerLens weight is a constant when the checkpoint has no such parameter (a
    /// bias the configuration leaves out, zero; a LayerNorm without parameters, weight one and
    /// bias zero: TransformerLens's layout always has them).
    pub if_absent: Option<Constant>,
}

/// A TransformerLens weight a checkpoint leaves out: `fill` everywhere, in `shape`.
#[derive(Clone, Debug, PartialEq)]
pub struct Constant {
    /// The weight's shape.
    pub shape: Vec<i64>,
    /// Its value (0 for a bias, 1 for a LayerNorm's weight).
    pub fill: f64,
}

impl Constant {
    /// The weight, in `kind` on `device`.
    pub fn tensor(&self, kind: tch::Kind, device: tch::Device) -> Tensor {
        Tensor::full(self.shape.as_slice(), self.fill, (kind, device))
    }
}

impl Source {
    /// The TransformerLens weight from the HuggingFace parameter: its view, then its values.
    /// A view of the parameter (writes reach it) when the values are the same.
    pub fn tl_of(&self, hf: &Tensor) -> Tensor {
        self.value.to_tl(&self.view.apply(hf))
    }

    /// The TransformerLens weight's gradient from the parameter's.
    pub fn tl_grad_of(&self, hf_grad: &Tensor) -> Tensor {
        self.value.grad_to_tl(&self.view.apply(hf_grad))
    }

    /// Writes TransformerLens weight values `tl` into the HuggingFace parameter `hf` (through
    /// the view, with the values changed back), in `hf`'s dtype.
    pub fn write(&self, hf: &Tensor, tl: &Tensor) -> Result<(), tch::TchError> {
        let mut view = self.view.apply(hf);
        let values = match self.value {
            // `w` from `1 + w` in f32, then rounded once, to the parameter's dtype.
            Value::PlusOne => self.value.to_hf(&tl.to_kind(tch::Kind::Float)),
            _ => self.value.to_hf(&tl.to_kind(view.kind())),
        };
        view.f_copy_(&values.to_kind(view.kind()))
    }
}

/// An architecture's weight table, in TransformerLens's state-dict order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WeightMap {
    entries: Vec<(String, Source)>,
}

impl WeightMap {
    fn push(&mut self, tl: String, hf: String, shape: &[i64], view: View) {
        self.entries.push((
            tl,
            Source {
                hf,
                shape: shape.to_vec(),
                view,
                value: Value::Same,
                if_absent: None,
            },
        ));
    }

    /// Marks the last entry's values as related to its parameter's by `value`.
    fn with_value(&mut self, value: Value) {
        if let Some((_, source)) = self.entries.last_mut() {
            source.value = value;
        }
    }

    fn push_optional(
        &mut self,
        tl: String,
        hf: String,
        shape: &[i64],
        view: View,
        tl_shape: &[i64],
    ) {
        self.push_or_constant(tl, hf, shape, view, tl_shape, 0.0);
    }

    /// An entry whose weight is `fill` in `tl_shape` when the checkpoint lacks the parameter.
    fn push_or_constant(
        &mut self,
        tl: String,
        hf: String,
        shape: &[i64],
        view: View,
        tl_shape: &[i64],
        fill: f64,
    ) {
        self.push(tl, hf, shape, view);
        if let Some((_, source)) = self.entries.last_mut() {
            source.if_absent = Some(Constant {
                shape: tl_shape.to_vec(),
                fill,
            });
        }
    }

    /// Where TransformerLens weight `tl` comes from.
    pub fn get(&self, tl: &str) -> Option<&Source> {
        self.entries.iter().find(|(n, _)| n == tl).map(|(_, s)| s)
    }

    /// Every TransformerLens weight name, in state-dict order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// Every entry, in state-dict order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Source)> {
        self.entries.iter().map(|(n, s)| (n.as_str(), s))
    }

    /// How many TransformerLens weights read each HuggingFace parameter (a tied embedding is
    /// read twice: `W_E` and `W_U`).
    pub fn uses(&self) -> BTreeMap<&str, usize> {
        let mut uses = BTreeMap::new();
        for (_, source) in &self.entries {
            *uses.entry(source.hf.as_str()).or_insert(0) += 1;
        }
        uses
    }
}

/// GPT-2's table (`GPT2LMHeadModel`): `Conv1D` weights are already `[in, out]`, q, k and v are
/// thirds of `c_attn`; `W_U` is `lm_head.weight.T` (`wte` itself while tied); `b_U` is
/// `lm_head.bias`, which HF's GPT-2 does not have (zero; the bridge adds one).
pub fn gpt2(dims: &ModelDims, tie_word_embeddings: bool) -> WeightMap {
    let (d, h, m, v) = (dims.d_model, dims.n_heads, dims.d_mlp, dims.d_vocab);
    let dh = dims.d_head;
    let mut map = WeightMap::default();
    map.push(
        "embed.W_E".into(),
        "transformer.wte.weight".into(),
        &[v, d],
        View::Same,
    );
    map.push(
        "pos_embed.W_pos".into(),
        "transformer.wpe.weight".into(),
        &[-1, d],
        View::Rows(dims.n_ctx),
    );
    for l in 0..dims.n_layers {
        let tl = |s: &str| format!("blocks.{l}.{s}");
        let hf = |s: &str| format!("transformer.h.{l}.{s}");
        let qkv = |part| View::FusedQkv {
            part,
            heads: h,
            d_head: dh,
        };
        let qkv_b = |part| View::FusedQkvBias {
            part,
            heads: h,
            d_head: dh,
        };
        map.push(tl("ln1.w"), hf("ln_1.weight"), &[d], View::Same);
        map.push(tl("ln1.b"), hf("ln_1.bias"), &[d], View::Same);
        for (i, w) in ["W_Q", "W_K", "W_V"].into_iter().enumerate() {
            map.push(
                tl(&format!("attn.{w}")),
                hf("attn.c_attn.weight"),
                &[d, 3 * d],
                qkv(i as i64),
            );
        }
        let heads_out = View::ConvHeadsOut {
            heads: h,
            d_head: dh,
        };
        map.push(tl("attn.W_O"), hf("attn.c_proj.weight"), &[d, d], heads_out);
        for (i, b) in ["b_Q", "b_K", "b_V"].into_iter().enumerate() {
            map.push(
                tl(&format!("attn.{b}")),
                hf("attn.c_attn.bias"),
                &[3 * d],
                qkv_b(i as i64),
            );
        }
        map.push(tl("attn.b_O"), hf("attn.c_proj.bias"), &[d], View::Same);
        map.push(tl("ln2.w"), hf("ln_2.weight"), &[d], View::Same);
        map.push(tl("ln2.b"), hf("ln_2.bias"), &[d], View::Same);
        map.push(tl("mlp.W_in"), hf("mlp.c_fc.weight"), &[d, m], View::Same);
        map.push(tl("mlp.b_in"), hf("mlp.c_fc.bias"), &[m], View::Same);
        map.push(
            tl("mlp.W_out"),
            hf("mlp.c_proj.weight"),
            &[m, d],
            View::Same,
        );
        map.push(tl("mlp.b_out"), hf("mlp.c_proj.bias"), &[d], View::Same);
    }
    map.push(
        "ln_final.w".into(),
        "transformer.ln_f.weight".into(),
        &[d],
        View::Same,
    );
    map.push(
        "ln_final.b".into(),
        "transformer.ln_f.bias".into(),
        &[d],
        View::Same,
    );
    push_unembed(
        &mut map,
        tie_word_embeddings,
        "transformer.wte.weight",
        "lm_head",
        [v, d],
    );
    map
}

/// The Llama family's table (Llama, Mistral, Qwen2, Qwen3, Gemma 1-3, Phi-3, OLMo-2):
/// `nn.Linear` weights `[out, in]` (Phi-3's q, k, v and gate, up rows of its fused
/// projections), grouped keys and values under TransformerLens's `_W_K` / `_W_V` / `_b_K` /
/// `_b_V`, every bias the configuration may leave out zero when absent, the q/k norm weights,
/// the gate. TransformerLens's norm names follow where the norms sit: `ln1` / `ln2` before the
/// sublayers, Gemma 2's and 3's `ln1_post` / `ln2_post` after them, and OLMo-2's post-sublayer
/// norms as `ln1` / `ln2` (TransformerLens 3.9.0's converter). Gemma's norm weights are `1 + w`
/// and its `W_E` holds the embedding scale, as TransformerLens converts them.
pub fn llama(cfg: &LlamaConfig) -> WeightMap {
    use crate::config::{NormPlacement, QkNorm, RmsScale};
    let (d, m, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (h, h_kv, dh) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let kv = if h_kv != h { "_" } else { "" };
    let norm_value = match cfg.rms_scale {
        RmsScale::OnePlusWeight => Value::PlusOne,
        RmsScale::Weight | RmsScale::WeightInF32 => Value::Same,
    };
    let mut map = WeightMap::default();
    map.push(
        "embed.W_E".into(),
        "model.embed_tokens.weight".into(),
        &[v, d],
        View::Same,
    );
    if let Some(scale) = cfg.embed_scale {
        map.with_value(Value::Scaled(scale));
    }
    let norm = |map: &mut WeightMap, tl: String, hf: String, width: i64| {
        map.push(tl, hf, &[width], View::Same);
        map.with_value(norm_value);
    };
    for l in 0..cfg.num_hidden_layers {
        let tl = |s: &str| format!("blocks.{l}.{s}");
        let hf = |s: &str| format!("model.layers.{l}.{s}");
        let bias = |n| View::HeadBias {
            heads: n,
            d_head: dh,
        };
        let (pre_attn, post_attn, pre_mlp, post_mlp) = match cfg.norm_placement {
            NormPlacement::Before => (
                Some("input_layernorm"),
                None,
                Some("post_attention_layernorm"),
                None,
            ),
            NormPlacement::BeforeAndAfter => (
                Some("input_layernorm"),
                Some(("ln1_post", "post_attention_layernorm")),
                Some("pre_feedforward_layernorm"),
                Some(("ln2_post", "post_feedforward_layernorm")),
            ),
            NormPlacement::After => (
                None,
                Some(("ln1", "post_attention_layernorm")),
                None,
                Some(("ln2", "post_feedforward_layernorm")),
            ),
        };
        if let Some(name) = pre_attn {
            norm(&mut map, tl("ln1.w"), hf(&format!("{name}.weight")), d);
        }
        let projections = if cfg.fused_projections {
            let fused = hf("self_attn.qkv_proj.weight");
            let rows = (h + 2 * h_kv) * dh;
            let at = |offset, heads| View::LinearHeadsAt {
                offset,
                heads,
                d_head: dh,
            };
            [
                (fused.clone(), rows, at(0, h)),
                (fused.clone(), rows, at(h * dh, h_kv)),
                (fused, rows, at((h + h_kv) * dh, h_kv)),
            ]
        } else {
            let heads = |n| View::LinearHeads {
                heads: n,
                d_head: dh,
            };
            [
                (hf("self_attn.q_proj.weight"), h * dh, heads(h)),
                (hf("self_attn.k_proj.weight"), h_kv * dh, heads(h_kv)),
                (hf("self_attn.v_proj.weight"), h_kv * dh, heads(h_kv)),
            ]
        };
        let names = [
            "attn.W_Q".to_string(),
            format!("attn.{kv}W_K"),
            format!("attn.{kv}W_V"),
        ];
        for (name, (param, rows, view)) in names.into_iter().zip(projections) {
            map.push(tl(&name), param, &[rows, d], view);
        }
        let heads_out = View::LinearHeadsOut {
            heads: h,
            d_head: dh,
        };
        map.push(
            tl("attn.W_O"),
            hf("self_attn.o_proj.weight"),
            &[d, h * dh],
            heads_out,
        );
        for (name, hf_name, n) in [
            ("attn.b_Q".to_string(), "q_proj", h),
            (format!("attn.{kv}b_K"), "k_proj", h_kv),
            (format!("attn.{kv}b_V"), "v_proj", h_kv),
        ] {
            map.push_optional(
                tl(&name),
                hf(&format!("self_attn.{hf_name}.bias")),
                &[n * dh],
                bias(n),
                &[n, dh],
            );
        }
        map.push_optional(
            tl("attn.b_O"),
            hf("self_attn.o_proj.bias"),
            &[d],
            View::Same,
            &[d],
        );
        let qk_widths = match cfg.qk_norm {
            QkNorm::None => None,
            QkNorm::PerHead => Some((dh, dh)),
            QkNorm::Projection => Some((h * dh, h_kv * dh)),
        };
        if let Some((q_width, k_width)) = qk_widths {
            norm(
                &mut map,
                tl("attn.q_norm.w"),
                hf("self_attn.q_norm.weight"),
                q_width,
            );
            norm(
                &mut map,
                tl("attn.k_norm.w"),
                hf("self_attn.k_norm.weight"),
                k_width,
            );
        }
        if let Some((tl_name, hf_name)) = post_attn {
            norm(
                &mut map,
                tl(&format!("{tl_name}.w")),
                hf(&format!("{hf_name}.weight")),
                d,
            );
        }
        if let Some(name) = pre_mlp {
            norm(&mut map, tl("ln2.w"), hf(&format!("{name}.weight")), d);
        }
        if cfg.fused_projections {
            let fused = hf("mlp.gate_up_proj.weight");
            for (name, offset) in [("mlp.W_gate", 0), ("mlp.W_in", m)] {
                map.push(
                    tl(name),
                    fused.clone(),
                    &[2 * m, d],
                    View::LinearRowsTransposed { offset, rows: m },
                );
            }
        } else {
            map.push(
                tl("mlp.W_gate"),
                hf("mlp.gate_proj.weight"),
                &[m, d],
                View::Transpose,
            );
            if cfg.mlp_bias {
                map.push(tl("mlp.b_gate"), hf("mlp.gate_proj.bias"), &[m], View::Same);
            }
            map.push(
                tl("mlp.W_in"),
                hf("mlp.up_proj.weight"),
                &[m, d],
                View::Transpose,
            );
        }
        map.push_optional(
            tl("mlp.b_in"),
            hf("mlp.up_proj.bias"),
            &[m],
            View::Same,
            &[m],
        );
        map.push(
            tl("mlp.W_out"),
            hf("mlp.down_proj.weight"),
            &[d, m],
            View::Transpose,
        );
        map.push_optional(
            tl("mlp.b_out"),
            hf("mlp.down_proj.bias"),
            &[d],
            View::Same,
            &[d],
        );
        if let Some((tl_name, hf_name)) = post_mlp {
            norm(
                &mut map,
                tl(&format!("{tl_name}.w")),
                hf(&format!("{hf_name}.weight")),
                d,
            );
        }
    }
    norm(&mut map, "ln_final.w".into(), "model.norm.weight".into(), d);
    push_unembed(
        &mut map,
        cfg.tie_word_embeddings,
        "model.embed_tokens.weight",
        "lm_head",
        [v, d],
    );
    map
}

/// GPT-NeoX's table (`GPTNeoXForCausalLM`): q, k and v interleaved per head in
/// `query_key_value`, `nn.Linear` weights `[out, in]`, attention biases zero when
/// `attention_bias` is off, the unembedding `embed_out` (`embed_in` while tied).
pub fn gpt_neox(cfg: &GptNeoxConfig) -> WeightMap {
    let (d, m, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (h, dh) = (cfg.num_attention_heads, cfg.head_dim());
    let mut map = WeightMap::default();
    map.push(
        "embed.W_E".into(),
        "gpt_neox.embed_in.weight".into(),
        &[v, d],
        View::Same,
    );
    for l in 0..cfg.num_hidden_layers {
        let tl = |s: &str| format!("blocks.{l}.{s}");
        let hf = |s: &str| format!("gpt_neox.layers.{l}.{s}");
        map.push(tl("ln1.w"), hf("input_layernorm.weight"), &[d], View::Same);
        map.push(tl("ln1.b"), hf("input_layernorm.bias"), &[d], View::Same);
        for (part, w) in ["W_Q", "W_K", "W_V"].into_iter().enumerate() {
            let view = View::NeoxQkv {
                part: part as i64,
                heads: h,
                d_head: dh,
            };
            let weight = hf("attention.query_key_value.weight");
            map.push(tl(&format!("attn.{w}")), weight, &[3 * d, d], view);
        }
        for (part, b) in ["b_Q", "b_K", "b_V"].into_iter().enumerate() {
            let view = View::NeoxQkvBias {
                part: part as i64,
                heads: h,
                d_head: dh,
            };
            let bias = hf("attention.query_key_value.bias");
            map.push_optional(tl(&format!("attn.{b}")), bias, &[3 * d], view, &[h, dh]);
        }
        let heads_out = View::LinearHeadsOut {
            heads: h,
            d_head: dh,
        };
        map.push(
            tl("attn.W_O"),
            hf("attention.dense.weight"),
            &[d, d],
            heads_out,
        );
        map.push_optional(
            tl("attn.b_O"),
            hf("attention.dense.bias"),
            &[d],
            View::Same,
            &[d],
        );
        map.push(
            tl("ln2.w"),
            hf("post_attention_layernorm.weight"),
            &[d],
            View::Same,
        );
        map.push(
            tl("ln2.b"),
            hf("post_attention_layernorm.bias"),
            &[d],
            View::Same,
        );
        let mlp = |s: &str| hf(&format!("mlp.{s}"));
        map.push(
            tl("mlp.W_in"),
            mlp("dense_h_to_4h.weight"),
            &[m, d],
            View::Transpose,
        );
        map.push(tl("mlp.b_in"), mlp("dense_h_to_4h.bias"), &[m], View::Same);
        map.push(
            tl("mlp.W_out"),
            mlp("dense_4h_to_h.weight"),
            &[d, m],
            View::Transpose,
        );
        map.push(tl("mlp.b_out"), mlp("dense_4h_to_h.bias"), &[d], View::Same);
    }
    for (tl, hf) in [("w", "weight"), ("b", "bias")] {
        map.push(
            format!("ln_final.{tl}"),
            format!("gpt_neox.final_layer_norm.{hf}"),
            &[d],
            View::Same,
        );
    }
    push_unembed(
        &mut map,
        cfg.tie_word_embeddings,
        "gpt_neox.embed_in.weight",
        "embed_out",
        [v, d],
    );
    map
}

/// GPT-Neo's table (`GPTNeoForCausalLM`): `nn.Linear` weights `[out, in]`, q/k/v without biases
/// (zero, as TransformerLens holds them), `W_pos` the first `n_ctx` rows of `wpe`, the
/// unembedding `lm_head` (`wte` while tied) without a bias.
pub fn gpt_neo(cfg: &GptNeoConfig) -> WeightMap {
    let (d, m, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (h, dh) = (cfg.num_heads, cfg.head_dim());
    let mut map = WeightMap::default();
    map.push(
        "embed.W_E".into(),
        "transformer.wte.weight".into(),
        &[v, d],
        View::Same,
    );
    map.push(
        "pos_embed.W_pos".into(),
        "transformer.wpe.weight".into(),
        &[cfg.max_position_embeddings, d],
        View::Same,
    );
    for l in 0..cfg.num_layers {
        let tl = |s: &str| format!("blocks.{l}.{s}");
        let hf = |s: &str| format!("transformer.h.{l}.{s}");
        for (ln, name) in [("ln1", "ln_1"), ("ln2", "ln_2")] {
            map.push(
                tl(&format!("{ln}.w")),
                hf(&format!("{name}.weight")),
                &[d],
                View::Same,
            );
            map.push(
                tl(&format!("{ln}.b")),
                hf(&format!("{name}.bias")),
                &[d],
                View::Same,
            );
        }
        let attn = |s: &str| hf(&format!("attn.attention.{s}"));
        push_separate_qkv(&mut map, &tl, &attn, d, [h, h, dh]);
        let heads_out = View::LinearHeadsOut {
            heads: h,
            d_head: dh,
        };
        map.push(tl("attn.W_O"), attn("out_proj.weight"), &[d, d], heads_out);
        map.push(tl("attn.b_O"), attn("out_proj.bias"), &[d], View::Same);
        map.push(
            tl("mlp.W_in"),
            hf("mlp.c_fc.weight"),
            &[m, d],
            View::Transpose,
        );
        map.push(tl("mlp.b_in"), hf("mlp.c_fc.bias"), &[m], View::Same);
        map.push(
            tl("mlp.W_out"),
            hf("mlp.c_proj.weight"),
            &[d, m],
            View::Transpose,
        );
        map.push(tl("mlp.b_out"), hf("mlp.c_proj.bias"), &[d], View::Same);
    }
    for (tl, hf) in [("w", "weight"), ("b", "bias")] {
        map.push(
            format!("ln_final.{tl}"),
            format!("transformer.ln_f.{hf}"),
            &[d],
            View::Same,
        );
    }
    push_unembed(
        &mut map,
        cfg.tie_word_embeddings,
        "transformer.wte.weight",
        "lm_head",
        [v, d],
    );
    map
}

/// OPT's table (`OPTForCausalLM`): `W_pos` the table's rows after its offset of 2,
/// `nn.Linear` weights `[out, in]`, biases zero where `enable_bias` is off, `ln1` / `ln2` the
/// layer's `self_attn_layer_norm` / `final_layer_norm` (before or after the sublayers), the
/// unembedding `lm_head` (`embed_tokens` while tied) without a bias. With
/// `word_embed_proj_dim` (OPT-350m) `W_E` and `W_U` are that narrower width, and
/// `embed.W_project_in` / `unembed.W_project_out` are `project_in` / `project_out`; there is
/// no `ln_final` where the decoder has no final LayerNorm (post-LN models).
pub fn opt(cfg: &OptConfig) -> WeightMap {
    let (d, m, v) = (cfg.hidden_size, cfg.ffn_dim, cfg.vocab_size);
    let (h, dh) = (cfg.num_attention_heads, cfg.head_dim());
    let d_embed = cfg.word_embed_proj_dim;
    let embedding = "model.decoder.embed_tokens.weight";
    let mut map = WeightMap::default();
    map.push(
        "embed.W_E".into(),
        embedding.into(),
        &[v, d_embed],
        View::Same,
    );
    if cfg.projects() {
        map.push(
            "embed.W_project_in".into(),
            "model.decoder.project_in.weight".into(),
            &[d, d_embed],
            View::Transpose,
        );
    }
    map.push(
        "pos_embed.W_pos".into(),
        "model.decoder.embed_positions.weight".into(),
        &[cfg.max_position_embeddings + OPT_POSITION_OFFSET, d],
        View::SkipRows(OPT_POSITION_OFFSET),
    );
    for l in 0..cfg.num_hidden_layers {
        let tl = |s: &str| format!("blocks.{l}.{s}");
        let hf = |s: &str| format!("model.decoder.layers.{l}.{s}");
        for (ln, name) in [("ln1", "self_attn_layer_norm"), ("ln2", "final_layer_norm")] {
            push_opt_norm(&mut map, tl(ln), hf(name), d);
        }
        let attn = |s: &str| hf(&format!("self_attn.{s}"));
        push_separate_qkv(&mut map, &tl, &attn, d, [h, h, dh]);
        let heads_out = View::LinearHeadsOut {
            heads: h,
            d_head: dh,
        };
        map.push(tl("attn.W_O"), attn("out_proj.weight"), &[d, d], heads_out);
        map.push_optional(
            tl("attn.b_O"),
            attn("out_proj.bias"),
            &[d],
            View::Same,
            &[d],
        );
        map.push(tl("mlp.W_in"), hf("fc1.weight"), &[m, d], View::Transpose);
        map.push_optional(tl("mlp.b_in"), hf("fc1.bias"), &[m], View::Same, &[m]);
        map.push(tl("mlp.W_out"), hf("fc2.weight"), &[d, m], View::Transpose);
        map.push_optional(tl("mlp.b_out"), hf("fc2.bias"), &[d], View::Same, &[d]);
    }
    if cfg.has_final_layer_norm() {
        push_opt_norm(
            &mut map,
            "ln_final".into(),
            "model.decoder.final_layer_norm".into(),
            d,
        );
    }
    if cfg.projects() {
        map.push(
            "unembed.W_project_out".into(),
            "model.decoder.project_out.weight".into(),
            &[d_embed, d],
            View::Transpose,
        );
    }
    push_unembed(
        &mut map,
        cfg.tie_word_embeddings,
        embedding,
        "lm_head",
        [v, d_embed],
    );
    map
}

/// An OPT LayerNorm's weight and bias; one and zero when it has no parameters
/// (`layer_norm_elementwise_affine: false`), as TransformerLens's LayerNorm holds them.
fn push_opt_norm(map: &mut WeightMap, tl: String, hf: String, d: i64) {
    for (fill, tl_part, hf_part) in [(1.0, "w", "weight"), (0.0, "b", "bias")] {
        map.push_or_constant(
            format!("{tl}.{tl_part}"),
            format!("{hf}.{hf_part}"),
            &[d],
            View::Same,
            &[d],
            fill,
        );
    }
}

/// A layer's separate query, key and value projections (`attn("q_proj.weight")`, ...,
/// `[heads * d_head, d]`) as TransformerLens's `W_Q`, `W_K`, `W_V` and biases (zeros where the
/// checkpoint has none), under `tl("attn.W_Q")`, ...; with fewer key/value heads than query
/// heads, `_W_K`, `_W_V`, `_b_K`, `_b_V`.
fn push_separate_qkv(
    map: &mut WeightMap,
    tl: &impl Fn(&str) -> String,
    attn: &impl Fn(&str) -> String,
    d: i64,
    [h, h_kv, dh]: [i64; 3],
) {
    let kv = if h_kv != h { "_" } else { "" };
    for (w, proj, n) in [
        ("W_Q".to_string(), "q_proj", h),
        (format!("{kv}W_K"), "k_proj", h_kv),
        (format!("{kv}W_V"), "v_proj", h_kv),
    ] {
        let view = View::LinearHeads {
            heads: n,
            d_head: dh,
        };
        map.push(
            tl(&format!("attn.{w}")),
            attn(&format!("{proj}.weight")),
            &[n * dh, d],
            view,
        );
        let b = w.replace('W', "b");
        let bias_view = View::HeadBias {
            heads: n,
            d_head: dh,
        };
        map.push_optional(
            tl(&format!("attn.{b}")),
            attn(&format!("{proj}.bias")),
            &[n * dh],
            bias_view,
            &[n, dh],
        );
    }
}

/// The HuggingFace names of a parallel-block family's parameters.
struct ParallelNames {
    embedding: &'static str,
    layers: &'static str,
    norm: &'static str,
    attn: &'static str,
    out_proj: &'static str,
    fc_in: &'static str,
    fc_out: &'static str,
    final_norm: &'static str,
}

fn parallel_names(family: ParallelFamily) -> ParallelNames {
    match family {
        ParallelFamily::GptJ => ParallelNames {
            embedding: "transformer.wte.weight",
            layers: "transformer.h",
            norm: "ln_1",
            attn: "attn",
            out_proj: "out_proj",
            fc_in: "mlp.fc_in",
            fc_out: "mlp.fc_out",
            final_norm: "transformer.ln_f",
        },
        ParallelFamily::Phi => ParallelNames {
            embedding: "model.embed_tokens.weight",
            layers: "model.layers",
            norm: "input_layernorm",
            attn: "self_attn",
            out_proj: "dense",
            fc_in: "mlp.fc1",
            fc_out: "mlp.fc2",
            final_norm: "model.final_layernorm",
        },
    }
}

/// GPT-J's and Phi's table: `nn.Linear` weights `[out, in]`; one LayerNorm per block, which is
/// both TransformerLens's `ln1` and its `ln2` (TransformerLens's conversion copies it into both,
/// so the HookedTransformer normalises each branch on its own; the bridge's `ln2` is a second
/// view of the one parameter); attention biases zero where absent (GPT-J has none); grouped
/// keys and values under `_W_K` / `_W_V` (Phi); the unembedding's own bias.
pub fn parallel(cfg: &ParallelConfig) -> WeightMap {
    let names = parallel_names(cfg.family);
    let (d, m, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (h, h_kv, dh) = (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let mut map = WeightMap::default();
    map.push(
        "embed.W_E".into(),
        names.embedding.into(),
        &[v, d],
        View::Same,
    );
    for l in 0..cfg.num_hidden_layers {
        let tl = |s: &str| format!("blocks.{l}.{s}");
        let hf = |s: &str| format!("{}.{l}.{s}", names.layers);
        let attn = |s: &str| hf(&format!("{}.{s}", names.attn));
        for ln in ["ln1", "ln2"] {
            map.push(
                tl(&format!("{ln}.w")),
                hf(&format!("{}.weight", names.norm)),
                &[d],
                View::Same,
            );
            map.push(
                tl(&format!("{ln}.b")),
                hf(&format!("{}.bias", names.norm)),
                &[d],
                View::Same,
            );
        }
        push_separate_qkv(&mut map, &tl, &attn, d, [h, h_kv, dh]);
        let heads_out = View::LinearHeadsOut {
            heads: h,
            d_head: dh,
        };
        let out = |s: &str| attn(&format!("{}.{s}", names.out_proj));
        map.push(tl("attn.W_O"), out("weight"), &[d, h * dh], heads_out);
        map.push_optional(tl("attn.b_O"), out("bias"), &[d], View::Same, &[d]);
        if cfg.qk_layernorm {
            // Phi's LayerNorms over each head's query and key, one `[dh]` pair shared by the
            // heads (TransformerLens's Qwen3 name, `attn.q_norm`).
            for (norm, hf_norm) in [("q_norm", "q_layernorm"), ("k_norm", "k_layernorm")] {
                for (tl_part, hf_part) in [("w", "weight"), ("b", "bias")] {
                    map.push(
                        tl(&format!("attn.{norm}.{tl_part}")),
                        attn(&format!("{hf_norm}.{hf_part}")),
                        &[dh],
                        View::Same,
                    );
                }
            }
        }
        let fc = |layer: &str, s: &str| hf(&format!("{layer}.{s}"));
        map.push(
            tl("mlp.W_in"),
            fc(names.fc_in, "weight"),
            &[m, d],
            View::Transpose,
        );
        map.push(tl("mlp.b_in"), fc(names.fc_in, "bias"), &[m], View::Same);
        map.push(
            tl("mlp.W_out"),
            fc(names.fc_out, "weight"),
            &[d, m],
            View::Transpose,
        );
        map.push(tl("mlp.b_out"), fc(names.fc_out, "bias"), &[d], View::Same);
    }
    for (tl, hf) in [("w", "weight"), ("b", "bias")] {
        map.push(
            format!("ln_final.{tl}"),
            format!("{}.{hf}", names.final_norm),
            &[d],
            View::Same,
        );
    }
    push_unembed(
        &mut map,
        cfg.tie_word_embeddings,
        names.embedding,
        "lm_head",
        [v, d],
    );
    map
}

/// `unembed.W_U` (`<head>.weight` transposed, or the embedding while tied) and the optional
/// `unembed.b_U` (`<head>.bias`, zeros when absent), `[vocab, d]` in HuggingFace's layout.
fn push_unembed(map: &mut WeightMap, tied: bool, embedding: &str, head: &str, [v, d]: [i64; 2]) {
    let unembed = if tied {
        embedding.to_owned()
    } else {
        format!("{head}.weight")
    };
    map.push("unembed.W_U".into(), unembed, &[v, d], View::Transpose);
    map.push_optional(
        "unembed.b_U".into(),
        format!("{head}.bias"),
        &[v],
        View::Same,
        &[v],
    );
}
