// Backward of the merge family (concatenated after common.wgsl): the broadcast fold of the
// merges (Add ... Minimum) one step at a time, sums over broadcast axes, Dot's products and
// normalization, PReLU and softmax over any axes. Every entry point binds src0..src2 (read) and
// dst (read_write); the uniform words are
//   shape[8], s0[8], s1[8], s2[8], w[8]   (strides in elements, the batch axis first).
// Every sum runs in a fixed order in one thread: no atomics, the same bits every run.

struct MergeGradParams {
    shape: array<vec4<u32>, 2>,
    s0: array<vec4<u32>, 2>,
    s1: array<vec4<u32>, 2>,
    s2: array<vec4<u32>, 2>,
    w: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<storage, read> src0: array<f32>;
@group(0) @binding(1) var<storage, read> src1: array<f32>;
@group(0) @binding(2) var<storage, read> src2: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;
@group(0) @binding(4) var<uniform> p: MergeGradParams;

fn shape_at(i: u32) -> u32 {
    return p.shape[i / 4u][i % 4u];
}

fn s0_at(i: u32) -> u32 {
    return p.s0[i / 4u][i % 4u];
}

fn s1_at(i: u32) -> u32 {
    return p.s1[i / 4u][i % 4u];
}

fn s2_at(i: u32) -> u32 {
    return p.s2[i / 4u][i % 4u];
}

fn w_at(i: u32) -> u32 {
    return p.w[i / 4u][i % 4u];
}

fn thread_index(wg: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return linear_workgroup(wg, nwg) * 64u + li;
}

const STEP_GA: u32 = 1u;       // the first operand's gradient (else the second's)
const STEP_G_IN_DST: u32 = 2u; // read the incoming gradient from dst (in place), not src2

// One fold step acc = op(a, b) backwards, over the output (shape, batch first): a = src0 at
// strides s0 (acc_{i-1}), b = src1 at strides s1 (input i, broadcast), g = d acc at each output
// position (contiguous). As cpu/grad/merge.rs step_back: maximum / minimum route the gradient
// to a where a >= b / a <= b (ties to the first argument, TensorFlow's rule), else to b.
// w: rank, total, op (BinaryOp::code), flags.
@compute @workgroup_size(64, 1, 1)
fn merge_grad_step(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = thread_index(wg, nwg, li);
    let rank = w_at(0u);
    if (i >= w_at(1u)) {
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
        ia = ia + c * s0_at(u32(d));
        ib = ib + c * s1_at(u32(d));
    }
    let a = src0[ia];
    let b = src1[ib];
    var g: f32;
    if ((flags & STEP_G_IN_DST) != 0u) {
        g = dst[i];
    } else {
        g = src2[i];
    }
    let want_a = (flags & STEP_GA) != 0u;
    var res = g;
    switch op {
        case 1u: {
            // Subtract
            res = select(-g, g, want_a);
        }
        case 2u: {
            // Multiply
            res = select(g * a, g * b, want_a);
        }
        case 3u: {
            // Divide, as TensorFlow's RealDiv gradient: dy / y and dy * ((-x / y) / y).
            res = select(g * ((-a / b) / b), g / b, want_a);
        }
        case 4u, 5u: {
            var to_a: bool;
            if (op == 4u) {
                to_a = a >= b;
            } else {
                to_a = a <= b;
            }
            res = select(0.0, g, to_a == want_a);
        }
        default: {}
    }
    dst[i] = res;
}

// dst = scale * src0 summed over the broadcast axes: dst element j (contiguous over the dims
// shape, 1 on the summed axes) adds src0 at j's coordinates times s0 plus, for every r over the
// summed axes (dims s1[0..sr], src0 strides s2), r's offset, in row-major order of r.
// w: rank, total, count (product of the summed dims), scale (f32 bits), sr.
@compute @workgroup_size(64, 1, 1)
fn merge_grad_sum(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let j = thread_index(wg, nwg, li);
    let rank = w_at(0u);
    if (j >= w_at(1u)) {
        return;
    }
    let count = w_at(2u);
    let scale = bitcast<f32>(w_at(3u));
    let sr = w_at(4u);
    var rem = j;
    var base = 0u;
    for (var d = i32(rank) - 1; d >= 0; d = d - 1) {
        let n = shape_at(u32(d));
        base = base + (rem % n) * s0_at(u32(d));
        rem = rem / n;
    }
    var acc = 0.0;
    for (var r = 0u; r < count; r = r + 1u) {
        var rest = r;
        var off = 0u;
        for (var d = i32(sr) - 1; d >= 0; d = d - 1) {
            let n = s1_at(u32(d));
            off = off + (rest % n) * s2_at(u32(d));
            rest = rest / n;
        }
        acc = acc + src0[base + off];
    }
    dst[j] = acc * scale;
}

// Dot backward, one operand's rows: dst[t, r, q] = sum_s g[t * w4 + r * w5 + s * w6] *
// o[t * w7 + s * k + q], g = src0 (dy, batch x m x n), o = src1 (the other operand's rows).
// w: batch, rows, k, sum length, g item stride, g row stride, g sum stride, o item stride.
@compute @workgroup_size(64, 1, 1)
fn dot_grad(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let idx = thread_index(wg, nwg, li);
    let batch = w_at(0u);
    let rows = w_at(1u);
    let k = w_at(2u);
    if (idx >= batch * rows * k) {
        return;
    }
    let sum_len = w_at(3u);
    let q = idx % k;
    let r = (idx / k) % rows;
    let t = idx / (rows * k);
    let gb = t * w_at(4u) + r * w_at(5u);
    let gs = w_at(6u);
    let ob = t * w_at(7u) + q;
    var acc = 0.0;
    for (var s = 0u; s < sum_len; s = s + 1u) {
        acc = acc + src0[gb + s * gs] * src1[ob + s * k];
    }
    dst[idx] = acc;
}

// The backward of normalize_rows (x * min(rsqrt(sum x^2), cap)) in place: dst holds the
// gradient of the normalized rows and becomes the raw rows' (src0). Where the cap is taken the
// scale is a constant (TensorFlow's minimum routes a tie to its first argument, the rsqrt).
// w: rows, k, cap (f32 bits).
@compute @workgroup_size(64, 1, 1)
fn normalize_rows_grad(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row = thread_index(wg, nwg, li);
    let rows = w_at(0u);
    let k = w_at(1u);
    if (row >= rows) {
        return;
    }
    let cap = bitcast<f32>(w_at(2u));
    let base = row * k;
    var ss = 0.0;
    var sgx = 0.0;
    for (var j = 0u; j < k; j = j + 1u) {
        let v = src0[base + j];
        ss = ss + v * v;
        sgx = sgx + dst[base + j] * v;
    }
    let r = 1.0 / sqrt(ss);
    if (r <= cap) {
        let r3 = r * r * r;
        for (var j = 0u; j < k; j = j + 1u) {
            dst[base + j] = r * dst[base + j] - r3 * src0[base + j] * sgx;
        }
    } else {
        for (var j = 0u; j < k; j = j + 1u) {
            dst[base + j] = dst[base + j] * cap;
        }
    }
}

// PReLU backward over x = src0 (alpha = src1 at the item strides s0, dy = src2), one item's
// dims in shape: mode 0 dst = dx = dy where x > 0, dy * alpha where x < 0, 0 at 0; mode 1 dst =
// dy * min(x, 0), alpha's gradient before the sum over the batch and the shared axes.
// w: rank, total, mode.
@compute @workgroup_size(64, 1, 1)
fn prelu_grad(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = thread_index(wg, nwg, li);
    let rank = w_at(0u);
    if (i >= w_at(1u)) {
        return;
    }
    let v = src0[i];
    let g = src2[i];
    if (w_at(2u) == 1u) {
        dst[i] = g * min(v, 0.0);
        return;
    }
    var rem = i;
    var k = 0u;
    for (var d = i32(rank) - 1; d >= 0; d = d - 1) {
        let n = shape_at(u32(d));
        k = k + (rem % n) * s0_at(u32(d));
        rem = rem / n;
    }
    var slope = 0.0;
    if (v > 0.0) {
        slope = 1.0;
    } else if (v < 0.0) {
        slope = src1[k];
    }
    dst[i] = g * slope;
}

// Softmax over any contiguous axes backward, one thread per group of `reduced` values `inner`
// apart (as norm.wgsl's softmax_axes): y = src0 (the forward's output), dy = src1.
// softmax: dx = y * (dy - <dy, y>); log_softmax (y = log p): dx = dy - exp(y) * sum(dy).
// w: groups, reduced, inner, log.
@compute @workgroup_size(64, 1, 1)
fn softmax_axes_grad(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let group = thread_index(wg, nwg, li);
    let groups = w_at(0u);
    if (group >= groups) {
        return;
    }
    let reduced = w_at(1u);
    let inner = max(w_at(2u), 1u);
    let is_log = w_at(3u) != 0u;
    let base = (group / inner) * reduced * inner + group % inner;
    var s = 0.0;
    for (var r = 0u; r < reduced; r = r + 1u) {
        let i = base + r * inner;
        if (is_log) {
            s = s + src1[i];
        } else {
            s = s + src1[i] * src0[i];
        }
    }
    for (var r = 0u; r < reduced; r = r + 1u) {
        let i = base + r * inner;
        if (is_log) {
            dst[i] = src1[i] - exp(src0[i]) * s;
        } else {
            dst[i] = src0[i] * (src1[i] - s);
        }
    }
}
