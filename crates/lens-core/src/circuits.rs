//! Weights stacked over layers and the circuits of attention heads, for any [`LensModel`]
//! (TransformerLens's `model.W_Q`, `model.QK`, `model.OV`, `all_composition_scores`).
//!
//! Stacked weights are copies, as TransformerLens's are: write through
//! [`LensModel::tl_weight`] (a view of the live parameter on the bridge) to edit the model.

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
    /// `W_pos`, `W_U`, `b_U`, which have no layer axis. With grouped key/value heads `W_K`,
    /// `W_V`, `b_K` and `b_V` are expanded to one per query head (as TransformerLens's
    /// properties), and `_W_K`, `_W_V`, `_b_K`, `_b_V` are the grouped weights, one per
    /// key/value head.
    fn stacked_weight(&self, name: &str) -> ModelResult<Tensor> {
        let global = match name {
            "W_E" => Some("embed.W_E"),
            "W_pos" => Some("pos_embed.W_pos"),
            "W_U" => Some("unembed.W_U"),
            "b_U" => Some("unembed.b_U"),
            _ => None,
        };
        if let Some(tl) = global {
            return self.tl_weight(tl).map(|t| t.copy());
        }
        let module = match name.trim_start_matches('_') {
            "W_Q" | "W_K" | "W_V" | "W_O" | "b_Q" | "b_K" | "b_V" | "b_O" => "attn",
            "W_in" | "W_gate" | "W_out" | "b_in" | "b_out" => "mlp",
            _ => {
                return Err(ModelError::InvalidInput(format!(
                    "no stacked weight '{name}'; they are W_E, W_pos, W_U, b_U, W_Q, W_K, W_V, \
                     W_O, b_Q, b_K, b_V, b_O, W_in, W_gate, W_out, b_in, b_out and the grouped \
                     _W_K, _W_V, _b_K, _b_V"
                )))
            }
        };
        let names = self.tl_weight_names();
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
            Composition::V => self.ov()?,
        };
        composition_scores(&left, &right)
    }
}

impl<M: LensModel + ?Sized> Circuits for M {}

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
    let norm = |t: &Tensor| t.frobenius_norm([-2i64, -1].as_slice(), false);
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
