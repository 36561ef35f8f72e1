// The recurrent kernel gradient of GPU training (concatenated after common.wgsl and gemm.wgsl
// with GROUPED = true): dR = H_inᵀ·dZ for every direction at once, one GEMM group per
// (direction, gate block), so each block takes its own left operand. C[k][d][gate][unit] (the
// stacked layout of the recurrent kernels) = Σ over rows (n, t) of
// A[(n, t)][d][k] · dZ[(n, t)][d][gate][unit], where A is the state each step started from
// (`saved` at in_h), or for one gate block (out_w: a GRU with reset_after=False's candidate)
// r ⊙ h_in (`saved` at in_w). Words of GemmParams used here:
//   m = units, n = units, k = rows, groups = directions * gates,
//   in_h = offset of h_in, in_w = offset of r ⊙ h_in, in_c = row stride of both (D * units),
//   out_h = gates per direction, out_w = the gate block that reads r ⊙ h_in (else none),
//   k_w = offset of dZ in b.

fn load_a(row: u32, col: u32, group: u32) -> f32 {
    let d = group / p.out_h;
    let gate = group % p.out_h;
    let offset = select(p.in_h, p.in_w, gate == p.out_w);
    return a[offset + col * p.in_c + d * p.m + row];
}

fn load_b(k: u32, col: u32, ld: u32) -> f32 {
    return b[p.k_w + k * ld + col];
}
