// Dense layers and the recurrent input projection: A is a row-major (M, K) matrix.
// Concatenated after common.wgsl and gemm.wgsl, which hold the tiled GEMM itself.

fn load_a(row: u32, col: u32, group: u32) -> f32 {
    return a[row * p.k + col];
}

fn load_b(k: u32, col: u32, ld: u32) -> f32 {
    return b[k * ld + col];
}
