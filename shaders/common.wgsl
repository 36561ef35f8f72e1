// Shared by every kernel: the activation functions of `ir::Activation`, selected at run time by
// a code the plan writes into each kernel's uniform parameters (see `gpu::plan::act_code`).
// Softmax is not here: it needs a whole row, so the plan runs softmax.wgsl after the producer.

struct Act {
    kind: u32,
    p0: f32,
    p1: f32,
    p2: f32,
}

const ACT_LINEAR: u32 = 0u;
const ACT_RELU: u32 = 1u;         // p0 negative_slope, p1 threshold
const ACT_RELU_CAPPED: u32 = 2u;  // p0 negative_slope, p1 threshold, p2 max_value
const ACT_SIGMOID: u32 = 3u;
const ACT_HARD_SIGMOID: u32 = 4u;
const ACT_TANH: u32 = 5u;
const ACT_ELU: u32 = 6u;          // p0 alpha
const ACT_SELU: u32 = 7u;
const ACT_SILU: u32 = 8u;
const ACT_SOFTPLUS: u32 = 9u;
const ACT_SOFTSIGN: u32 = 10u;
const ACT_EXPONENTIAL: u32 = 11u;

fn sigmoid(x: f32) -> f32 {
    // Two branches so exp never overflows into inf/inf.
    if (x >= 0.0) {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}

fn tanh_stable(x: f32) -> f32 {
    // Some drivers evaluate tanh as a ratio of exponentials that is NaN for large |x|.
    return tanh(clamp(x, -20.0, 20.0));
}

// Keras 3 `relu(x, negative_slope, max_value, threshold)`, term for term.
fn relu_keras(x: f32, slope: f32, threshold: f32, capped: bool, max_value: f32) -> f32 {
    var y: f32;
    if (threshold != 0.0) {
        y = select(0.0, x, x > threshold);
    } else {
        y = max(x, 0.0);
    }
    if (capped) {
        y = clamp(y, 0.0, max_value);
    }
    if (slope != 0.0) {
        y = y - slope * max(threshold - x, 0.0);
    }
    return y;
}

fn activate(x: f32, f: Act) -> f32 {
    switch f.kind {
        case ACT_RELU: { return relu_keras(x, f.p0, f.p1, false, 0.0); }
        case ACT_RELU_CAPPED: { return relu_keras(x, f.p0, f.p1, true, f.p2); }
        case ACT_SIGMOID: { return sigmoid(x); }
        case ACT_HARD_SIGMOID: { return clamp(x + 3.0, 0.0, 6.0) / 6.0; }
        case ACT_TANH: { return tanh_stable(x); }
        case ACT_ELU: { return select(f.p0 * (exp(x) - 1.0), x, x > 0.0); }
        case ACT_SELU: {
            let alpha = 1.6732632423543772;
            let scale = 1.0507009873554805;
            return scale * select(alpha * (exp(x) - 1.0), x, x > 0.0);
        }
        case ACT_SILU: { return x * sigmoid(x); }
        case ACT_SOFTPLUS: { return max(x, 0.0) + log(1.0 + exp(-abs(x))); }
        case ACT_SOFTSIGN: { return x / (1.0 + abs(x)); }
        case ACT_EXPONENTIAL: { return exp(x); }
        default: { return x; }
    }
}

// Workgroups are numbered linearly; the host folds big counts into a 2-D or 3-D grid so no
// dimension exceeds max_compute_workgroups_per_dimension.
fn linear_workgroup(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + nwg.x * (wg.y + nwg.y * wg.z);
}
