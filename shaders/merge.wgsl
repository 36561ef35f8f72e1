// Merge ops (concatenated after common.wgsl): the broadcast elementwise binary op of merges and
// operator nodes, L2 normalization of rows and the batched product of Keras's Dot.
// Every entry point binds a, b (read) and y (read_write); the uniform words are
//   shape[8], a_strides[8], b_strides[8], w[8]   (strides in elements, the batch axis first).

struct MergeParams {
    shape: array<vec4<u32>, 2>,
    a_strides: array<vec4<u32>, 2>,
    b_strides: array<vec4<u32>, 2>,
    w: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: MergeParams;

// Element i of one 8-word field of the uniform block (read in place, not copied).
fn shape_at(i: u32) -> u32 {
    return p.shape[i / 4u][i % 4u];
}

fn a_strides_at(i: u32) -> u32 {
    return p.a_strides[i / 4u][i % 4u];
}

fn b_strides_at(i: u32) -> u32 {
    return p.b_strides[i / 4u][i % 4u];
}

fn w_at(i: u32) -> u32 {
    return p.w[i / 4u][i % 4u];
}

const FLAG_A_IS_Y: u32 = 1u;      // read the first operand from y itself (a fold step, in place)
const FLAG_B_SCALAR: u32 = 2u;    // the second operand is the constant w[4]
const FLAG_SCALAR_FIRST: u32 = 4u; // with FLAG_B_SCALAR: constant op x

fn apply(op: u32, l: f32, r: f32) -> f32 {
    switch op {
        case 0u: { return l + r; }
        case 1u: { return l - r; }
        case 2u: { return l * r; }
        case 3u: { return l / r; }
        case 4u: { return max(l, r); }
        default: { return min(l, r); }
    }
}

// w: rank, total, op, flags, scalar (f32 bits). One thread per output element.
@compute @workgroup_size(64, 1, 1)
fn binary(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    let rank = w_at(0u);
    let total = w_at(1u);
    if (i >= total) {
        return;
    }
    let op = w_at(2u);
    let flags = w_at(3u);
    var rem = i;
    var ia = 0u;
    var ib = 0u;
    for (var d = i32(rank) - 1; d >= 0; d = d - 1) {
        let n = shape_at(u32(d));
        let c = rem % n;
        rem = rem / n;
        ia = ia + c * a_strides_at(u32(d));
        ib = ib + c * b_strides_at(u32(d));
    }
    var l: f32;
    if ((flags & FLAG_A_IS_Y) != 0u) {
        l = y[i];
    } else {
        l = a[ia];
    }
    if ((flags & FLAG_B_SCALAR) != 0u) {
        let s = bitcast<f32>(w_at(4u));
        if ((flags & FLAG_SCALAR_FIRST) != 0u) {
            y[i] = apply(op, s, l);
        } else {
            y[i] = apply(op, l, s);
        }
    } else {
        y[i] = apply(op, l, b[ib]);
    }
}

// y (rows x k) in place: each row times min(rsqrt(sum of squares), 1 / epsilon).
// w: rows, k, 1/epsilon (f32 bits).
@compute @workgroup_size(64, 1, 1)
fn normalize_rows(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row = linear_workgroup(wg, nwg) * 64u + li;
    let rows = w_at(0u);
    let k = w_at(1u);
    if (row >= rows) {
        return;
    }
    let base = row * k;
    var ss = 0.0;
    for (var j = 0u; j < k; j = j + 1u) {
        let v = y[base + j];
        ss = ss + v * v;
    }
    let inv = min(1.0 / sqrt(ss), bitcast<f32>(w_at(2u)));
    for (var j = 0u; j < k; j = j + 1u) {
        y[base + j] = y[base + j] * inv;
    }
}

// y[t, i, j] = sum_k a[t, i, k] * b[t, j, k] for every item t. w: batch, m, n, k.
@compute @workgroup_size(64, 1, 1)
fn batched_dot(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let idx = linear_workgroup(wg, nwg) * 64u + li;
    let batch = w_at(0u);
    let m = w_at(1u);
    let n = w_at(2u);
    let k = w_at(3u);
    if (idx >= batch * m * n) {
        return;
    }
    let j = idx % n;
    let i = (idx / n) % m;
    let t = idx / (m * n);
    let ra = (t * m + i) * k;
    let rb = (t * n + j) * k;
    var acc = 0.0;
    for (var q = 0u; q < k; q = q + 1u) {
        acc = acc + a[ra + q] * b[rb + q];
    }
    y[idx] = acc;
}
