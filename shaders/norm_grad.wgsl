// BatchNormalization in training (concatenated after common.wgsl), as cpu/grad/norm.rs
// computes it: per-channel batch statistics, the normalized output, the moving averages, and
// the backward through the statistics (or, frozen, through the moving statistics only).
//
// An input of `rows * channels * inner` values is viewed as (rows, channels, inner): rows is the
// batch times the axes before the channel axes, inner the values after them (1 when the
// channel axis is last). Channel c's m-th value (m < rows * inner) is at
// (m / inner * channels + c) * inner + m % inner.
//
// Every reduction is deterministic: `batch_norm_sums` sums fixed chunks of each channel's values
// in order (one thread per (chunk, channel), neighbouring threads on neighbouring channels), and
// `batch_norm_reduce` sums the chunks in order. No atomics.
//
// `saved` (per channel, 3 * channels floats): mean[C], biased variance[C], 1 / sqrt(var + eps)[C].

struct BnParams {
    rows: u32,
    channels: u32,
    inner: u32,
    // Values per channel in one chunk, and the number of chunks.
    chunk: u32,
    chunks: u32,
    // Which sum / which statistic / training or frozen: see each entry point.
    mode: u32,
    epsilon: f32,
    // The moving average: moving * keep + statistic * take.
    keep: f32,
    take: f32,
    // Bit 0: gamma bound; bit 1: beta bound.
    flags: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<storage, read> in0: array<f32>;
@group(0) @binding(1) var<storage, read> in1: array<f32>;
@group(0) @binding(2) var<storage, read> in2: array<f32>;
@group(0) @binding(3) var<storage, read> in3: array<f32>;
@group(0) @binding(4) var<storage, read> in4: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<uniform> p: BnParams;

const HAS_GAMMA: u32 = 1u;
const HAS_BETA: u32 = 2u;

fn values_per_channel() -> u32 {
    return p.rows * p.inner;
}

fn at(m: u32, c: u32) -> u32 {
    return (m / p.inner * p.channels + c) * p.inner + m % p.inner;
}

fn channel_of(e: u32) -> u32 {
    return (e / p.inner) % p.channels;
}

// One thread per (chunk k, channel c). Bindings: x, dy, stats (saved), -, -, partials.
// mode 0: Σ x                      -> partials[k * C + c]
// mode 1: Σ (x - mean)²            -> partials[k * C + c]
// mode 2: Σ dy, Σ dy (x - mean) r  -> partials[(2k) * C + c], partials[(2k + 1) * C + c]
@compute @workgroup_size(64, 1, 1)
fn batch_norm_sums(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let t = linear_workgroup(wg, nwg) * 64u + li;
    if (t >= p.chunks * p.channels) {
        return;
    }
    let c = t % p.channels;
    let k = t / p.channels;
    let begin = k * p.chunk;
    let end = min(values_per_channel(), begin + p.chunk);
    if (p.mode == 0u) {
        var s = 0.0;
        for (var m = begin; m < end; m++) {
            s += in0[at(m, c)];
        }
        out[t] = s;
    } else if (p.mode == 1u) {
        let mean = in2[c];
        var s = 0.0;
        for (var m = begin; m < end; m++) {
            let d = in0[at(m, c)] - mean;
            s += d * d;
        }
        out[t] = s;
    } else {
        let mean = in2[c];
        var s0 = 0.0;
        var s1 = 0.0;
        for (var m = begin; m < end; m++) {
            let i = at(m, c);
            let g = in1[i];
            s0 += g;
            s1 += g * (in0[i] - mean);
        }
        out[(2u * k) * p.channels + c] = s0;
        out[(2u * k + 1u) * p.channels + c] = s1 * in2[2u * p.channels + c];
    }
}

// Sums the chunks in chunk order. Bindings: partials, -, -, -, -, out.
// mode 0: out[c] = mean
// mode 1: out[C + c] = variance, out[2C + c] = 1 / sqrt(variance + eps)
// mode 2: out[i] = Σ_k partials[k * 2C + i] for i < 2C (Σ dy, then Σ dy x̂)
@compute @workgroup_size(64, 1, 1)
fn batch_norm_reduce(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    var n = p.channels;
    if (p.mode == 2u) {
        n = 2u * p.channels;
    }
    if (i >= n) {
        return;
    }
    var s = 0.0;
    for (var k = 0u; k < p.chunks; k++) {
        s += in0[k * n + i];
    }
    if (p.mode == 0u) {
        out[i] = s / f32(values_per_channel());
    } else if (p.mode == 1u) {
        let variance = s / f32(values_per_channel());
        out[p.channels + i] = variance;
        out[2u * p.channels + i] = 1.0 / sqrt(variance + p.epsilon);
    } else {
        out[i] = s;
    }
}

// y = x * inv + (beta - mean * inv), inv = gamma / sqrt(var + eps) (tf.nn.batch_normalization's
// order, as BatchNorm::affine_with). One thread per element. Bindings: x, saved, gamma, beta,
// -, y.
@compute @workgroup_size(64, 1, 1)
fn batch_norm_apply(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let e = linear_workgroup(wg, nwg) * 64u + li;
    if (e >= p.rows * p.channels * p.inner) {
        return;
    }
    let c = channel_of(e);
    var inv = in1[2u * p.channels + c];
    if ((p.flags & HAS_GAMMA) != 0u) {
        inv *= in2[c];
    }
    var shift = -in1[c] * inv;
    if ((p.flags & HAS_BETA) != 0u) {
        shift = in3[c] - in1[c] * inv;
    }
    out[e] = in0[e] * inv + shift;
}

// moving[c] = moving[c] * keep + saved[mode * C + c] * take, in place (mode 0 the mean, 1 the
// variance). Bindings: saved, -, -, -, -, moving.
@compute @workgroup_size(64, 1, 1)
fn batch_norm_moving(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let c = linear_workgroup(wg, nwg) * 64u + li;
    if (c >= p.channels) {
        return;
    }
    out[c] = out[c] * p.keep + in0[p.mode * p.channels + c] * p.take;
}

// dx, one thread per element. Bindings: x, dy, stats, sums, gamma, dx.
// mode 0 (training; stats = saved, sums = Σ dy then Σ dy x̂ per channel):
//   dx = gamma r (dy - Σ dy / M - x̂ Σ dy x̂ / M), x̂ = (x - mean) r.
// mode 1 (frozen; stats = moving variance, x and sums unbound): dx = dy gamma / sqrt(var + eps).
@compute @workgroup_size(64, 1, 1)
fn batch_norm_grad(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let e = linear_workgroup(wg, nwg) * 64u + li;
    if (e >= p.rows * p.channels * p.inner) {
        return;
    }
    let c = channel_of(e);
    var g = 1.0;
    if ((p.flags & HAS_GAMMA) != 0u) {
        g = in4[c];
    }
    if (p.mode == 1u) {
        out[e] = in1[e] * g * (1.0 / sqrt(in2[c] + p.epsilon));
        return;
    }
    let r = in2[2u * p.channels + c];
    let count = f32(values_per_channel());
    let xhat = (in0[e] - in2[c]) * r;
    out[e] = g * r * (in1[e] - in3[c] / count - xhat * (in3[p.channels + c] / count));
}
