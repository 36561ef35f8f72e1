// Backward of the elementwise and row-wise activations, and gradient accumulation, for GPU
// training (concatenated after common.wgsl). The derivative follows `cpu::grad::activation`
// term for term, with TensorFlow's side at every kink (relu at 0, the clips at their bounds).

struct GradParams {
    act: Act,
    len: u32,
    // softmax_grad: row width and 1 for log_softmax.
    cols: u32,
    log: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;
@group(0) @binding(4) var<uniform> p: GradParams;

// `derivative(x, y, f)` and its helpers are in act_grad.wgsl, concatenated before this file.

// dx = dy * f'(x), f' from the forward's input and output.
@compute @workgroup_size(64, 1, 1)
fn activation_grad(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    if (i >= p.len) {
        return;
    }
    dx[i] = dy[i] * derivative(x[i], y[i], p.act);
}

// One thread per row (rows are short: class scores). softmax: dx = y * (dy - <dy, y>);
// log_softmax (y = log p): dx = dy - exp(y) * sum(dy).
@compute @workgroup_size(64, 1, 1)
fn softmax_grad(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row = linear_workgroup(wg, nwg) * 64u + li;
    let cols = max(p.cols, 1u);
    if (row * cols >= p.len) {
        return;
    }
    let base = row * cols;
    var s = 0.0;
    for (var c = 0u; c < cols; c++) {
        if (p.log != 0u) {
            s += dy[base + c];
        } else {
            s += dy[base + c] * y[base + c];
        }
    }
    for (var c = 0u; c < cols; c++) {
        let i = base + c;
        if (p.log != 0u) {
            dx[i] = dy[i] - exp(y[i]) * s;
        } else {
            dx[i] = y[i] * (dy[i] - s);
        }
    }
}

// dx += dy: a second gradient flowing into a value several nodes read (x and y unused).
@compute @workgroup_size(64, 1, 1)
fn accumulate(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    if (i >= p.len) {
        return;
    }
    dx[i] = dx[i] + dy[i];
}

// An L1/L2 penalty's gradient, scale * (l1 * sign(x) + 2 * l2 * x), written into dx or (cols = 1)
// added to it. act.p0 = l1, act.p1 = l2, act.p2 = scale (1, or 1 / batch for an activity
// penalty, as Keras 3 divides it).
@compute @workgroup_size(64, 1, 1)
fn penalty_grad(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    if (i >= p.len) {
        return;
    }
    let v = x[i];
    let g = p.act.p2 * (p.act.p0 * sign(v) + 2.0 * p.act.p1 * v);
    if (p.cols != 0u) {
        dx[i] = dx[i] + g;
    } else {
        dx[i] = g;
    }
}

var<workgroup> partial: array<f32, 256>;

// The penalty's value, scale * (l1 * Σ|x| + l2 * Σx²), into dx[0]: one workgroup of 256 threads,
// each summing a strided share, then a tree; the same order every run.
@compute @workgroup_size(256, 1, 1)
fn penalty_sum(@builtin(local_invocation_index) li: u32) {
    var l1 = 0.0;
    var l2 = 0.0;
    for (var i = li; i < p.len; i += 256u) {
        let v = x[i];
        l1 += abs(v);
        l2 += v * v;
    }
    partial[li] = p.act.p0 * l1 + p.act.p1 * l2;
    workgroupBarrier();
    for (var half = 128u; half > 0u; half = half / 2u) {
        if (li < half) {
            partial[li] = partial[li] + partial[li + half];
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        dx[0] = p.act.p2 * partial[0];
    }
}

// Dropout and the noise layers in training: dx = x * multiplier + addend over `len` values,
// with the draws the host made for this step (multiplier in `y`, addend in `dy`). `cols` says
// which are bound: bit 0 the multiplier, bit 1 the addend. The backward is the same kernel
// on dy with the multiplier alone.
@compute @workgroup_size(64, 1, 1)
fn noise_apply(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    if (i >= p.len) {
        return;
    }
    var v = x[i];
    if ((p.cols & 1u) != 0u) {
        v = v * y[i];
    }
    if ((p.cols & 2u) != 0u) {
        v = v + dy[i];
    }
    dx[i] = v;
}
