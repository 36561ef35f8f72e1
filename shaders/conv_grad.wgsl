// Convolution backward (concatenated after common.wgsl), channels-last as the forward, on the
// (D, H, W) window geometry of conv2d.wgsl (1-D and 2-D convs have a depth axis of 1; groups,
// dilation, same / causal pads). Both gradients are implicit GEMMs, one per channel group:
//
// - input gradient (`INPUT_GRAD` true): dX[M = N * in positions, cg] = A · B with
//   K = (tap, filter of the group): A[pixel, (t, f)] = dY at the output position whose tap t
//   reads this pixel (zero where none: between strides, past the edges), B[(t, f), ci] =
//   W[t, ci, f]. Each input pixel thus gathers over exactly the taps that touch it.
// - kernel gradient (`INPUT_GRAD` false): dW[M = (tap, ci), fg] = A · B with K = N * out
//   positions: A = im2col(X)ᵀ, B = dY. K is long, so it is split (`k_chunk`) into partial
//   products c[split][tap * cg + ci][F], summed in split order by `grad_reduce`.
// - the forward convolution (`CONV_FORWARD` true, one group): C[N * out positions, F] =
//   im2col(X) · W, the kernel gradient's A read the other way round. A transposed
//   convolution's input gradient is this convolution of its output gradient.
//
// `INPUT_GRAD` and `CONV_FORWARD` are constants the host puts before this file, so each
// pipeline compiles one mode. A workgroup of 16x16 threads computes a 64x64 tile of C with a 4x4 register block per
// thread, walking K in slices of 16 through workgroup memory, as gemm.wgsl does. No atomics:
// every output is written by one thread, so results are deterministic.
//
// Also here: `grad_reduce` (sums split partials) and `bias_grad` (column sums of a matrix in
// chunks of rows, the bias gradient).

struct ConvGradParams {
    // GEMM of one group: C[m, n] over k.
    m: u32,
    n: u32,
    k: u32,
    groups: u32,
    // 0: one pass over K. Else the K range of each split.
    k_chunk: u32,
    // Channels of x (C) and of dy (F), and of one group of each.
    channels: u32,
    filters: u32,
    group_channels: u32,
    group_filters: u32,
    in_d: u32,
    in_h: u32,
    in_w: u32,
    out_d: u32,
    out_h: u32,
    out_w: u32,
    k_d: u32,
    k_h: u32,
    k_w: u32,
    stride_d: u32,
    stride_h: u32,
    stride_w: u32,
    pad_d: u32,
    pad_h: u32,
    pad_w: u32,
    dil_d: u32,
    dil_h: u32,
    dil_w: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> p: ConvGradParams;

const TILE: u32 = 64u;
const TILE_K: u32 = 16u;
const THREADS: u32 = 256u;

// A's tile is stored transposed, rows A_STRIDE apart: with a stride of 64 the 16 threads
// storing one row's 16 k values would all hit one shared-memory bank (a 16-way conflict); 66
// spreads a warp's stores over all 32 banks, and the reads stay broadcasts.
const A_STRIDE: u32 = TILE + 2u;
var<workgroup> a_tile: array<f32, 1056>; // [TILE_K][A_STRIDE]
var<workgroup> b_tile: array<f32, 1024>; // [TILE_K][TILE] (columns of C)

fn split_count() -> u32 {
    if (p.k_chunk == 0u) {
        return 1u;
    }
    return (p.k + p.k_chunk - 1u) / p.k_chunk;
}

// Along one axis: the output position whose tap `t` reads input position `i`, or -1 when
// that tap lands between strides or outside the output.
fn source_output(i: u32, t: u32, stride: u32, dil: u32, pad: u32, size: u32) -> i32 {
    let at = i32(i + pad) - i32(t * dil);
    if (at < 0) {
        return -1;
    }
    let o = u32(at) / stride;
    if (o * stride != u32(at) || o >= size) {
        return -1;
    }
    return i32(o);
}

// Along one axis: the input position tap `t` of output position `o` reads, or -1 (padding).
fn source_input(o: u32, t: u32, stride: u32, dil: u32, pad: u32, size: u32) -> i32 {
    let at = i32(o * stride + t * dil) - i32(pad);
    if (at < 0 || at >= i32(size)) {
        return -1;
    }
    return at;
}

// A[row, col] of this mode's GEMM (group `g`).
fn load_a(row: u32, col: u32, g: u32) -> f32 {
    if (INPUT_GRAD) {
        // row: input pixel (n, z, y, x); col: (tap, filter of the group).
        let f = col % p.group_filters;
        let tap = col / p.group_filters;
        let tx = tap % p.k_w;
        let ty = (tap / p.k_w) % p.k_h;
        let tz = tap / (p.k_w * p.k_h);
        let ix = row % p.in_w;
        let iy = (row / p.in_w) % p.in_h;
        let iz = (row / (p.in_w * p.in_h)) % p.in_d;
        let n = row / (p.in_w * p.in_h * p.in_d);
        let ox = source_output(ix, tx, p.stride_w, p.dil_w, p.pad_w, p.out_w);
        let oy = source_output(iy, ty, p.stride_h, p.dil_h, p.pad_h, p.out_h);
        let oz = source_output(iz, tz, p.stride_d, p.dil_d, p.pad_d, p.out_d);
        if (ox < 0 || oy < 0 || oz < 0) {
            return 0.0;
        }
        let pixel = ((n * p.out_d + u32(oz)) * p.out_h + u32(oy)) * p.out_w + u32(ox);
        return a[pixel * p.filters + g * p.group_filters + f];
    }
    // Kernel gradient: row = (tap, input channel of the group), col = output pixel
    // (n, z, y, x); the forward convolution the other way round.
    var tap_channel = row;
    var out_pixel = col;
    if (CONV_FORWARD) {
        tap_channel = col;
        out_pixel = row;
    }
    let ci = tap_channel % p.group_channels;
    let tap = tap_channel / p.group_channels;
    let tx = tap % p.k_w;
    let ty = (tap / p.k_w) % p.k_h;
    let tz = tap / (p.k_w * p.k_h);
    let ox = out_pixel % p.out_w;
    let oy = (out_pixel / p.out_w) % p.out_h;
    let oz = (out_pixel / (p.out_w * p.out_h)) % p.out_d;
    let n = out_pixel / (p.out_w * p.out_h * p.out_d);
    let ix = source_input(ox, tx, p.stride_w, p.dil_w, p.pad_w, p.in_w);
    let iy = source_input(oy, ty, p.stride_h, p.dil_h, p.pad_h, p.in_h);
    let iz = source_input(oz, tz, p.stride_d, p.dil_d, p.pad_d, p.in_d);
    if (ix < 0 || iy < 0 || iz < 0) {
        return 0.0;
    }
    let pixel = ((n * p.in_d + u32(iz)) * p.in_h + u32(iy)) * p.in_w + u32(ix);
    return a[pixel * p.channels + g * p.group_channels + ci];
}

// B[row, col] of this mode's GEMM (group `g`).
fn load_b(row: u32, col: u32, g: u32) -> f32 {
    if (INPUT_GRAD) {
        // row: (tap, filter of the group); col: input channel of the group. W is (tap, cg, F).
        let f = row % p.group_filters;
        let tap = row / p.group_filters;
        return b[(tap * p.group_channels + col) * p.filters + g * p.group_filters + f];
    }
    // Kernel gradient: row = output pixel, col = filter of the group (B = dY). Forward:
    // row = (tap, channel), col = filter (B = W).
    return b[row * p.filters + g * p.group_filters + col];
}

fn store(split: u32, row: u32, col: u32, g: u32, v: f32) {
    if (INPUT_GRAD) {
        c[row * p.channels + g * p.group_channels + col] = v;
    } else {
        // Split s writes its own copy of the kernel's shape (the kernel itself when unsplit);
        // the forward writes y (m output pixels by F).
        c[(split * p.m + row) * p.filters + g * p.group_filters + col] = v;
    }
}

@compute @workgroup_size(16, 16, 1)
fn conv_grad_gemm(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let n_tiles = (p.n + TILE - 1u) / TILE;
    let tiles = n_tiles * ((p.m + TILE - 1u) / TILE);
    let splits = split_count();
    let linear = linear_workgroup(wg, nwg);
    if (linear >= tiles * splits * p.groups) {
        return;
    }
    let tile = linear % tiles;
    let split = (linear / tiles) % splits;
    let g = linear / (tiles * splits);
    let row0 = (tile / n_tiles) * TILE;
    let col0 = (tile % n_tiles) * TILE;
    var k_begin = 0u;
    var k_end = p.k;
    if (p.k_chunk > 0u) {
        k_begin = split * p.k_chunk;
        k_end = min(p.k, k_begin + p.k_chunk);
    }

    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));

    for (var k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        // Neighbouring threads load neighbouring addresses: along K (channels) for the input
        // gradient and the forward, along rows (channels of x) for the kernel gradient.
        for (var e = li; e < TILE * TILE_K; e += THREADS) {
            var r = e % TILE;
            var kk = e / TILE;
            if (INPUT_GRAD || CONV_FORWARD) {
                r = e / TILE_K;
                kk = e % TILE_K;
            }
            var v = 0.0;
            if (row0 + r < p.m && k0 + kk < k_end) {
                v = load_a(row0 + r, k0 + kk, g);
            }
            a_tile[kk * A_STRIDE + r] = v;
        }
        for (var e = li; e < TILE_K * TILE; e += THREADS) {
            var kk = e / TILE;
            var cc = e % TILE;
            if (INPUT_GRAD) {
                kk = e % TILE_K;
                cc = e / TILE_K;
            }
            var v = 0.0;
            if (k0 + kk < k_end && col0 + cc < p.n) {
                v = load_b(k0 + kk, col0 + cc, g);
            }
            b_tile[kk * TILE + cc] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            let a_at = kk * A_STRIDE + lid.y;
            let b_at = kk * TILE + lid.x;
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
                store(split, row, col, g, acc[i][j]);
            }
        }
    }
}

// c[i] = Σ_s a[s * n + i] for i < n, s < k, in split order. One thread per output.
@compute @workgroup_size(64, 1, 1)
fn grad_reduce(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    if (i >= p.n) {
        return;
    }
    var sum = 0.0;
    for (var s = 0u; s < p.k; s++) {
        sum += a[s * p.n + i];
    }
    c[i] = sum;
}

// Column sums of a (m, n) matrix over chunks of k_chunk rows: c[chunk][col]. One thread per
// (chunk, column); neighbouring threads read neighbouring columns.
@compute @workgroup_size(64, 1, 1)
fn bias_grad(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    let chunks = max((p.m + p.k_chunk - 1u) / p.k_chunk, 1u);
    if (i >= chunks * p.n) {
        return;
    }
    let col = i % p.n;
    let chunk = i / p.n;
    let end = min(p.m, (chunk + 1u) * p.k_chunk);
    var sum = 0.0;
    for (var r = chunk * p.k_chunk; r < end; r++) {
        sum += a[r * p.n + col];
    }
    c[i] = sum;
}
