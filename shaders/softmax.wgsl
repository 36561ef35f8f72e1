// Numerically stable softmax over the last axis, in place (concatenated after common.wgsl).
// One workgroup per row: the 64 threads stride over the row for the max, then the sum of
// exp(x - max), each reduced through workgroup memory.

struct SoftmaxParams {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<uniform> p: SoftmaxParams;

const THREADS: u32 = 64u;
var<workgroup> partial: array<f32, 64>;

fn reduce_max(li: u32) -> f32 {
    for (var stride = THREADS / 2u; stride > 0u; stride /= 2u) {
        if (li < stride) {
            partial[li] = max(partial[li], partial[li + stride]);
        }
        workgroupBarrier();
    }
    return partial[0];
}

fn reduce_sum(li: u32) -> f32 {
    for (var stride = THREADS / 2u; stride > 0u; stride /= 2u) {
        if (li < stride) {
            partial[li] = partial[li] + partial[li + stride];
        }
        workgroupBarrier();
    }
    return partial[0];
}

@compute @workgroup_size(64, 1, 1)
fn softmax(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row = linear_workgroup(wg, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    var m = -3.4028234663852886e38;
    for (var i = li; i < p.cols; i += THREADS) {
        m = max(m, x[base + i]);
    }
    partial[li] = m;
    workgroupBarrier();
    let row_max = reduce_max(li);
    workgroupBarrier();
    var s = 0.0;
    for (var i = li; i < p.cols; i += THREADS) {
        s += exp(x[base + i] - row_max);
    }
    partial[li] = s;
    workgroupBarrier();
    let total = reduce_sum(li);
    for (var i = li; i < p.cols; i += THREADS) {
        x[base + i] = exp(x[base + i] - row_max) / total;
    }
}
