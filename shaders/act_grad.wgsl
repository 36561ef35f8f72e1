// Activation derivatives for the backward kernels (concatenated after common.wgsl, before
// grad.wgsl and recurrent_grad.wgsl). They follow `cpu::grad::activation` term for term, with
// TensorFlow's side at every kink (relu at 0, the clips at their bounds).

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
