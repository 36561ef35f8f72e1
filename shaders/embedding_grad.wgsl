// An Embedding table's gradient (concatenated after common.wgsl) without float atomics: the
// host groups the step's lookups by id (a stable counting sort of the ids it uploads), so one
// thread per table element sums its row's lookups in lookup order, as the CPU does.
//
// segments: `vocab + 1` run starts, then the lookup indices sorted by id; the lookups of id r
// are order[starts[r] .. starts[r + 1]].
// grad_sq (when `flags & 2`): per table element the sum over lookups of the squared row
// gradient, which the optimizer needs for a lookup table (TensorFlow's IndexedSlices are
// squared row by row, not after summing).

struct EmbeddingGradParams {
    vocab: u32,
    dim: u32,
    // bit 0: add into grad / grad_sq (a shared layer's second call); bit 1: write grad_sq.
    flags: u32,
    // Where this table's squares start in grad_sq.
    sq_offset: u32,
}

@group(0) @binding(0) var<storage, read> segments: array<u32>;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad_sq: array<f32>;
@group(0) @binding(4) var<uniform> p: EmbeddingGradParams;

@compute @workgroup_size(64, 1, 1)
fn embedding_grad(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    if (i >= p.vocab * p.dim) {
        return;
    }
    let row = i / p.dim;
    let col = i % p.dim;
    let order = p.vocab + 1u;
    var sum = 0.0;
    var sq = 0.0;
    for (var j = segments[row]; j < segments[row + 1u]; j++) {
        let g = dy[segments[order + j] * p.dim + col];
        sum += g;
        sq += g * g;
    }
    let add = (p.flags & 1u) != 0u;
    grad[i] = select(sum, grad[i] + sum, add);
    if ((p.flags & 2u) != 0u) {
        let at = p.sq_offset + i;
        grad_sq[at] = select(sq, grad_sq[at] + sq, add);
    }
}
