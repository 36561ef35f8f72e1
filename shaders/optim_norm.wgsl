// clipnorm / global_clipnorm's sums of squares (after common.wgsl and optim_common.wgsl), in
// three deterministic passes, tree reductions in workgroup memory and no atomics:
// optim_block_sums: each 64-float arena block (inside one segment, as segments start on
// multiples of 64) -> partials[block]; optim_segment_sums: each segment's blocks -> its sum in
// ctl; optim_total: the segments' sums -> the total in ctl. A sparse (lookup-table) segment's
// squares come from grad_sq: the sum over lookups of each row's squares, as TensorFlow clips
// the slices rather than their sum.

struct NormParams {
    segments: u32,
    blocks: u32,
    // Where the per-segment sums start in ctl; the total follows them.
    norms_at: u32,
}

@group(0) @binding(0) var<storage, read> grad: array<f32>;
@group(0) @binding(1) var<storage, read> grad_sq: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;
@group(0) @binding(3) var<storage, read_write> ctl: array<u32>;
@group(0) @binding(4) var<uniform> p: NormParams;

var<workgroup> block_sh: array<f32, 64>;
var<workgroup> reduce_sh: array<f32, 256>;

@compute @workgroup_size(64, 1, 1)
fn optim_block_sums(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let b = linear_workgroup(wg, nwg);
    if (b >= p.blocks) {
        return;
    }
    let start = b * 64u;
    let k = segment_of(start);
    var v = 0.0;
    if (k != NO_SEGMENT) {
        let i = start + li;
        let off = segment_offset(k);
        if (i < off + segment_len(k)) {
            let sq = segment_sq(k);
            if (sq == NO_SQ) {
                let g = grad[i];
                v = g * g;
            } else {
                v = grad_sq[sq + (i - off)];
            }
        }
    }
    block_sh[li] = v;
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride = stride / 2u) {
        if (li < stride) {
            block_sh[li] = block_sh[li] + block_sh[li + stride];
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        partials[b] = block_sh[0];
    }
}

// Sums values strided by the workgroup's 256 threads, then a tree; thread 0 has the result.
fn tree_256(li: u32) -> f32 {
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride / 2u) {
        if (li < stride) {
            reduce_sh[li] = reduce_sh[li] + reduce_sh[li + stride];
        }
        workgroupBarrier();
    }
    return reduce_sh[0];
}

@compute @workgroup_size(256, 1, 1)
fn optim_segment_sums(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let k = linear_workgroup(wg, nwg);
    if (k >= p.segments) {
        return;
    }
    let first = segment_offset(k) / 64u;
    let count = (segment_len(k) + 63u) / 64u;
    var acc = 0.0;
    for (var j = li; j < count; j = j + 256u) {
        acc = acc + partials[first + j];
    }
    reduce_sh[li] = acc;
    let total = tree_256(li);
    if (li == 0u) {
        ctl[p.norms_at + k] = bitcast<u32>(total);
    }
}

@compute @workgroup_size(256, 1, 1)
fn optim_total(@builtin(local_invocation_index) li: u32) {
    var acc = 0.0;
    for (var k = li; k < p.segments; k = k + 256u) {
        acc = acc + bitcast<f32>(ctl[p.norms_at + k]);
    }
    reduce_sh[li] = acc;
    let total = tree_256(li);
    if (li == 0u) {
        ctl[p.norms_at + p.segments] = bitcast<u32>(total);
    }
}
