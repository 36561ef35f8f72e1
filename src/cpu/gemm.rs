//! Safe wrapper over the `gemm` crate's packed, SIMD, multi-threaded matrix multiply.

use ndarray::{ArrayView2, ArrayViewMut2};

/// `c = a · b`, any strides, on as many threads as the size pays for. Panics if the shapes
/// disagree (a bug in the caller, never input).
pub fn matmul_into(a: ArrayView2<f32>, b: ArrayView2<f32>, c: ArrayViewMut2<f32>) {
    matmul_into_on(a, b, c, true);
}

/// `c = a · b`; `threaded: false` keeps it on the calling thread (the caller already runs one
/// product per thread).
pub fn matmul_into_on(
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    c: ArrayViewMut2<f32>,
    threaded: bool,
) {
    product(a, b, c, threaded, false);
}

/// `c += a · b` on the calling thread.
pub fn matmul_add_into(a: ArrayView2<f32>, b: ArrayView2<f32>, c: ArrayViewMut2<f32>) {
    product(a, b, c, false, true);
}

/// `c = a · b`, or `c += a · b` with `accumulate`.
fn product(
    a: ArrayView2<f32>,
    b: ArrayView2<f32>,
    mut c: ArrayViewMut2<f32>,
    threaded: bool,
    accumulate: bool,
) {
    let (m, k) = a.dim();
    let (kb, n) = b.dim();
    assert_eq!(k, kb, "matmul: inner dimensions differ");
    assert_eq!(c.dim(), (m, n), "matmul: output shape");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    // Threads only pay off for enough work: a fork-join costs tens of microseconds, about a
    // million multiply-adds on one core, so smaller products stay on the calling thread.
    let parallelism = if threaded && m * n * k >= 1 << 20 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let (a_rs, a_cs) = (a.strides()[0], a.strides()[1]);
    let (b_rs, b_cs) = (b.strides()[0], b.strides()[1]);
    let (c_rs, c_cs) = (c.strides()[0], c.strides()[1]);
    // SAFETY: the pointers and strides come from live ndarray views whose shapes were checked
    // above to be (m, k), (k, n) and (m, n); `c` is borrowed mutably, so nothing aliases it;
    // read_dst = false means `c` is only written; with `accumulate`, c = 1 * c + 1 * a · b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs,
            c_rs,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn matches_ndarray_dot_on_odd_shapes_and_strides() {
        let a = Array2::from_shape_fn((37, 19), |(i, j)| ((i * 7 + j * 3) % 11) as f32 - 5.0);
        let b = Array2::from_shape_fn((19, 23), |(i, j)| ((i * 5 + j) % 13) as f32 * 0.25 - 1.0);
        let mut c = Array2::zeros((37, 23));
        matmul_into(a.view(), b.view(), c.view_mut());
        assert_eq!(c, a.dot(&b));
        // Transposed (column-major) views.
        let at = a.t().to_owned();
        let mut c2 = Array2::zeros((37, 23));
        matmul_into(at.t(), b.view(), c2.view_mut());
        assert_eq!(c2, a.dot(&b));
        // Accumulating adds to what is there.
        let mut c3 = Array2::from_elem((37, 23), 1.5f32);
        matmul_add_into(a.view(), b.view(), c3.view_mut());
        assert_eq!(c3, a.dot(&b) + 1.5);
    }
}
