// The GEMMs of the Dense backward, concatenated after common.wgsl and gemm.wgsl with the host
// setting TRANS_A / TRANS_B first: dW = Xᵀ·dY reads A = X (K rows of M) transposed, and
// dX = dY·Wᵀ reads B = W (N rows of K) transposed. Split-K (K = the batch's rows for dW) uses
// gemm.wgsl's partial sums and `reduce_split_k`.

fn load_a(row: u32, col: u32, group: u32) -> f32 {
    if (TRANS_A) {
        return a[col * p.m + row];
    }
    return a[row * p.k + col];
}

fn load_b(k: u32, col: u32, ld: u32) -> f32 {
    if (TRANS_B) {
        return b[col * p.k + k];
    }
    return b[k * ld + col];
}
