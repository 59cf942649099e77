//! The model-aware helpers of TransformerLens's `ActivationCache`: residual-stream
//! decompositions, per-head results, LayerNorm application to stacks, and logit attributions.
//! Written once against [`ResidualModel`], which both models implement.

use tch::{Kind, Tensor};

use crate::cache::{ActivationCache, Normalization, ResidualModel, Slice};
use crate::error::{HookError, Result};

/// A stack of residual-stream components `[components, batch, pos, d_model]` (the pos axis is
/// gone when an integer position slice was applied) with one label per component.
#[derive(Debug)]
pub struct LabelledStack {
    /// The components, stacked on dimension 0.
    pub stack: Tensor,
    /// One label per component, e.g. `3_pre`, `L2H5`, `embed`.
    pub labels: Vec<String>,
}

/// Which writers `decompose_resid` lists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DecomposeMode {
    /// Attention and MLP outputs.
    #[default]
    All,
    /// Attention outputs only.
    Attn,
    /// MLP outputs only.
    Mlp,
}

/// Borrowed view of a cache together with the model that produced it.
pub struct CacheAnalysis<'a> {
    cache: &'a ActivationCache,
    model: &'a dyn ResidualModel,
}

fn stacked(components: Vec<Tensor>, labels: Vec<String>, like: &Tensor) -> LabelledStack {
    let stack = if components.is_empty() {
        let mut shape = vec![0];
        shape.extend(like.size());
        Tensor::zeros(shape.as_slice(), (like.kind(), like.device()))
    } else {
        Tensor::stack(&components, 0)
    };
    LabelledStack { stack, labels }
}

/// Which LayerNorm `finish` applies to a stack (see [`CacheAnalysis::apply_ln_to_stack`]).
struct LnTarget {
    layer: usize,
    mlp_input: bool,
    recompute: bool,
}

impl<'a> CacheAnalysis<'a> {
    /// Position-slices the components, stacks them with their labels (an empty stack is shaped
    /// like the residual stream), and applies a LayerNorm when asked.
    fn finish(
        &self,
        components: Vec<Tensor>,
        labels: Vec<String>,
        pos_slice: &Slice,
        ln: Option<LnTarget>,
    ) -> Result<LabelledStack> {
        let components = components
            .into_iter()
            .map(|c| self.pos(c, pos_slice))
            .collect::<Result<Vec<_>>>()?;
        let like = self.pos(self.act("resid_pre", 0)?, pos_slice)?;
        let mut out = stacked(components, labels, &like);
        if let Some(ln) = ln {
            out.stack = self.apply_ln_to_stack(
                &out.stack,
                Some(ln.layer),
                ln.mlp_input,
                pos_slice,
                ln.recompute,
            )?;
        }
        Ok(out)
    }

    /// Pairs a cache with the model it came from.
    pub fn new(cache: &'a ActivationCache, model: &'a dyn ResidualModel) -> Self {
        CacheAnalysis { cache, model }
    }

    fn n_layers(&self) -> usize {
        self.model.n_layers()
    }

    /// `None` means "after the last layer".
    fn layer_or_last(&self, layer: Option<usize>) -> usize {
        layer.unwrap_or(self.n_layers()).min(self.n_layers())
    }

    fn act(&self, name: &str, layer: usize) -> Result<Tensor> {
        Ok(self.cache.get((name, layer))?.shallow_clone())
    }

    fn pos(&self, t: Tensor, pos_slice: &Slice) -> Result<Tensor> {
        pos_slice.apply(&t, -2)
    }

    /// The residual stream before each block up to `layer` (and after the last, labelled
    /// `final_post`), optionally with the mid-block residuals, normalised with the cached scale of
    /// the LayerNorm that reads it when `apply_ln`.
    pub fn accumulated_resid(
        &self,
        layer: Option<usize>,
        incl_mid: bool,
        mlp_input: bool,
        apply_ln: bool,
        pos_slice: &Slice,
    ) -> Result<LabelledStack> {
        let layer = self.layer_or_last(layer);
        let (mut components, mut labels) = (Vec::new(), Vec::new());
        for l in 0..=layer {
            if l == self.n_layers() {
                components.push(self.act("resid_post", l - 1)?);
                labels.push("final_post".to_owned());
                continue;
            }
            components.push(self.act("resid_pre", l)?);
            labels.push(format!("{l}_pre"));
            if (incl_mid && l < layer) || (mlp_input && l == layer) {
                components.push(self.act("resid_mid", l)?);
                labels.push(format!("{l}_mid"));
            }
        }
        let ln = apply_ln.then_some(LnTarget {
            layer,
            mlp_input,
            recompute: layer == self.n_layers(),
        });
        self.finish(components, labels, pos_slice, ln)
    }

    /// An error where the residual stream is not the sum of what wrote it (post-LN OPT
    /// normalises it after every addition), so no decomposition adds up to it.
    fn residual_is_a_sum(&self) -> Result<()> {
        if self.model.residual_is_a_sum() {
            Ok(())
        } else {
            Err(HookError::Cache(
                "this model normalises its residual stream after every addition (post-LN): the \
                 stream is not the sum of the embeddings' and sublayers' outputs, and no \
                 decomposition adds up to it"
                    .into(),
            ))
        }
    }

    /// What the embeddings write to the residual stream, as cached: `embed` (the token
    /// embedding, or where a narrower one is projected in, OPT-350m, its projection
    /// `hook_project_in`) and `pos_embed` where the model has learned positions.
    fn embeddings(&self) -> Vec<(&'static str, Tensor)> {
        let token = ["hook_project_in", "hook_embed"]
            .into_iter()
            .find_map(|name| self.cache.get(name).ok());
        let position = self.cache.get("hook_pos_embed").ok();
        [("embed", token), ("pos_embed", position)]
            .into_iter()
            .filter_map(|(label, t)| Some((label, t?.shallow_clone())))
            .collect()
    }

    /// The residual stream at `layer` split into what wrote it: embeddings, then each earlier
    /// block's attention and MLP outputs (per `mode`), plus block `layer`'s attention with
    /// `mlp_input`. The components sum to the residual.
    pub fn decompose_resid(
        &self,
        layer: Option<usize>,
        mlp_input: bool,
        mode: DecomposeMode,
        incl_embeds: bool,
        apply_ln: bool,
        pos_slice: &Slice,
    ) -> Result<LabelledStack> {
        self.residual_is_a_sum()?;
        let layer = self.layer_or_last(layer);
        let (incl_attn, incl_mlp) = (mode != DecomposeMode::Mlp, mode != DecomposeMode::Attn);
        let (mut components, mut labels) = (Vec::new(), Vec::new());
        if incl_embeds {
            for (label, t) in self.embeddings() {
                components.push(t);
                labels.push(label.to_owned());
            }
        }
        for l in 0..layer {
            if incl_attn {
                components.push(self.act("attn_out", l)?);
                labels.push(format!("{l}_attn_out"));
            }
            if incl_mlp {
                components.push(self.act("mlp_out", l)?);
                labels.push(format!("{l}_mlp_out"));
            }
        }
        if mlp_input && incl_attn {
            components.push(self.act("attn_out", layer)?);
            labels.push(format!("{layer}_attn_out"));
        }
        let ln = apply_ln.then_some(LnTarget {
            layer,
            mlp_input,
            recompute: false,
        });
        self.finish(components, labels, pos_slice, ln)
    }

    /// Each head's output `[b, p, h, d]` of block `layer`: the cached `attn.hook_result` when
    /// there is one, else computed from `hook_z` and `W_O`.
    pub fn head_results(&self, layer: usize) -> Result<Tensor> {
        if let Ok(result) = self.cache.get(("result", layer)) {
            return Ok(result.shallow_clone());
        }
        let z = self.act("z", layer)?;
        let w_o = self
            .model
            .w_o(layer)
            .to_device(z.device())
            .to_kind(z.kind());
        Ok(Tensor::einsum(
            "bphk,hkd->bphd",
            &[&z, &w_o],
            None::<&[i64]>,
        ))
    }

    /// Every head's output in blocks before `layer`, `[layer * n_heads, b, p, d]`, labelled
    /// `L{l}H{h}`; with `incl_remainder`, plus what the residual holds besides them.
    pub fn stack_head_results(
        &self,
        layer: Option<usize>,
        incl_remainder: bool,
        apply_ln: bool,
        pos_slice: &Slice,
    ) -> Result<LabelledStack> {
        let layer = self.layer_or_last(layer);
        let (mut components, mut labels) = (Vec::new(), Vec::new());
        for l in 0..layer {
            let results = self.head_results(l)?;
            for h in 0..self.model.n_heads() {
                components.push(results.select(2, h as i64));
                labels.push(format!("L{l}H{h}"));
            }
        }
        if incl_remainder && layer > 0 {
            let total = Tensor::stack(&components, 0).sum_dim_intlist(
                [0i64].as_slice(),
                false,
                components[0].kind(),
            );
            components.push(self.act("resid_post", layer - 1)? - total);
            labels.push("remainder".to_owned());
        }
        let ln = apply_ln.then_some(LnTarget {
            layer,
            mlp_input: false,
            recompute: false,
        });
        self.finish(components, labels, pos_slice, ln)
    }

    /// `name` of every block before `layer` (all blocks for `None`), stacked: e.g. `("pattern",
    /// None, None)` -> `[n_layers, b, h, q, k]`.
    pub fn stack_activation(
        &self,
        name: &str,
        layer: Option<usize>,
        sublayer_type: Option<&str>,
    ) -> Result<Tensor> {
        let layer = self.layer_or_last(layer);
        let parts = (0..layer)
            .map(|l| {
                let t = match sublayer_type {
                    Some(kind) => self.cache.get((name, l as i64, kind))?,
                    None => self.cache.get((name, l))?,
                };
                Ok(t.shallow_clone())
            })
            .collect::<Result<Vec<_>>>()?;
        if parts.is_empty() {
            return Err(HookError::Cache(format!(
                "stack_activation('{name}') over zero layers"
            )));
        }
        Ok(Tensor::stack(&parts, 0))
    }

    /// Applies the LayerNorm that reads the residual at `layer` (ln1, ln2 with `mlp_input`,
    /// ln_final for the last) to every component of `stack`, using the scale cached from the real
    /// run (so the components still add up), or recomputing ln_final per component with
    /// `recompute_ln` (the logit lens).
    pub fn apply_ln_to_stack(
        &self,
        stack: &Tensor,
        layer: Option<usize>,
        mlp_input: bool,
        pos_slice: &Slice,
        recompute_ln: bool,
    ) -> Result<Tensor> {
        let normalization = self.model.normalization();
        if normalization == Normalization::None {
            return Ok(stack.shallow_clone());
        }
        let layer = self.layer_or_last(layer);
        if layer == self.n_layers() && !self.model.has_final_norm() {
            // Nothing normalises the last residual stream: the logits read it as it is.
            return Ok(stack.shallow_clone());
        }
        if recompute_ln && layer == self.n_layers() {
            return self.model.apply_ln_final(stack);
        }
        if layer < self.n_layers() && !self.model.sublayer_norms_read_residual() {
            return Err(HookError::Cache(format!(
                "this model's LayerNorms follow its sublayers: no cached scale normalises the \
                 residual stream at layer {layer} (only the final one can be normalised)"
            )));
        }
        let centred = match normalization {
            Normalization::LayerNorm | Normalization::LayerNormPre => {
                stack - stack.mean_dim(-1, true, stack.kind())
            }
            _ => stack.shallow_clone(),
        };
        let scale = if layer == self.n_layers() {
            self.cache.get("ln_final.hook_scale")?.shallow_clone()
        } else {
            let ln = if mlp_input { "ln2" } else { "ln1" };
            self.cache
                .get(format!("blocks.{layer}.{ln}.hook_scale"))?
                .shallow_clone()
        };
        Ok(centred / self.pos(scale, pos_slice)?)
    }

    /// Each component's contribution to the logit of `tokens` (minus that of `incorrect_tokens`):
    /// the stack, normalised by ln_final's cached scale, dotted with the unembedding directions.
    /// `tokens` holds one id per batch row (or per position when the stack keeps positions).
    pub fn logit_attrs(
        &self,
        stack: &Tensor,
        tokens: &Tensor,
        incorrect_tokens: Option<&Tensor>,
        pos_slice: &Slice,
    ) -> Result<Tensor> {
        let w_u = self
            .model
            .w_u()
            .to_device(stack.device())
            .to_kind(stack.kind());
        let directions = |t: &Tensor| {
            w_u.transpose(0, 1)
                .index_select(0, &t.reshape([-1]).to_device(stack.device()))
                .reshape(&[t.size(), vec![-1]].concat()[..])
        };
        let mut direction = directions(tokens);
        if let Some(incorrect) = incorrect_tokens {
            if incorrect.size() != tokens.size() {
                return Err(HookError::Cache(format!(
                    "incorrect_tokens has shape {:?} but tokens has {:?}",
                    incorrect.size(),
                    tokens.size()
                )));
            }
            direction -= directions(incorrect);
        }
        let scaled = self.apply_ln_to_stack(stack, None, false, pos_slice, false)?;
        Ok((scaled * direction).sum_dim_intlist([-1i64].as_slice(), false, Kind::Float))
    }

    /// Every head's result (through block `layer`, plus block `layer`'s heads with `mlp_input`),
    /// every neuron's output (`expand_neurons`; else each MLP's output), the embeddings and the
    /// accumulated biases: components that sum exactly to the residual at `layer`.
    pub fn get_full_resid_decomposition(
        &self,
        layer: Option<usize>,
        mlp_input: bool,
        expand_neurons: bool,
        apply_ln: bool,
        pos_slice: &Slice,
    ) -> Result<LabelledStack> {
        self.residual_is_a_sum()?;
        let layer = self.layer_or_last(layer);
        let heads = self.stack_head_results(
            Some(layer + usize::from(mlp_input)),
            false,
            false,
            pos_slice,
        )?;
        let (mut parts, mut labels) = (vec![heads.stack], heads.labels);
        for l in 0..layer {
            if expand_neurons {
                let post = self.pos(self.act("post", l)?, pos_slice)?;
                let w_out = self
                    .model
                    .w_out(l)
                    .to_device(post.device())
                    .to_kind(post.kind());
                // [.., m, 1] * [m, d] -> [.., m, d], neurons moved to the front
                let neurons = post.unsqueeze(-1) * &w_out;
                let rank = neurons.dim() as i64;
                let mut order: Vec<i64> = vec![rank - 2];
                order.extend((0..rank).filter(|&d| d != rank - 2));
                parts.push(neurons.permute(order.as_slice()));
                labels.extend((0..w_out.size()[0]).map(|n| format!("L{l}N{n}")));
            } else {
                parts.push(self.pos(self.act("mlp_out", l)?, pos_slice)?.unsqueeze(0));
                labels.push(format!("{l}_mlp_out"));
            }
        }
        for (label, t) in self.embeddings() {
            parts.push(self.pos(t, pos_slice)?.unsqueeze(0));
            labels.push(label.to_owned());
        }
        let like = self.pos(self.act("resid_pre", 0)?, pos_slice)?;
        let bias = self
            .model
            .accumulated_bias(layer, mlp_input, expand_neurons)
            .to_device(like.device())
            .to_kind(like.kind());
        parts.push(bias.expand_as(&like).unsqueeze(0));
        labels.push("bias".to_owned());
        let mut stack = Tensor::cat(&parts, 0);
        if apply_ln {
            stack = self.apply_ln_to_stack(&stack, Some(layer), mlp_input, pos_slice, false)?;
        }
        Ok(LabelledStack { stack, labels })
    }
}
