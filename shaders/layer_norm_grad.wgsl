// LayerNormalization (every kind) and GroupNormalization in training (concatenated after
// common.wgsl), as cpu/grad/norm.rs computes them: each group's statistics and its two gradient
// sums, then dx from them, then the weight gradients summed over the groups.
//
// A group is `n` values of one item. LayerNorm (flag GROUPED off): group g's values lie `inner`
// apart from (g / inner) * n * inner + g % inner, value r's weight is r. GroupNorm (GROUPED on):
// `per_item` groups per item, each `inner` (the run) consecutive channels of `channels` at each
// of n / inner positions; value r's weight is its channel.
//
// Every reduction is deterministic: a fixed tree in one workgroup per group, or fixed chunks of
// each weight's values summed in order and then the chunks in order. No atomics.
//
// `stats` (4 floats per group): the centre (the mean; 0 for RMSNormalization and
// UnitNormalization), r = 1 / sqrt(statistic + eps), Σ g and Σ g x̂ (Standard) or Σ g x (the RMS
// kinds, UnitNormalization), with g = dy * gamma. UnitNormalization keeps in the third float
// whether its scale was capped at 1e12 (1) or not (0).

struct LnGradParams {
    groups: u32,
    n: u32,
    inner: u32,
    // 0 Standard, 1 RmsScaling, 2 Rms, 3 Unit.
    kind: u32,
    epsilon: f32,
    // Bit 0: gamma bound; bit 1: GroupNorm's layout.
    flags: u32,
    channels: u32,
    // The weight's length (LayerNorm: n; GroupNorm: channels).
    weights: u32,
    // Values per weight in one chunk, and the chunks.
    chunk: u32,
    chunks: u32,
    // norm_weight_reduce: 0 the gamma sums, 1 the beta sums.
    which: u32,
    per_item: u32,
}

@group(0) @binding(0) var<storage, read> in0: array<f32>;
@group(0) @binding(1) var<storage, read> in1: array<f32>;
@group(0) @binding(2) var<storage, read> in2: array<f32>;
@group(0) @binding(3) var<storage, read> in3: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<uniform> p: LnGradParams;

const THREADS: u32 = 64u;
const HAS_GAMMA: u32 = 1u;
const GROUPED: u32 = 2u;
const KIND_STANDARD: u32 = 0u;
const KIND_UNIT: u32 = 3u;
const UNIT_MAX_INV: f32 = 1e12;

var<workgroup> partial: array<f32, 64>;

fn grouped() -> bool {
    return (p.flags & GROUPED) != 0u;
}

// The flat index of group g's value r.
fn element(g: u32, r: u32) -> u32 {
    if (grouped()) {
        let run = p.inner;
        return (g / p.per_item) * p.n * p.per_item + (r / run) * p.channels
            + (g % p.per_item) * run + r % run;
    }
    return (g / p.inner) * p.n * p.inner + g % p.inner + r * p.inner;
}

// The weight index of group g's value r.
fn weight_of(g: u32, r: u32) -> u32 {
    if (grouped()) {
        return (g % p.per_item) * p.inner + r % p.inner;
    }
    return r;
}

// Values per weight over the batch.
fn values_per_weight() -> u32 {
    if (grouped()) {
        return (p.groups / p.per_item) * (p.n / p.inner);
    }
    return p.groups;
}

// Weight w's m-th value as (group, value in the group).
fn weight_value(w: u32, m: u32) -> vec2<u32> {
    if (grouped()) {
        let positions = p.n / p.inner;
        return vec2<u32>(
            (m / positions) * p.per_item + w / p.inner,
            (m % positions) * p.inner + w % p.inner,
        );
    }
    return vec2<u32>(m, w);
}

fn scaled_dy(g: u32, r: u32) -> f32 {
    let d = in1[element(g, r)];
    if ((p.flags & HAS_GAMMA) != 0u) {
        return d * in2[weight_of(g, r)];
    }
    return d;
}

fn reduce_sum(li: u32, value: f32) -> f32 {
    partial[li] = value;
    workgroupBarrier();
    for (var stride = THREADS / 2u; stride > 0u; stride /= 2u) {
        if (li < stride) {
            partial[li] = partial[li] + partial[li + stride];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

// One workgroup per group. Bindings: x, dy, gamma, -, stats.
@compute @workgroup_size(64, 1, 1)
fn norm_row_stats(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let g = linear_workgroup(wg, nwg);
    if (g >= p.groups) {
        return;
    }
    let n = p.n;
    let count = f32(n);
    var mean = 0.0;
    var r = 0.0;
    var capped = 0.0;
    if (p.kind >= 2u) {
        var s = 0.0;
        for (var j = li; j < n; j += THREADS) {
            let v = in0[element(g, j)];
            s += v * v;
        }
        let total = reduce_sum(li, s);
        if (p.kind == KIND_UNIT) {
            // The forward's choice: min(1 / norm, 1e12), the bound taken at a zero norm too.
            let raw = 1.0 / sqrt(total);
            if (raw <= UNIT_MAX_INV) {
                r = raw;
            } else {
                capped = 1.0;
            }
        } else {
            r = 1.0 / sqrt(total / count + p.epsilon);
        }
    } else {
        var s = 0.0;
        for (var j = li; j < n; j += THREADS) {
            s += in0[element(g, j)];
        }
        mean = reduce_sum(li, s) / count;
        var q = 0.0;
        for (var j = li; j < n; j += THREADS) {
            let d = in0[element(g, j)] - mean;
            q += d * d;
        }
        r = 1.0 / sqrt(reduce_sum(li, q) / count + p.epsilon);
    }
    var sg = 0.0;
    var sgx = 0.0;
    for (var j = li; j < n; j += THREADS) {
        let gj = scaled_dy(g, j);
        let v = in0[element(g, j)];
        sg += gj;
        if (p.kind == KIND_STANDARD) {
            sgx += gj * (v - mean) * r;
        } else {
            sgx += gj * v;
        }
    }
    let total_g = reduce_sum(li, sg);
    let total_gx = reduce_sum(li, sgx);
    if (li == 0u) {
        out[4u * g] = mean;
        out[4u * g + 1u] = r;
        if (p.kind == KIND_UNIT) {
            out[4u * g + 2u] = capped;
        } else {
            out[4u * g + 2u] = total_g;
        }
        out[4u * g + 3u] = total_gx;
    }
}

// dx, one thread per (group, value). Bindings: x, dy, gamma, stats, dx.
//   Standard:          dx = r (g - Σ g / n - x̂ Σ g x̂ / n), x̂ = (x - mean) r
//   RMS kinds:         dx = r g - r³ (x - centre) / n Σ g x
//   UnitNormalization: dx = r g - r³ x Σ g x, or g * 1e12 where the scale was capped
@compute @workgroup_size(64, 1, 1)
fn norm_row_grad(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let t = linear_workgroup(wg, nwg) * THREADS + li;
    if (t >= p.groups * p.n) {
        return;
    }
    let g = t / p.n;
    let j = t % p.n;
    let e = element(g, j);
    let centre = in3[4u * g];
    let r = in3[4u * g + 1u];
    let sg = in3[4u * g + 2u];
    let sgx = in3[4u * g + 3u];
    let gj = scaled_dy(g, j);
    let v = in0[e];
    let count = f32(p.n);
    if (p.kind == KIND_STANDARD) {
        let xhat = (v - centre) * r;
        out[e] = r * (gj - sg / count - xhat * (sgx / count));
    } else if (p.kind == KIND_UNIT) {
        if (sg != 0.0) {
            out[e] = gj * UNIT_MAX_INV;
        } else {
            out[e] = r * gj - r * r * r * v * sgx;
        }
    } else {
        out[e] = r * gj - r * r * r * (v - centre) / count * sgx;
    }
}

// Partial weight gradients, one thread per (chunk k, weight w): Σ dy x̂ into
// partials[k * 2W + w] and Σ dy into partials[k * 2W + W + w], with x̂ = (x - mean) r
// (Standard) or x r (the RMS kinds). Bindings: x, dy, stats, -, partials.
@compute @workgroup_size(64, 1, 1)
fn norm_weight_sums(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let t = linear_workgroup(wg, nwg) * THREADS + li;
    let w_count = p.weights;
    if (t >= p.chunks * w_count) {
        return;
    }
    let w = t % w_count;
    let k = t / w_count;
    let begin = k * p.chunk;
    let end = min(values_per_weight(), begin + p.chunk);
    var sx = 0.0;
    var sd = 0.0;
    for (var m = begin; m < end; m++) {
        let at = weight_value(w, m);
        let g = at.x;
        let d = in1[element(g, at.y)];
        var centre = 0.0;
        if (p.kind == KIND_STANDARD) {
            centre = in2[4u * g];
        }
        sx += d * (in0[element(g, at.y)] - centre) * in2[4u * g + 1u];
        sd += d;
    }
    out[k * 2u * w_count + w] = sx;
    out[k * 2u * w_count + w_count + w] = sd;
}

// The chunks summed in order: out[w] = Σ_k partials[k * 2W + which * W + w].
// Bindings: partials, -, -, -, out.
@compute @workgroup_size(64, 1, 1)
fn norm_weight_reduce(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let w = linear_workgroup(wg, nwg) * THREADS + li;
    if (w >= p.weights) {
        return;
    }
    var s = 0.0;
    for (var k = 0u; k < p.chunks; k++) {
        s += in0[k * 2u * p.weights + p.which * p.weights + w];
    }
    out[w] = s;
}
