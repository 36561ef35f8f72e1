// Keras's masked Multiply / Maximum / Minimum (concatenated after common.wgsl): after the fold,
// steps whose token id is 0 (the padding mask `id != 0`, read from the id input) become 0 or the
// first input's values. y and first are (batch, steps, width); ids are (batch, steps).

struct MaskParams {
    total: u32,
    steps: u32,
    width: u32,
    // 0: zero the dropped steps; 1: copy the first input there.
    mode: u32,
}

@group(0) @binding(0) var<storage, read> ids: array<u32>;
@group(0) @binding(1) var<storage, read> first: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: MaskParams;

@compute @workgroup_size(64, 1, 1)
fn mask_select(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    if (i >= p.total) {
        return;
    }
    let step = i / p.width;
    if (ids[step] != 0u) {
        return;
    }
    if (p.mode == 0u) {
        y[i] = 0.0;
    } else {
        y[i] = first[i];
    }
}
