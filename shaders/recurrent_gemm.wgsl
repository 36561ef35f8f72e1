// The grouped GEMMs of GPU recurrent training (concatenated after common.wgsl and gemm.wgsl
// with GROUPED = true): one GEMM group per (direction, gate block), so each block takes its
// own left operand. `stride_h` picks what A and B are:
//
// Mode 0, the recurrent kernel gradient dR = H_inᵀ·dZ for every direction at once.
//   C[k][d][gate][unit] (the stacked layout of the recurrent kernels) = Σ over rows (n, t) of
//   A[(n, t)][d][k] · dZ[(n, t)][d][gate][unit], where A is the state each step started from
//   (`saved` at in_h), or for one gate block (out_w: a GRU with reset_after=False's candidate)
//   r ⊙ h_in (`saved` at in_w). With recurrent dropout (pad_top blocks per direction: 1 shared,
//   else one per gate) h_in is multiplied by the block's mask [d][block][n][k], read from the
//   `bias` binding at pad_left (r ⊙ h_in already holds its mask). Words of GemmParams used:
//   m = units, n = units, k = rows, groups = directions * gates,
//   in_h = offset of h_in, in_w = offset of r ⊙ h_in, in_c = row stride of both (D * units),
//   out_h = gates per direction, out_w = the gate block that reads r ⊙ h_in (else none),
//   k_w = offset of dZ in b, stride_w = timesteps, in_c_total = batch.
//
// With input dropout each group g (a direction and an input mask block) reads x times its own
// mask, A = XM[g] (rows, features) at g * in_h with row stride in_c (`rnn_dropout`'s expand):
// Mode 1, the input projection: C[(n, t)][g cols] = XM[g] · W[:, g cols] + bias; b = the
//   stacked kernels (features, D·G).
// Mode 2, the kernel gradient: C[f][g cols] = XM[g]ᵀ · dZ[:, g cols].
// Mode 3, the input gradient's parts: C[(n, t)][g][f] = dZ[(n, t)][g cols] · W[f][g cols]ᵀ
//   (k = columns per group, in_c = D·G, the row stride of both dZ and W), which `rnn_dropout`
//   then masks and sums over g.

fn load_a(row: u32, col: u32, group: u32) -> f32 {
    switch p.stride_h {
        case 1u: {
            return a[group * p.in_h + row * p.in_c + col];
        }
        case 2u: {
            return a[group * p.in_h + col * p.in_c + row];
        }
        case 3u: {
            return a[row * p.in_c + group * p.k + col];
        }
        default: {
            let d = group / p.out_h;
            let gate = group % p.out_h;
            let offset = select(p.in_h, p.in_w, gate == p.out_w);
            var v = a[offset + col * p.in_c + d * p.m + row];
            if (p.pad_top != 0u && gate != p.out_w) {
                let blk = d * p.pad_top + min(gate, p.pad_top - 1u);
                let n = col / p.stride_w;
                v *= bias[p.pad_left + (blk * p.in_c_total + n) * p.m + row];
            }
            return v;
        }
    }
}

fn load_b(k: u32, col: u32, ld: u32) -> f32 {
    if (p.stride_h == 3u) {
        let group = col / p.n;
        return b[(col % p.n) * p.in_c + group * p.k + k];
    }
    return b[p.k_w + k * ld + col];
}
