//! Memory layouts of tensors: a weight is often a permuted view of a contiguous tensor (the
//! bridge's `W_U` is `lm_head.weight.T`), and arithmetic or copies that stride through it run
//! several times slower than on the same memory in its own order.

use tch::Tensor;

/// The dimensions of `t` from the largest stride to the smallest (ties keep their order).
pub fn memory_order(t: &Tensor) -> Vec<i64> {
    let stride = t.stride();
    let mut order: Vec<i64> = (0..t.dim() as i64).collect();
    order.sort_by_key(|&d| std::cmp::Reverse(stride[d as usize]));
    order
}

/// `t` viewed with its dimensions in memory order (a scalar as one entry): contiguous when `t`
/// is a permutation of a contiguous tensor, which whole-tensor reductions run on ten times faster
/// than on the strided view (110 ms against 10 ms for `aminmax` over GPT-2's `W_U` on 2 cores).
pub fn in_memory_order(t: &Tensor) -> Tensor {
    in_order(t, &memory_order(t))
}

/// `t` permuted into `order`, as at least a vector (a scalar becomes one entry).
pub fn in_order(t: &Tensor, order: &[i64]) -> Tensor {
    if t.dim() == 0 {
        t.reshape([1])
    } else {
        t.permute(order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn a_transposed_matrix_is_contiguous_in_memory_order() {
        let rows = Tensor::arange(12, (Kind::Float, Device::Cpu)).reshape([3, 4]);
        let transposed = rows.transpose(0, 1);
        assert_eq!(memory_order(&transposed), [1, 0]);
        let viewed = in_memory_order(&transposed);
        assert!(viewed.is_contiguous() && viewed.equal(&rows));
        assert!(!in_memory_order(&rows.narrow(1, 0, 2)).is_contiguous());
        assert_eq!(in_memory_order(&Tensor::from(3.0f32)).size(), [1]);
    }
}
