// Depthwise and transposed convolutions, direct (concatenated after common.wgsl). Tensors are
// channels-last with three spatial axes (D, H, W); 1-D and 2-D layers have leading axes of 1.
// One thread per output element; bias and activation applied in place of a separate pass.

struct ConvParams {
    act: Act,
    batch: u32,
    in_c: u32,
    out_c: u32,
    // Depthwise: the depth multiplier (out_c = in_c * multiplier); transposed: unused.
    multiplier: u32,
    in_d: u32,
    in_h: u32,
    in_w: u32,
    out_d: u32,
    out_h: u32,
    out_w: u32,
    k_d: u32,
    k_h: u32,
    k_w: u32,
    s_d: u32,
    s_h: u32,
    s_w: u32,
    dil_d: u32,
    dil_h: u32,
    dil_w: u32,
    pad_d: u32,
    pad_h: u32,
    pad_w: u32,
    has_bias: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: ConvParams;

fn finish(sum: f32, oc: u32) -> f32 {
    var v = sum;
    if (p.has_bias != 0u) {
        v += bias[oc];
    }
    return activate(v, p.act);
}

// DepthwiseConv: output channel oc = c * multiplier + m reads input channel c with kernel
// column oc of the (taps, in_c * multiplier) kernel (Keras's (k..., C, M) flattened).
@compute @workgroup_size(64, 1, 1)
fn depthwise(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let idx = linear_workgroup(wg, nwg) * 64u + li;
    if (idx >= p.batch * p.out_d * p.out_h * p.out_w * p.out_c) {
        return;
    }
    let oc = idx % p.out_c;
    let ci = oc / p.multiplier;
    let ox = (idx / p.out_c) % p.out_w;
    let oy = (idx / (p.out_c * p.out_w)) % p.out_h;
    let oz = (idx / (p.out_c * p.out_w * p.out_h)) % p.out_d;
    let n = idx / (p.out_c * p.out_w * p.out_h * p.out_d);
    var sum = 0.0;
    for (var kz = 0u; kz < p.k_d; kz++) {
        let iz = i32(oz * p.s_d + kz * p.dil_d) - i32(p.pad_d);
        if (iz < 0 || iz >= i32(p.in_d)) {
            continue;
        }
        for (var ky = 0u; ky < p.k_h; ky++) {
            let iy = i32(oy * p.s_h + ky * p.dil_h) - i32(p.pad_h);
            if (iy < 0 || iy >= i32(p.in_h)) {
                continue;
            }
            for (var kx = 0u; kx < p.k_w; kx++) {
                let ix = i32(ox * p.s_w + kx * p.dil_w) - i32(p.pad_w);
                if (ix < 0 || ix >= i32(p.in_w)) {
                    continue;
                }
                let pixel = ((n * p.in_d + u32(iz)) * p.in_h + u32(iy)) * p.in_w + u32(ix);
                let tap = (kz * p.k_h + ky) * p.k_w + kx;
                sum += x[pixel * p.in_c + ci] * w[tap * p.out_c + oc];
            }
        }
    }
    y[idx] = finish(sum, oc);
}

// Transposed convolution as a gather: output position o along an axis receives input i through
// tap k when o = i * stride + k * dilation - pad, i.e. i = (o + pad - k * dilation) / stride
// where that divides exactly and lands inside the input. Kernel (k..., out_c, in_c) as Keras
// stores it: the in_c weights of one (tap, filter) are contiguous.
@compute @workgroup_size(64, 1, 1)
fn conv_transpose(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let idx = linear_workgroup(wg, nwg) * 64u + li;
    if (idx >= p.batch * p.out_d * p.out_h * p.out_w * p.out_c) {
        return;
    }
    let f = idx % p.out_c;
    let ox = (idx / p.out_c) % p.out_w;
    let oy = (idx / (p.out_c * p.out_w)) % p.out_h;
    let oz = (idx / (p.out_c * p.out_w * p.out_h)) % p.out_d;
    let n = idx / (p.out_c * p.out_w * p.out_h * p.out_d);
    var sum = 0.0;
    for (var kz = 0u; kz < p.k_d; kz++) {
        let tz = i32(oz + p.pad_d) - i32(kz * p.dil_d);
        if (tz < 0 || u32(tz) % p.s_d != 0u || u32(tz) / p.s_d >= p.in_d) {
            continue;
        }
        let iz = u32(tz) / p.s_d;
        for (var ky = 0u; ky < p.k_h; ky++) {
            let ty = i32(oy + p.pad_h) - i32(ky * p.dil_h);
            if (ty < 0 || u32(ty) % p.s_h != 0u || u32(ty) / p.s_h >= p.in_h) {
                continue;
            }
            let iy = u32(ty) / p.s_h;
            for (var kx = 0u; kx < p.k_w; kx++) {
                let tx = i32(ox + p.pad_w) - i32(kx * p.dil_w);
                if (tx < 0 || u32(tx) % p.s_w != 0u || u32(tx) / p.s_w >= p.in_w) {
                    continue;
                }
                let ix = u32(tx) / p.s_w;
                let src = (((n * p.in_d + iz) * p.in_h + iy) * p.in_w + ix) * p.in_c;
                let tap = (kz * p.k_h + ky) * p.k_w + kx;
                let wt = (tap * p.out_c + f) * p.in_c;
                for (var c = 0u; c < p.in_c; c++) {
                    sum += x[src + c] * w[wt + c];
                }
            }
        }
    }
    y[idx] = finish(sum, f);
}
