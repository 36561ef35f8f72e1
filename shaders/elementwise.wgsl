// In-place elementwise kernels (concatenated after common.wgsl): a standalone activation, and
// Rescaling (y = x * scale + offset, each either one scalar or one value per last-axis channel).

struct ElementwiseParams {
    act: Act,
    len: u32,
    channels: u32,
    scale_len: u32,
    offset_len: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read> scale: array<f32>;
@group(0) @binding(2) var<storage, read> offset: array<f32>;
@group(0) @binding(3) var<uniform> p: ElementwiseParams;

@compute @workgroup_size(64, 1, 1)
fn activation(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    if (i >= p.len) {
        return;
    }
    x[i] = activate(x[i], p.act);
}

@compute @workgroup_size(64, 1, 1)
fn rescale(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    if (i >= p.len) {
        return;
    }
    let c = i % p.channels;
    let s = scale[select(0u, c, p.scale_len > 1u)];
    let o = offset[select(0u, c, p.offset_len > 1u)];
    x[i] = x[i] * s + o;
}
