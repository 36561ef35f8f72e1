// Embedding gather (concatenated after common.wgsl): y[n, t, :] = table[ids[n, t], :].
// Ids were checked against the vocabulary on the host; the clamp only keeps a bad id in bounds.

struct EmbeddingParams {
    tokens: u32,
    dim: u32,
    vocab: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> ids: array<u32>;
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: EmbeddingParams;

@compute @workgroup_size(64, 1, 1)
fn embedding(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    if (i >= p.tokens * p.dim) {
        return;
    }
    let token = i / p.dim;
    let id = min(ids[token], p.vocab - 1u);
    y[i] = table[id * p.dim + i % p.dim];
}
