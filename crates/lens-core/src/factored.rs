//! A matrix kept as the product of two factors, `A @ B` (TransformerLens's `FactoredMatrix`):
//! the QK and OV circuits of attention heads are `d_model x d_model` matrices of rank `d_head`,
//! and everything a notebook asks of them (singular values, eigenvalues, norms, products) is
//! computed from the thin factors without forming the product.
//!
//! Leading axes broadcast: `A` `[..., ldim, mdim]` and `B` `[..., mdim, rdim]` stand for one
//! matrix per leading index (one per layer and head for [`crate::circuits`]'s QK and OV).

use tch::{Kind, Tensor};

use crate::model::{ModelError, ModelResult};

/// `A @ B` without the product: `A` `[..., ldim, mdim]`, `B` `[..., mdim, rdim]`.
#[derive(Debug)]
pub struct FactoredMatrix {
    a: Tensor,
    b: Tensor,
}

/// The thin singular value decomposition of a [`FactoredMatrix`] `M = U diag(S) Vᵀ`, with
/// `r = min(ldim, mdim, rdim)` singular values in descending order (TransformerLens returns `V`,
/// not `Vᵀ`, and so do we).
#[derive(Debug)]
pub struct Svd {
    /// `[..., ldim, r]`, orthonormal columns.
    pub u: Tensor,
    /// `[..., r]`, descending.
    pub s: Tensor,
    /// `[..., rdim, r]`, orthonormal columns.
    pub v: Tensor,
}

fn invalid(message: String) -> ModelError {
    ModelError::InvalidInput(message)
}

impl Clone for FactoredMatrix {
    fn clone(&self) -> Self {
        FactoredMatrix {
            a: self.a.shallow_clone(),
            b: self.b.shallow_clone(),
        }
    }
}

impl FactoredMatrix {
    /// `A @ B` from `A` `[..., ldim, mdim]` and `B` `[..., mdim, rdim]`; the leading axes
    /// broadcast against each other. Errors name both shapes when the inner sizes differ or the
    /// leading axes do not broadcast.
    pub fn new(a: &Tensor, b: &Tensor) -> ModelResult<Self> {
        let (sa, sb) = (a.size(), b.size());
        if sa.len() < 2 || sb.len() < 2 || sa[sa.len() - 1] != sb[sb.len() - 2] {
            return Err(invalid(format!(
                "a factored matrix needs A [..., l, m] and B [..., m, r]; got A {sa:?} and B {sb:?}"
            )));
        }
        let leading =
            broadcast_shapes(&sa[..sa.len() - 2], &sb[..sb.len() - 2]).ok_or_else(|| {
                invalid(format!(
                    "the leading axes of A {sa:?} and B {sb:?} do not broadcast"
                ))
            })?;
        let expand = |t: &Tensor, rows: i64, cols: i64| {
            let mut shape = leading.clone();
            shape.extend([rows, cols]);
            t.expand(shape.as_slice(), false)
        };
        Ok(FactoredMatrix {
            a: expand(a, sa[sa.len() - 2], sa[sa.len() - 1]),
            b: expand(b, sb[sb.len() - 2], sb[sb.len() - 1]),
        })
    }

    /// The left factor `[..., ldim, mdim]` (broadcast to the leading shape).
    pub fn a(&self) -> &Tensor {
        &self.a
    }

    /// The right factor `[..., mdim, rdim]`.
    pub fn b(&self) -> &Tensor {
        &self.b
    }

    /// Rows of the product.
    pub fn ldim(&self) -> i64 {
        self.a.size()[self.a.dim() - 2]
    }

    /// The inner (hidden) dimension.
    pub fn mdim(&self) -> i64 {
        self.a.size()[self.a.dim() - 1]
    }

    /// Columns of the product.
    pub fn rdim(&self) -> i64 {
        self.b.size()[self.b.dim() - 1]
    }

    /// The product's shape, `[..., ldim, rdim]`.
    pub fn shape(&self) -> Vec<i64> {
        let mut shape = self.leading();
        shape.extend([self.ldim(), self.rdim()]);
        shape
    }

    /// The number of axes of the product.
    pub fn ndim(&self) -> usize {
        self.a.dim()
    }

    fn leading(&self) -> Vec<i64> {
        let s = self.a.size();
        s[..s.len() - 2].to_vec()
    }

    /// The product `A @ B`, `[..., ldim, rdim]`.
    pub fn ab(&self) -> Tensor {
        self.a.matmul(&self.b)
    }

    /// `B @ A`, `[..., mdim, mdim]`, for a square product (`ldim == rdim`).
    pub fn ba(&self) -> ModelResult<Tensor> {
        self.require_square("B @ A")?;
        Ok(self.b.matmul(&self.a))
    }

    fn require_square(&self, what: &str) -> ModelResult<()> {
        if self.ldim() == self.rdim() {
            Ok(())
        } else {
            Err(invalid(format!(
                "{what} needs a square factored matrix; this one is {:?}",
                self.shape()
            )))
        }
    }

    /// The transpose, `Bᵀ Aᵀ`.
    pub fn transpose(&self) -> Self {
        FactoredMatrix {
            a: self.b.transpose(-2, -1),
            b: self.a.transpose(-2, -1),
        }
    }

    /// The singular value decomposition of the product, from the factors: the SVDs of `A` and
    /// `B`, then of the small `r x r` middle they leave. Recomputed on every call.
    ///
    /// Errors: libtorch's, for factors it cannot decompose (e.g. NaN entries).
    pub fn svd(&self) -> ModelResult<Svd> {
        let (ua, sa, vha) = thin_svd(&self.a)?;
        let (ub, sb, vhb) = thin_svd(&self.b)?;
        let middle = (sa.unsqueeze(-1) * vha).matmul(&ub) * sb.unsqueeze(-2);
        let (um, sm, vhm) = thin_svd(&middle)?;
        Ok(Svd {
            u: ua.matmul(&um),
            s: sm,
            v: vhb.transpose(-2, -1).matmul(&vhm.transpose(-2, -1)),
        })
    }

    /// The eigenvalues of the (square) product, as those of `B @ A` (complex, `[..., mdim]`, in
    /// no particular order; the product's other eigenvalues are zero). Half-precision factors
    /// are computed in f32.
    pub fn eigenvalues(&self) -> ModelResult<Tensor> {
        let ba = self.ba()?;
        let ba = match ba.kind() {
            Kind::Half | Kind::BFloat16 => ba.to_kind(Kind::Float),
            _ => ba,
        };
        Ok(ba.f_linalg_eigvals()?)
    }

    /// The Frobenius norm of the product, `[...]`, from its singular values.
    pub fn norm(&self) -> ModelResult<Tensor> {
        let s = self.svd()?.s;
        Ok(s.square()
            .sum_dim_intlist([-1i64].as_slice(), false, s.kind())
            .sqrt())
    }

    /// The top-left `k x k` corner of the product for the first `k` of every leading index
    /// (TransformerLens's `get_corner`), computed from the factors' corners.
    pub fn corner(&self, k: i64) -> Tensor {
        let mut a = self.a.shallow_clone();
        let mut b = self.b.shallow_clone();
        for axis in 0..self.ndim() - 2 {
            let n = a.size()[axis].min(k);
            a = a.narrow(axis as i64, 0, n);
            b = b.narrow(axis as i64, 0, n);
        }
        let rows = self.ldim().min(k);
        let cols = self.rdim().min(k);
        a.narrow(-2, 0, rows).matmul(&b.narrow(-1, 0, cols))
    }

    /// `M @ other` for a matrix `other` `[..., rdim, n]`. The factorisation is kept where it is
    /// thinner: `other` joins `B` when `rdim > mdim`, else the product becomes the new `A`.
    pub fn matmul(&self, other: &Tensor) -> ModelResult<Self> {
        let s = other.size();
        if s.len() < 2 || s[s.len() - 2] != self.rdim() {
            return Err(invalid(format!(
                "factored matrix {:?} @ tensor {s:?}: the tensor needs {} rows",
                self.shape(),
                self.rdim()
            )));
        }
        if self.rdim() > self.mdim() {
            FactoredMatrix::new(&self.a, &self.b.matmul(other))
        } else {
            FactoredMatrix::new(&self.ab(), other)
        }
    }

    /// `other @ M` for a matrix `other` `[..., n, ldim]`: `other` joins `A` when
    /// `ldim > mdim`, else the product becomes the new `B`.
    pub fn rmatmul(&self, other: &Tensor) -> ModelResult<Self> {
        let s = other.size();
        if s.len() < 2 || s[s.len() - 1] != self.ldim() {
            return Err(invalid(format!(
                "tensor {s:?} @ factored matrix {:?}: the tensor needs {} columns",
                self.shape(),
                self.ldim()
            )));
        }
        if self.ldim() > self.mdim() {
            FactoredMatrix::new(&other.matmul(&self.a), &self.b)
        } else {
            FactoredMatrix::new(other, &self.ab())
        }
    }

    /// `M @ v` for vectors `v` `[..., rdim]`: a tensor `[..., ldim]`.
    pub fn matvec(&self, v: &Tensor) -> ModelResult<Tensor> {
        self.check_vector(v, self.rdim(), "M @ v")?;
        Ok(self
            .a
            .matmul(&self.b.matmul(&v.unsqueeze(-1)))
            .squeeze_dim(-1))
    }

    /// `v @ M` for vectors `v` `[..., ldim]`: a tensor `[..., rdim]`.
    pub fn rmatvec(&self, v: &Tensor) -> ModelResult<Tensor> {
        self.check_vector(v, self.ldim(), "v @ M")?;
        Ok(v.unsqueeze(-2)
            .matmul(&self.a)
            .matmul(&self.b)
            .squeeze_dim(-2))
    }

    fn check_vector(&self, v: &Tensor, n: i64, what: &str) -> ModelResult<()> {
        match v.size().last() {
            Some(&len) if len == n => Ok(()),
            _ => Err(invalid(format!(
                "{what} with M {:?}: the vector needs {n} entries, got shape {:?}",
                self.shape(),
                v.size()
            ))),
        }
    }

    /// `M @ N` of two factored matrices, factored: `(M @ N.A) @ N.B`.
    pub fn matmul_factored(&self, other: &FactoredMatrix) -> ModelResult<Self> {
        self.matmul(&other.a)?.matmul(&other.b)
    }

    /// `s * M` for a scalar `s` (scales `A`).
    pub fn scale(&self, s: f64) -> Self {
        FactoredMatrix {
            a: &self.a * s,
            b: self.b.shallow_clone(),
        }
    }

    /// `diag(S) Vᵀ`, `[..., r, rdim]`: the product with its left orthogonal factor dropped.
    pub fn collapse_l(&self) -> ModelResult<Tensor> {
        let svd = self.svd()?;
        Ok(svd.s.unsqueeze(-1) * svd.v.transpose(-2, -1))
    }

    /// `U diag(S)`, `[..., ldim, r]`: the product with its right orthogonal factor dropped.
    pub fn collapse_r(&self) -> ModelResult<Tensor> {
        let svd = self.svd()?;
        Ok(svd.u * svd.s.unsqueeze(-2))
    }

    /// The same product with balanced factors `U sqrt(S)` and `sqrt(S) Vᵀ`.
    pub fn make_even(&self) -> ModelResult<Self> {
        let svd = self.svd()?;
        let root = svd.s.sqrt();
        FactoredMatrix::new(
            &(svd.u * root.unsqueeze(-2)),
            &(root.unsqueeze(-1) * svd.v.transpose(-2, -1)),
        )
    }

    /// The matrix (or matrices) at `index` of the first leading axis.
    pub fn get(&self, index: i64) -> ModelResult<Self> {
        let leading = self.leading();
        match leading.first() {
            Some(&n) if (-n..n).contains(&index) => Ok(FactoredMatrix {
                a: self.a.get(index),
                b: self.b.get(index),
            }),
            _ => Err(invalid(format!(
                "index {index} out of range of the leading axes {leading:?}"
            ))),
        }
    }

    /// A new leading axis of size 1 at `axis` (counted among the leading axes).
    pub fn unsqueeze(&self, axis: i64) -> ModelResult<Self> {
        let n = self.ndim() as i64 - 2;
        if !(0..=n).contains(&axis) {
            return Err(invalid(format!(
                "unsqueeze at {axis}: a factored matrix of shape {:?} has {n} leading axes",
                self.shape()
            )));
        }
        Ok(FactoredMatrix {
            a: self.a.unsqueeze(axis),
            b: self.b.unsqueeze(axis),
        })
    }
}

/// `torch.linalg.svd(x, full_matrices=False)`: `U`, `S`, `Vᵀ`. Through `torch.svd` (reduced),
/// which returns `V`: tch passes `linalg_svd`'s optional solver name as a string, and any string
/// is refused on the CPU.
fn thin_svd(x: &Tensor) -> ModelResult<(Tensor, Tensor, Tensor)> {
    let (u, s, v) = x.f_svd(true, true)?;
    Ok((u, s, v.transpose(-2, -1)))
}

/// NumPy's broadcasting of two shapes, or `None`.
fn broadcast_shapes(x: &[i64], y: &[i64]) -> Option<Vec<i64>> {
    let n = x.len().max(y.len());
    let at = |s: &[i64], i: usize| {
        if i + s.len() >= n {
            s[i + s.len() - n]
        } else {
            1
        }
    };
    (0..n)
        .map(|i| match (at(x, i), at(y, i)) {
            (a, b) if a == b => Some(a),
            (1, b) => Some(b),
            (a, 1) => Some(a),
            _ => None,
        })
        .collect()
}
