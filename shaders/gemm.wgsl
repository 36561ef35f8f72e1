// Tiled GEMM core shared by matmul.wgsl (Dense, recurrent input projection) and conv2d.wgsl
// (implicit GEMM). C[M, N] = act(A[M, K] * B[K, N] + bias[N]); the including file defines
// `load_a(row, col)`, which reads A (a plain matrix or an im2col view of an NHWC image).
//
// A workgroup of 16x16 threads computes a 64x64 tile of C; each thread owns a 4x4 register
// block at rows lid.y + 16*i and columns lid.x + 16*j, so shared-memory reads are conflict-free
// and the final stores are coalesced. K is walked in slices of 16 through workgroup memory.

struct GemmParams {
    act: Act,
    m: u32,
    n: u32,
    k: u32,
    has_bias: u32,
    // Conv geometry (conv2d.wgsl only): input H, W, C; output H, W; kernel H, W; strides; pads.
    in_h: u32,
    in_w: u32,
    in_c: u32,
    out_h: u32,
    out_w: u32,
    k_h: u32,
    k_w: u32,
    stride_h: u32,
    stride_w: u32,
    pad_top: u32,
    pad_left: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<uniform> p: GemmParams;

const TILE_M: u32 = 64u;
const TILE_N: u32 = 64u;
const TILE_K: u32 = 16u;
const THREADS: u32 = 256u;

var<workgroup> a_tile: array<f32, 1024>; // [TILE_K][TILE_M]
var<workgroup> b_tile: array<f32, 1024>; // [TILE_K][TILE_N]

@compute @workgroup_size(16, 16, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let n_tiles = (p.n + TILE_N - 1u) / TILE_N;
    let m_tiles = (p.m + TILE_M - 1u) / TILE_M;
    let tile = linear_workgroup(wg, nwg);
    if (tile >= n_tiles * m_tiles) {
        return;
    }
    let row0 = (tile / n_tiles) * TILE_M;
    let col0 = (tile % n_tiles) * TILE_N;

    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) {
            acc[i][j] = 0.0;
        }
    }

    for (var k0 = 0u; k0 < p.k; k0 += TILE_K) {
        for (var e = li; e < TILE_M * TILE_K; e += THREADS) {
            let r = e / TILE_K;
            let kk = e % TILE_K;
            var v = 0.0;
            if (row0 + r < p.m && k0 + kk < p.k) {
                v = load_a(row0 + r, k0 + kk);
            }
            a_tile[kk * TILE_M + r] = v;
        }
        for (var e = li; e < TILE_K * TILE_N; e += THREADS) {
            let kk = e / TILE_N;
            let cc = e % TILE_N;
            var v = 0.0;
            if (k0 + kk < p.k && col0 + cc < p.n) {
                v = b[(k0 + kk) * p.n + col0 + cc];
            }
            b_tile[kk * TILE_N + cc] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            var av: array<f32, 4>;
            var bv: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                av[i] = a_tile[kk * TILE_M + lid.y + 16u * i];
                bv[i] = b_tile[kk * TILE_N + lid.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i][j] = fma(av[i], bv[j], acc[i][j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let row = row0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x + 16u * j;
            if (row < p.m && col < p.n) {
                var v = acc[i][j];
                if (p.has_bias != 0u) {
                    v += bias[col];
                }
                c[row * p.n + col] = activate(v, p.act);
            }
        }
    }
}
