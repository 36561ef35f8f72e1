// Shared by every kernel: the activation functions of `ir::Activation`, selected at run time by
// a code the plan writes into each kernel's uniform parameters (see `gpu::plan::act_code`).
// Softmax and log_softmax are not here: they need a whole row, so the plan runs softmax.wgsl or
// norm.wgsl after the producer.

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
const ACT_GELU: u32 = 12u;
const ACT_GELU_TANH: u32 = 13u;
const ACT_MISH: u32 = 14u;
const ACT_CELU: u32 = 15u;        // p0 alpha
const ACT_HARD_SILU: u32 = 16u;
const ACT_HARD_TANH: u32 = 17u;
const ACT_HARD_SHRINK: u32 = 18u; // p0 threshold
const ACT_SOFT_SHRINK: u32 = 19u; // p0 threshold
const ACT_TANH_SHRINK: u32 = 20u;
const ACT_SPARSE_PLUS: u32 = 21u;
const ACT_SPARSE_SIGMOID: u32 = 22u;
const ACT_SQUAREPLUS: u32 = 23u;  // p0 b
const ACT_LOG_SIGMOID: u32 = 24u;
const ACT_HARD_SIGMOID_KERAS2: u32 = 25u;

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

fn softplus(x: f32) -> f32 {
    return max(x, 0.0) + log(1.0 + exp(-abs(x)));
}

// erf as src/cpu/activation.rs has it (FreeBSD's s_erff.c): a rational approximation below
// 0.84375, erf(1) + a rational one below 1.25, 1 - exp(-x^2 - 0.5625 + R/S) / x below 6, 1 beyond.
fn erf_f32(x: f32) -> f32 {
    let ix = bitcast<u32>(x) & 0x7fffffffu;
    if (ix >= 0x7f800000u) {
        // +-inf -> +-1; NaN passes through.
        return select(x, sign(x), ix == 0x7f800000u);
    }
    if (ix < 0x3f580000u) {
        if (ix < 0x31800000u) {
            return 0.125 * (8.0 * x + 1.0270333290 * x);
        }
        let z = x * x;
        let r = 1.2837916613e-01 + z * (-3.2504209876e-01 + z * (-2.8481749818e-02
            + z * (-5.7702702470e-03 + z * -2.3763017452e-05)));
        let s = 1.0 + z * (3.9791721106e-01 + z * (6.5022252500e-02 + z * (5.0813062117e-03
            + z * (1.3249473704e-04 + z * -3.9602282413e-06))));
        return x + x * (r / s);
    }
    let a = abs(x);
    var y = 1.0;
    if (ix < 0x3fa00000u) {
        let s = a - 1.0;
        let p = -2.3621185683e-03 + s * (4.1485610604e-01 + s * (-3.7220788002e-01
            + s * (3.1834661961e-01 + s * (-1.1089469492e-01 + s * (3.5478305072e-02
            + s * -2.1663755178e-03)))));
        let q = 1.0 + s * (1.0642088205e-01 + s * (5.4039794207e-01 + s * (7.1828655899e-02
            + s * (1.2617121637e-01 + s * (1.3637083583e-02 + s * 1.1984500103e-02)))));
        y = 8.4506291151e-01 + p / q;
    } else if (ix < 0x40c00000u) {
        let s = 1.0 / (a * a);
        var r: f32;
        var big_s: f32;
        if (ix < 0x4036db6du) {
            r = -9.8649440333e-03 + s * (-6.9385856390e-01 + s * (-1.0558626175e+01
                + s * (-6.2375331879e+01 + s * (-1.6239666748e+02 + s * (-1.8460508728e+02
                + s * (-8.1287437439e+01 + s * -9.8143291473e+00))))));
            big_s = 1.0 + s * (1.9651271820e+01 + s * (1.3765776062e+02 + s * (4.3456588745e+02
                + s * (6.4538726807e+02 + s * (4.2900814819e+02 + s * (1.0863500214e+02
                + s * (6.5702495575e+00 + s * -6.0424413532e-02)))))));
        } else {
            r = -9.8649431020e-03 + s * (-7.9928326607e-01 + s * (-1.7757955551e+01
                + s * (-1.6063638306e+02 + s * (-6.3756646729e+02 + s * (-1.0250950928e+03
                + s * -4.8351919556e+02)))));
            big_s = 1.0 + s * (3.0338060379e+01 + s * (3.2579251099e+02 + s * (1.5367296143e+03
                + s * (3.1998581543e+03 + s * (2.5530502930e+03 + s * (4.7452853394e+02
                + s * -2.2440952301e+01))))));
        }
        // z: a with its low 13 mantissa bits cleared, so -z*z is exact.
        let z = bitcast<f32>(bitcast<u32>(a) & 0xffffe000u);
        y = 1.0 - exp(-z * z - 0.5625) * exp((z - a) * (z + a) + r / big_s) / a;
    }
    return select(y, -y, x < 0.0);
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
        case ACT_SOFTPLUS: { return softplus(x); }
        case ACT_SOFTSIGN: { return x / (1.0 + abs(x)); }
        case ACT_EXPONENTIAL: { return exp(x); }
        case ACT_GELU: { return 0.5 * x * (1.0 + erf_f32(x * 0.70710678118654752)); }
        case ACT_GELU_TANH: {
            return 0.5 * x * (1.0 + tanh_stable(0.7978845608028654 * (x + 0.044715 * (x * x * x))));
        }
        case ACT_MISH: { return x * tanh_stable(softplus(x)); }
        case ACT_CELU: { return max(x, 0.0) + f.p0 * (exp(min(x, 0.0) / f.p0) - 1.0); }
        case ACT_HARD_SILU: { return x * (clamp(x + 3.0, 0.0, 6.0) / 6.0); }
        case ACT_HARD_TANH: { return clamp(x, -1.0, 1.0); }
        case ACT_HARD_SHRINK: { return select(0.0, x, abs(x) > f.p0); }
        case ACT_SOFT_SHRINK: {
            return select(select(0.0, x + f.p0, x < -f.p0), x - f.p0, x > f.p0);
        }
        case ACT_TANH_SHRINK: { return x - tanh_stable(x); }
        case ACT_SPARSE_PLUS: {
            return select(select(x, 0.25 * (x + 1.0) * (x + 1.0), x < 1.0), 0.0, x <= -1.0);
        }
        case ACT_SPARSE_SIGMOID: {
            return select(select(0.5 * (x + 1.0), 1.0, x >= 1.0), 0.0, x <= -1.0);
        }
        case ACT_SQUAREPLUS: { return (x + sqrt(x * x + f.p0)) / 2.0; }
        case ACT_LOG_SIGMOID: { return -softplus(-x); }
        case ACT_HARD_SIGMOID_KERAS2: { return clamp(0.2 * x + 0.5, 0.0, 1.0); }
        default: { return x; }
    }
}

// Workgroups are numbered linearly; the host folds big counts into a 2-D or 3-D grid so no
// dimension exceeds max_compute_workgroups_per_dimension.
fn linear_workgroup(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + nwg.x * (wg.y + nwg.y * wg.z);
}
