// Normalization layers, PReLU and softmax over any axes (concatenated after common.wgsl).
// All run in place on x.
//  - affine:       x = x * w0[k] + w1[k] (BatchNormalization, Normalization), k the weight
//                  index of x's position under broadcasting (dims / strides below).
//  - prelu:        x = max(x, 0) + w0[k] * min(x, 0) (Keras: relu(x) - alpha * relu(-x)).
//  - layer_norm:   one workgroup per group of `reduced` values `inner` apart: statistics, then
//                  mode 0 (x - mean) / sqrt(var + eps) * gamma + beta, mode 1 x / sqrt(var + eps)
//                  * gamma (rms_scaling), mode 2 x / sqrt(mean(x^2) + eps) * gamma (RMSNormalization),
//                  mode 3 x * min(1 / sqrt(sum(x^2)), 1e12) (UnitNormalization).
//  - group_norm:   GroupNormalization, one workgroup per group of channels (see group_at).
//  - softmax_axes: one workgroup per group: softmax (mode 0) or log_softmax (mode 1).

struct NormParams {
    // affine / prelu: values in the batch; layer_norm / softmax_axes: groups in the batch.
    len: u32,
    // affine / prelu: rank of one item (<= 8); reductions: values per group.
    rank: u32,
    mode: u32,
    epsilon: f32,
    // Reductions: distance between a group's values, and 1 | 2 when gamma | beta are bound.
    inner: u32,
    flags: u32,
    _pad0: u32,
    _pad1: u32,
    // One item's shape, and the weight's stride per axis (0 where it broadcasts).
    dims: array<vec4<u32>, 2>,
    strides: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> w0: array<f32>;
@group(0) @binding(2) var<storage, read> w1: array<f32>;
@group(0) @binding(3) var<uniform> p: NormParams;

const THREADS: u32 = 64u;
var<workgroup> partial: array<f32, 64>;

// The weight index of flat position i: its coordinates within the item times the strides.
fn weight_index(i: u32) -> u32 {
    var rest = i;
    var k = 0u;
    for (var a = p.rank; a > 0u; a -= 1u) {
        let d = p.dims[(a - 1u) / 4u][(a - 1u) % 4u];
        k += (rest % d) * p.strides[(a - 1u) / 4u][(a - 1u) % 4u];
        rest /= d;
    }
    return k;
}

@compute @workgroup_size(64, 1, 1)
fn affine(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * THREADS + li;
    if (i >= p.len) {
        return;
    }
    let k = weight_index(i);
    x[i] = x[i] * w0[k] + w1[k];
}

@compute @workgroup_size(64, 1, 1)
fn prelu(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * THREADS + li;
    if (i >= p.len) {
        return;
    }
    let v = x[i];
    x[i] = max(v, 0.0) + -w0[weight_index(i)] * max(-v, 0.0);
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

fn reduce_max(li: u32, value: f32) -> f32 {
    partial[li] = value;
    workgroupBarrier();
    for (var stride = THREADS / 2u; stride > 0u; stride /= 2u) {
        if (li < stride) {
            partial[li] = max(partial[li], partial[li + stride]);
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

// First value of group g: groups are (outer block, inner offset) pairs.
fn group_base(g: u32) -> u32 {
    return (g / p.inner) * p.rank * p.inner + g % p.inner;
}

@compute @workgroup_size(64, 1, 1)
fn layer_norm(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let g = linear_workgroup(wg, nwg);
    if (g >= p.len) {
        return;
    }
    let base = group_base(g);
    let n = p.rank;
    let count = f32(n);
    var mean = 0.0;
    var inv: f32;
    if (p.mode >= 2u) {
        var s = 0.0;
        for (var r = li; r < n; r += THREADS) {
            let v = x[base + r * p.inner];
            s += v * v;
        }
        let total = reduce_sum(li, s);
        if (p.mode == 2u) {
            inv = 1.0 / sqrt(total / count + p.epsilon);
        } else {
            // UnitNormalization: min(1 / norm, 1e12); a zero norm gives 1e12 (and y = 0).
            inv = select(min(1.0 / sqrt(total), 1e12), 1e12, total == 0.0);
        }
    } else {
        var s = 0.0;
        for (var r = li; r < n; r += THREADS) {
            s += x[base + r * p.inner];
        }
        mean = reduce_sum(li, s) / count;
        var q = 0.0;
        for (var r = li; r < n; r += THREADS) {
            let d = x[base + r * p.inner] - mean;
            q += d * d;
        }
        inv = 1.0 / sqrt(reduce_sum(li, q) / count + p.epsilon);
    }
    let has_gamma = (p.flags & 1u) != 0u;
    let has_beta = (p.flags & 2u) != 0u;
    for (var r = li; r < n; r += THREADS) {
        let at = base + r * p.inner;
        let v = x[at];
        if (p.mode == 0u) {
            // Keras: inv = rsqrt(var + eps) * gamma; x * inv + (beta - mean * inv).
            var k = inv;
            if (has_gamma) {
                k = k * w0[r];
            }
            var res = -mean * k;
            if (has_beta) {
                res = res + w1[r];
            }
            x[at] = v * k + res;
        } else {
            var y = v * inv;
            if (has_gamma) {
                y = y * w0[r];
            }
            x[at] = y;
        }
    }
}

// GroupNormalization: group g of an item covers channels (g % G) * inner .. + inner at every
// position; `rank` values per group, `inner` channels per group, dims[0][0] channels per position.
fn group_at(g: u32, r: u32) -> u32 {
    let channels = p.dims[0][0];
    let per_item = channels / p.inner;
    let item = g / per_item;
    let first = (g % per_item) * p.inner;
    return item * p.rank * per_item + (r / p.inner) * channels + first + r % p.inner;
}

@compute @workgroup_size(64, 1, 1)
fn group_norm(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let g = linear_workgroup(wg, nwg);
    if (g >= p.len) {
        return;
    }
    let n = p.rank;
    let count = f32(n);
    var s = 0.0;
    for (var r = li; r < n; r += THREADS) {
        s += x[group_at(g, r)];
    }
    let mean = reduce_sum(li, s) / count;
    var q = 0.0;
    for (var r = li; r < n; r += THREADS) {
        let d = x[group_at(g, r)] - mean;
        q += d * d;
    }
    let inv = 1.0 / sqrt(reduce_sum(li, q) / count + p.epsilon);
    let first = (g % (p.dims[0][0] / p.inner)) * p.inner;
    for (var r = li; r < n; r += THREADS) {
        let at = group_at(g, r);
        let c = first + r % p.inner;
        var k = inv;
        if ((p.flags & 1u) != 0u) {
            k = k * w0[c];
        }
        var res = -mean * k;
        if ((p.flags & 2u) != 0u) {
            res = res + w1[c];
        }
        x[at] = x[at] * k + res;
    }
}

@compute @workgroup_size(64, 1, 1)
fn softmax_axes(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let g = linear_workgroup(wg, nwg);
    if (g >= p.len) {
        return;
    }
    let base = group_base(g);
    let n = p.rank;
    var m = -3.4028234663852886e38;
    for (var r = li; r < n; r += THREADS) {
        m = max(m, x[base + r * p.inner]);
    }
    let row_max = reduce_max(li, m);
    var s = 0.0;
    for (var r = li; r < n; r += THREADS) {
        s += exp(x[base + r * p.inner] - row_max);
    }
    let total = reduce_sum(li, s);
    let log_total = log(total);
    for (var r = li; r < n; r += THREADS) {
        let at = base + r * p.inner;
        if (p.mode == 1u) {
            x[at] = x[at] - row_max - log_total;
        } else {
            x[at] = exp(x[at] - row_max) / total;
        }
    }
}
