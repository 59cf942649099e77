//! `FactoredMatrix` against the dense product it stands for.

use lens_core::factored::FactoredMatrix;
use tch::{Device, Kind, Tensor};

fn random(shape: &[i64], seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn(shape, (Kind::Double, Device::Cpu))
}

fn close(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.allclose(b, 1e-9, 1e-9, false)
}

#[test]
fn svd_norm_and_eigenvalues_come_from_the_factors() {
    // Leading axes [2, 1] and [3] broadcast to [2, 3]; the product is 6 x 6 of rank 4.
    let m = FactoredMatrix::new(&random(&[2, 1, 6, 4], 1), &random(&[3, 4, 6], 2)).unwrap();
    assert_eq!(m.shape(), vec![2, 3, 6, 6]);
    assert_eq!((m.ldim(), m.mdim(), m.rdim()), (6, 4, 6));
    let dense = m.ab();
    let svd = m.svd().unwrap();
    assert_eq!(svd.u.size(), vec![2, 3, 6, 4]);
    assert_eq!(svd.s.size(), vec![2, 3, 4]);
    assert_eq!(svd.v.size(), vec![2, 3, 6, 4]);
    let rebuilt = (&svd.u * svd.s.unsqueeze(-2)).matmul(&svd.v.transpose(-2, -1));
    assert!(close(&rebuilt, &dense));
    let (_, dense_s, _) = dense.svd(true, false);
    let dense_s = dense_s.narrow(-1, 0, 4);
    assert!(close(&svd.s, &dense_s));
    let frobenius = dense.linalg_norm_ord_str("fro", [-2i64, -1].as_slice(), false, None);
    assert!(close(&m.norm().unwrap(), &frobenius));
    // The product's non-zero eigenvalues are those of B A: their sum is the trace.
    let eig = m.eigenvalues().unwrap();
    assert_eq!(eig.size(), vec![2, 3, 4]);
    let trace = dense
        .diagonal(0, -2, -1)
        .sum_dim_intlist([-1i64].as_slice(), false, Kind::Double);
    let eig_sum = tch::Tensor::view_as_real(&eig)
        .select(-1, 0)
        .sum_dim_intlist([-1i64].as_slice(), false, Kind::Double);
    assert!(close(&eig_sum, &trace));
}

#[test]
fn products_transpose_and_corners_match_the_dense_matrix() {
    let m = FactoredMatrix::new(&random(&[3, 8, 2], 3), &random(&[3, 2, 5], 4)).unwrap();
    let dense = m.ab();
    assert!(close(&m.transpose().ab(), &dense.transpose(-2, -1)));
    let right = random(&[5, 7], 5);
    let left = random(&[4, 8], 6);
    assert!(close(
        &m.matmul(&right).unwrap().ab(),
        &dense.matmul(&right)
    ));
    assert!(close(&m.rmatmul(&left).unwrap().ab(), &left.matmul(&dense)));
    let v = random(&[5], 7);
    assert!(close(&m.matvec(&v).unwrap(), &dense.matmul(&v)));
    let w = random(&[8], 8);
    assert!(close(&m.rmatvec(&w).unwrap(), &w.matmul(&dense)));
    let other = FactoredMatrix::new(&random(&[5, 3], 9), &random(&[3, 4], 10)).unwrap();
    assert!(close(
        &m.matmul_factored(&other).unwrap().ab(),
        &dense.matmul(&other.ab())
    ));
    assert!(close(&m.scale(2.5).ab(), &(&dense * 2.5)));
    assert!(close(&m.make_even().unwrap().ab(), &dense));
    assert!(close(
        &m.corner(2),
        &dense.narrow(0, 0, 2).narrow(1, 0, 2).narrow(2, 0, 2)
    ));
    assert!(close(&m.get(1).unwrap().ab(), &dense.get(1)));
    assert_eq!(m.unsqueeze(0).unwrap().shape(), vec![1, 3, 8, 5]);
    // collapse_l / collapse_r keep the product's Gram matrices.
    let cl = m.collapse_l().unwrap();
    assert!(close(
        &cl.transpose(-2, -1).matmul(&cl),
        &dense.transpose(-2, -1).matmul(&dense)
    ));
    let cr = m.collapse_r().unwrap();
    assert!(close(
        &cr.matmul(&cr.transpose(-2, -1)),
        &dense.matmul(&dense.transpose(-2, -1))
    ));
}

#[test]
fn mismatched_factors_are_errors_that_name_the_shapes() {
    let err = FactoredMatrix::new(&random(&[4, 3], 1), &random(&[2, 5], 2)).unwrap_err();
    assert!(
        err.to_string().contains("[4, 3]") && err.to_string().contains("[2, 5]"),
        "{err}"
    );
    let err = FactoredMatrix::new(&random(&[2, 4, 3], 1), &random(&[3, 3, 5], 2)).unwrap_err();
    assert!(err.to_string().contains("do not broadcast"), "{err}");
    let m = FactoredMatrix::new(&random(&[4, 3], 1), &random(&[3, 5], 2)).unwrap();
    assert!(m.ba().unwrap_err().to_string().contains("square"));
    assert!(m
        .matmul(&random(&[4, 2], 3))
        .unwrap_err()
        .to_string()
        .contains("5 rows"));
}
