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

fn step(c: bool) -> f32 {
    return select(0.0, 1.0, c);
}

fn relu_derivative(x: f32, slope: f32, threshold: f32, capped: bool, max_value: f32) -> f32 {
    var pos = x > 0.0;
    if (threshold != 0.0) {
        pos = x > threshold;
    }
    if (capped) {
        // Keras's relu6 path (max 6, threshold 0) excludes 6 itself; a general cap includes it.
        if (max_value == 6.0 && threshold == 0.0) {
            pos = pos && x < 6.0;
        } else {
            pos = pos && x <= max_value;
        }
    }
    let leaky = slope != 0.0 && !capped && threshold == 0.0;
    var neg = slope != 0.0 && x < threshold;
    if (leaky) {
        neg = x <= 0.0;
    }
    return step(pos) + select(0.0, slope, neg);
}

fn derivative(x: f32, y: f32, f: Act) -> f32 {
    switch f.kind {
        case ACT_RELU: { return relu_derivative(x, f.p0, f.p1, false, 0.0); }
        case ACT_RELU_CAPPED: { return relu_derivative(x, f.p0, f.p1, true, f.p2); }
        case ACT_SIGMOID: { return y * (1.0 - y); }
        case ACT_HARD_SIGMOID: { return step(x > -3.0 && x < 3.0) / 6.0; }
        case ACT_HARD_SIGMOID_KERAS2: { return step(x > -2.5 && x < 2.5) * 0.2; }
        case ACT_TANH: { return 1.0 - y * y; }
        case ACT_ELU: { return select(f.p0 * exp(x), 1.0, x > 0.0); }
        case ACT_SELU: {
            let alpha = 1.6732632423543772;
            let scale = 1.0507009873554805;
            return select(scale * alpha * exp(x), scale, x > 0.0);
        }
        case ACT_SILU: {
            let s = sigmoid(x);
            return s * (1.0 + x * (1.0 - s));
        }
        case ACT_SOFTPLUS: { return sigmoid(x); }
        case ACT_SOFTSIGN: {
            let d = 1.0 + abs(x);
            return 1.0 / (d * d);
        }
        case ACT_EXPONENTIAL: { return y; }
        case ACT_GELU: {
            let cdf = 0.5 * (1.0 + erf_f32(x * 0.70710678118654752));
            let pdf = exp(-0.5 * x * x) * 0.3989422804014327;
            return cdf + x * pdf;
        }
        case ACT_GELU_TANH: {
            let c = 0.7978845608028654;
            let t = tanh_stable(c * (x + 0.044715 * x * x * x));
            return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x);
        }
        case ACT_MISH: {
            let t = tanh_stable(softplus(x));
            return t + x * sigmoid(x) * (1.0 - t * t);
        }
        case ACT_CELU: { return select(exp(x / f.p0), 1.0, x > 0.0); }
        case ACT_HARD_SILU: {
            let hs = clamp(x + 3.0, 0.0, 6.0) / 6.0;
            return hs + x * step(x > -3.0 && x < 3.0) / 6.0;
        }
        case ACT_HARD_TANH: { return step(x >= -1.0 && x <= 1.0); }
        case ACT_HARD_SHRINK, ACT_SOFT_SHRINK: { return step(abs(x) > f.p0); }
        case ACT_TANH_SHRINK: {
            let t = tanh_stable(x);
            return t * t;
        }
        case ACT_SPARSE_PLUS: {
            return select(select(1.0, 0.5 * (x + 1.0), x < 1.0), 0.0, x <= -1.0);
        }
        case ACT_SPARSE_SIGMOID: { return step(x > -1.0 && x < 1.0) * 0.5; }
        case ACT_SQUAREPLUS: { return 0.5 * (1.0 + x / sqrt(x * x + f.p0)); }
        case ACT_LOG_SIGMOID: { return sigmoid(-x); }
        default: { return 1.0; }
    }
}

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
