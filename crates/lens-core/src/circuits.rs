//! Weights stacked over layers and the circuits of attention heads, for any [`LensModel`]
//! (TransformerLens's `model.W_Q`, `model.QK`, `model.OV`, `all_composition_scores`).
//!
//! Unlike TransformerLens's, whose `W_Q` is a fresh `torch.stack` of copies, stacked weights alias
//! the live parameters on both of our models (which, from the first stacked weight asked for,
//! keep each per-layer parameter in a row of one stacked tensor, [`crate::layer_stacks`]):
//! writing into `W_Q` changes the model. The
//! exceptions are copies: the per-query-head expansion of grouped key/value weights, and the
//! zeros served for biases a checkpoint does not have. [`Circuits::write_stacked_weight`] writes
//! any stacked value back, and says why where it cannot.

use tch::{Kind, Tensor};

use crate::factored::FactoredMatrix;
use crate::model::{LensModel, ModelError, ModelResult};

/// Which composition [`Circuits::all_composition_scores`] measures between an earlier head's OV
/// circuit and a later head's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Composition {
    /// Into the later head's queries: `OV · QK`.
    Q,
    /// Into its keys: `OV · QKᵀ`.
    K,
    /// Into its values: `OV · OV`.
    V,
}

/// The stacked weights and head circuits of a model; implemented for every [`LensModel`].
pub trait Circuits: LensModel {
    /// A weight stacked over layers by its TransformerLens property name: `W_Q`, `W_K`, `W_V`
    /// `[n_layers, n_heads, d_model, d_head]`, `W_O` `[n_layers, n_heads, d_head, d_model]`,
    /// `b_Q` / `b_K` / `b_V` `[n_layers, n_heads, d_head]`, `b_O` `[n_layers, d_model]`,
    /// `W_in` / `W_gate` `[n_layers, d_model, d_mlp]`, `W_out`, `b_in`, `b_out`; and `W_E`,
    /// `W_pos`, `W_U`, `b_U`, which have no layer axis (`W_E` `[d_vocab, d_embed]` and `W_U`
    /// `[d_embed, d_vocab]` where a narrower embedding is projected, OPT-350m: the residual
    /// stream reaches them through `embed.W_project_in` / `unembed.W_project_out`, which
    /// [`crate::model::LensModel::tl_weight`] returns). With grouped key/value heads `W_K`,
    /// `W_V`, `b_K` and `b_V` are expanded to one per query head (as TransformerLens's
    /// properties), and `_W_K`, `_W_V`, `_b_K`, `_b_V` are the grouped weights, one per
    /// key/value head.
    ///
    /// The result aliases the model's parameters where the model allows it (see the module
    /// documentation): copy it before changing it unless the change is meant for the model.
    fn stacked_weight(&self, name: &str) -> ModelResult<Tensor> {
        let module = match stacked_place(name)? {
            Place::Global(tl) => return self.tl_weight(tl),
            Place::PerLayer(module) => module,
        };
        let names = self.tl_weight_names();
        let (own, grouped) = (format!("{module}.{name}"), format!("{module}._{name}"));
        if names.contains(&format!("blocks.0.{own}")) {
            if let Some(stack) = self.tl_weight_stack(&own)? {
                return Ok(stack);
            }
        } else if let Some(stack) = self.tl_weight_stack(&grouped)? {
            let groups = self.dims().n_heads / stack.size()[1];
            return Ok(stack.repeat_interleave_self_int(groups, Some(1), None));
        }
        let layers = (0..self.dims().n_layers)
            .map(|l| {
                let own = format!("blocks.{l}.{module}.{name}");
                let grouped = format!("blocks.{l}.{module}._{name}");
                if names.contains(&own) {
                    self.tl_weight(&own)
                } else if names.contains(&grouped) {
                    let t = self.tl_weight(&grouped)?;
                    let groups = self.dims().n_heads / t.size()[0];
                    Ok(t.repeat_interleave_self_int(groups, Some(0), None))
                } else {
                    Err(ModelError::InvalidInput(format!(
                        "{} has no weight {own}",
                        self.model_name()
                    )))
                }
            })
            .collect::<ModelResult<Vec<Tensor>>>()?;
        Ok(Tensor::stack(&layers, 0))
    }

    /// Writes `value` into the model's weights under a stacked name (the layout
    /// [`Circuits::stacked_weight`] returns), layer by layer through [`LensModel::tl_weight`],
    /// so the model computes with it. The expanded `W_K` / `W_V` / `b_K` / `b_V` of grouped
    /// key/value heads cannot be written (one grouped head serves several query heads): write
    /// `_W_K` and the others instead.
    ///
    /// Errors: an unknown name, a shape other than the stacked weight's, an expanded grouped
    /// weight.
    fn write_stacked_weight(&self, name: &str, value: &Tensor) -> ModelResult<()> {
        let names = self.tl_weight_names();
        let place = stacked_place(name)?;
        let targets: Vec<String> = match place {
            Place::Global(tl) => vec![tl.to_owned()],
            Place::PerLayer(module) => (0..self.dims().n_layers)
                .map(|l| format!("blocks.{l}.{module}.{name}"))
                .collect(),
        };
        for target in &targets {
            if !names.contains(target) {
                return Err(ModelError::InvalidInput(format!(
                    "{} has no weight {target} to write (with grouped key/value heads, write \
                     the grouped _W_K / _W_V / _b_K / _b_V)",
                    self.model_name()
                )));
            }
            if self.tl_weight_is_constant(target) {
                return Err(ModelError::InvalidInput(format!(
                    "{target} is a constant zero the checkpoint has no parameter for; it cannot \
                     be written"
                )));
            }
        }
        // The stacked shape from the live weights, without stacking a copy of them.
        let one = self.tl_weight(&targets[0])?.size();
        let shape = match place {
            Place::Global(_) => one,
            Place::PerLayer(_) => [vec![targets.len() as i64], one].concat(),
        };
        if shape != value.size() {
            return Err(ModelError::InvalidInput(format!(
                "{name} is {shape:?}; the value written is {:?}",
                value.size()
            )));
        }
        match place {
            Place::Global(_) => self.write_tl_weight(&targets[0], value),
            Place::PerLayer(_) => targets
                .iter()
                .enumerate()
                .try_for_each(|(l, target)| self.write_tl_weight(target, &value.get(l as i64))),
        }
    }

    /// Every head's QK circuit, `W_Q W_Kᵀ`, `[n_layers, n_heads, d_model, d_model]` factored
    /// through `d_head` (rows: the destination residual, columns: the source), biases left out.
    fn qk(&self) -> ModelResult<FactoredMatrix> {
        let w_q = self.stacked_weight("W_Q")?;
        let w_k = self.stacked_weight("W_K")?;
        FactoredMatrix::new(&w_q, &w_k.transpose(-2, -1))
    }

    /// Every head's OV circuit, `W_V W_O`, `[n_layers, n_heads, d_model, d_model]` factored
    /// through `d_head` (applied as `x_src @ OV`).
    fn ov(&self) -> ModelResult<FactoredMatrix> {
        FactoredMatrix::new(&self.stacked_weight("W_V")?, &self.stacked_weight("W_O")?)
    }

    /// TransformerLens's composition scores `[n_layers, n_heads, n_layers, n_heads]`: for an
    /// earlier head (l1, h1) and a later head (l2, h2),
    /// `‖OV₁ · X₂‖_F / (‖OV₁‖_F ‖X₂‖_F)` with `X₂` the later head's QK (Q-composition), QKᵀ
    /// (K-composition) or OV (V-composition); zero unless `l1 < l2`.
    fn all_composition_scores(&self, mode: Composition) -> ModelResult<Tensor> {
        let left = self.ov()?;
        let right = match mode {
            Composition::Q => self.qk()?,
            Composition::K => self.qk()?.transpose(),
            Composition::V => left.clone(),
        };
        composition_scores(&left, &right)
    }
}

impl<M: LensModel + ?Sized> Circuits for M {}

/// Where a stacked weight lives: one TransformerLens weight, or one per layer in a block module.
#[derive(Clone, Copy)]
enum Place {
    Global(&'static str),
    PerLayer(&'static str),
}

fn stacked_place(name: &str) -> ModelResult<Place> {
    Ok(match name {
        "W_E" => Place::Global("embed.W_E"),
        "W_pos" => Place::Global("pos_embed.W_pos"),
        "W_U" => Place::Global("unembed.W_U"),
        "b_U" => Place::Global("unembed.b_U"),
        _ => match name.trim_start_matches('_') {
            "W_Q" | "W_K" | "W_V" | "W_O" | "b_Q" | "b_K" | "b_V" | "b_O" => {
                Place::PerLayer("attn")
            }
            "W_in" | "W_gate" | "W_out" | "b_in" | "b_out" => Place::PerLayer("mlp"),
            _ => {
                return Err(ModelError::InvalidInput(format!(
                    "no stacked weight '{name}'; they are W_E, W_pos, W_U, b_U, W_Q, W_K, W_V, \
                     W_O, b_Q, b_K, b_V, b_O, W_in, W_gate, W_out, b_in, b_out and the grouped \
                     _W_K, _W_V, _b_K, _b_V"
                )))
            }
        },
    })
}

/// `‖L · R‖_F / (‖L‖_F ‖R‖_F)` for every pair of a left matrix `[n, h, d, d]` and a right
/// one, masked to earlier-left / later-right layers: `[n, h, n, h]`. Computed one left layer at
/// a time from the collapsed factors (`diag(S) Vᵀ` and `U diag(S)`, `r x d` and `d x r`), whose
/// dropped factors are orthogonal and so leave the norms unchanged.
fn composition_scores(left: &FactoredMatrix, right: &FactoredMatrix) -> ModelResult<Tensor> {
    let (ls, rs) = (left.shape(), right.shape());
    if ls.len() != 4 || rs.len() != 4 || ls[3] != rs[2] {
        return Err(ModelError::InvalidInput(format!(
            "composition scores need [layers, heads, d, d] circuits; got {ls:?} and {rs:?}"
        )));
    }
    let (collapsed_left, collapsed_right) = (left.collapse_l()?, right.collapse_r()?);
    let norm = |t: &Tensor| t.linalg_norm_ord_str("fro", [-2i64, -1].as_slice(), false, None);
    let (left_norms, right_norms) = (norm(&collapsed_left), norm(&collapsed_right));
    let n_layers = ls[0];
    let rows = (0..n_layers)
        .map(|l1| {
            // [h1, r, d] x [l2, h2, d, r] -> [h1, l2, h2, r, r]
            let product = Tensor::einsum(
                "aij,bcjk->abcik",
                &[collapsed_left.get(l1), collapsed_right.shallow_clone()],
                None::<&[i64]>,
            );
            norm(&product) / left_norms.get(l1).view([-1, 1, 1]) / right_norms.unsqueeze(0)
        })
        .collect::<Vec<_>>();
    let scores = Tensor::stack(&rows, 0).to_kind(collapsed_left.kind());
    let layer = Tensor::arange(n_layers, (Kind::Int64, scores.device()));
    let later = layer
        .view([-1, 1, 1, 1])
        .lt_tensor(&layer.view([1, 1, -1, 1]));
    Ok(scores * later.to_kind(collapsed_left.kind()))
}
