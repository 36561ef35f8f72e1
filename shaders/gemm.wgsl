// Tiled GEMM core shared by matmul.wgsl (Dense, recurrent input projection) and conv2d.wgsl
// (implicit GEMM). C[M, N] = act(A[M, K] * B[K, N] + bias[N]); the including file defines
// `load_a(row, col, group)`, which reads A (a plain matrix or an im2col view of a channels-last
// image; `group` selects the input channels of a grouped convolution), and `load_b(k, col, ld)`,
// which reads B (row-major with row stride ld, or transposed in the Dense backward).
//
// Groups (conv only, groups > 1): workgroups also walk the groups; group g multiplies its A
// columns by B's columns g*n..(g+1)*n and writes C's columns g*n.. (B and C rows hold
// n * groups values). Never combined with split-K.
//
// A workgroup of 16x16 threads computes a 64x64 tile of C; each thread owns a 4x4 register
// block at rows lid.y + 16*i and columns lid.x + 16*j, so shared-memory reads are conflict-free
// and the final stores are coalesced. K is walked in slices of 16 through workgroup memory.
//
// Split-K (k_chunk > 0): when there are too few output tiles to fill the GPU (a Dense layer after
// Flatten at small batch), workgroups also split K into chunks of k_chunk; each writes its partial
// product to c[split][M][N] and `reduce_split_k` sums them and applies bias and activation.

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
    // 0: one workgroup per tile walks all of K. Else the K range of each split (a multiple of 16).
    k_chunk: u32,
    // 1 for Dense; conv: channel groups (in_c is then the channels of one group).
    groups: u32,
    // Conv: channels of the whole input (the pixel stride of A).
    in_c_total: u32,
    // Conv depth axis (1 for 1-D and 2-D convs) and dilations.
    in_d: u32,
    out_d: u32,
    k_d: u32,
    stride_d: u32,
    pad_front: u32,
    dil_d: u32,
    dil_h: u32,
    dil_w: u32,
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

// A's tile is stored transposed, rows A_STRIDE apart: with a stride of 64 the 16 threads
// storing one row's 16 k values would all hit one shared-memory bank (a 16-way conflict); 66
// spreads a warp's stores over all 32 banks, and the reads stay broadcasts.
const A_STRIDE: u32 = TILE_M + 2u;
var<workgroup> a_tile: array<f32, 1056>; // [TILE_K][A_STRIDE]
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
    let tiles = n_tiles * m_tiles;
    let linear = linear_workgroup(wg, nwg);
    // `GROUPED` is a constant the host puts before this file (true only for Kernel::ConvNd),
    // so Dense and the plain conv compile none of the group arithmetic.
    var groups = 1u;
    if (GROUPED) {
        groups = max(p.groups, 1u);
    }
    if (linear >= tiles * split_count() * groups) {
        return;
    }
    let tile = linear % tiles;
    var split = linear / tiles;
    var group = 0u;
    if (GROUPED) {
        split = split % split_count();
        group = linear / (tiles * split_count());
    }
    // Row stride of B and C, and this group's first column in them.
    let ld = p.n * groups;
    let col_base = group * p.n;
    let row0 = (tile / n_tiles) * TILE_M;
    let col0 = (tile % n_tiles) * TILE_N;
    var k_begin = 0u;
    var k_end = p.k;
    if (p.k_chunk > 0u) {
        k_begin = split * p.k_chunk;
        k_end = min(p.k, k_begin + p.k_chunk);
    }

    // Row i of the thread's 4x4 block is acc[i]; vectors rather than a nested array, which some
    // compilers (llvmpipe's) keep in memory instead of registers.
    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));

    for (var k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        for (var e = li; e < TILE_M * TILE_K; e += THREADS) {
            let r = e / TILE_K;
            let kk = e % TILE_K;
            var v = 0.0;
            if (row0 + r < p.m && k0 + kk < k_end) {
                v = load_a(row0 + r, k0 + kk, group);
            }
            a_tile[kk * A_STRIDE + r] = v;
        }
        for (var e = li; e < TILE_K * TILE_N; e += THREADS) {
            let kk = e / TILE_N;
            let cc = e % TILE_N;
            var v = 0.0;
            if (k0 + kk < k_end && col0 + cc < p.n) {
                v = load_b(k0 + kk, col_base + col0 + cc, ld);
            }
            b_tile[kk * TILE_N + cc] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let a_at = kk * A_STRIDE + lid.y;
            let b_at = kk * TILE_N + lid.x;
            let bv = vec4<f32>(b_tile[b_at], b_tile[b_at + 16u], b_tile[b_at + 32u], b_tile[b_at + 48u]);
            acc[0] = fma(vec4<f32>(a_tile[a_at]), bv, acc[0]);
            acc[1] = fma(vec4<f32>(a_tile[a_at + 16u]), bv, acc[1]);
            acc[2] = fma(vec4<f32>(a_tile[a_at + 32u]), bv, acc[2]);
            acc[3] = fma(vec4<f32>(a_tile[a_at + 48u]), bv, acc[3]);
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let row = row0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x + 16u * j;
            if (row < p.m && col < p.n) {
                if (p.k_chunk > 0u) {
                    c[(split * p.m + row) * p.n + col] = acc[i][j];
                } else {
                    c[row * ld + col_base + col] = finish(acc[i][j], col_base + col);
                }
            }
        }
    }
}

fn split_count() -> u32 {
    if (p.k_chunk == 0u) {
        return 1u;
    }
    return (p.k + p.k_chunk - 1u) / p.k_chunk;
}

fn finish(sum: f32, col: u32) -> f32 {
    var v = sum;
    if (p.has_bias != 0u) {
        v += bias[col];
    }
    return activate(v, p.act);
}

// Split-K epilogue: `a` holds the partial products [split][M][N]; one thread per output.
@compute @workgroup_size(64, 1, 1)
fn reduce_split_k(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    let outputs = p.m * p.n;
    if (i >= outputs) {
        return;
    }
    var sum = 0.0;
    for (var s = 0u; s < split_count(); s++) {
        sum += a[s * outputs + i];
    }
    c[i] = finish(sum, i % p.n);
}
