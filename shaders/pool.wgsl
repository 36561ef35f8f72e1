// Max and average pooling over channels-last tensors with up to three spatial axes (D, H, W;
// 1-D and 2-D pools have leading axes of 1), plus global pooling (concatenated after
// common.wgsl). Global pooling reads in_h * in_w positions (the plan folds all spatial axes in).
// Windows follow TensorFlow: `same` pads are not values; max ignores them and average divides by
// the number of in-bounds taps.

struct PoolParams {
    batch: u32,
    in_h: u32,
    in_w: u32,
    channels: u32,
    out_h: u32,
    out_w: u32,
    k_h: u32,
    k_w: u32,
    stride_h: u32,
    stride_w: u32,
    pad_top: u32,
    pad_left: u32,
    is_max: u32,
    in_d: u32,
    out_d: u32,
    k_d: u32,
    stride_d: u32,
    pad_front: u32,
    // Global average only: 1 when token id 0 at (n, position) masks that step (Keras's
    // GlobalAveragePooling1D after Embedding(mask_zero=True)).
    masked: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
// The model's token ids (global average with a mask only; else a dummy binding).
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<uniform> p: PoolParams;

// -f32::MAX written exactly: Tint (the browsers' WGSL compiler) refuses a literal that rounds
// past it, such as -3.4028235e38.
const NEG_INF: f32 = -3.4028234663852886e38;

// One thread per output element (n, oy, ox, c).
@compute @workgroup_size(64, 1, 1)
fn pool2d(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let idx = linear_workgroup(wg, nwg) * 64u + li;
    if (idx >= p.batch * p.out_d * p.out_h * p.out_w * p.channels) {
        return;
    }
    let c = idx % p.channels;
    let ox = (idx / p.channels) % p.out_w;
    let oy = (idx / (p.channels * p.out_w)) % p.out_h;
    let oz = (idx / (p.channels * p.out_w * p.out_h)) % p.out_d;
    let n = idx / (p.channels * p.out_w * p.out_h * p.out_d);
    var best = NEG_INF;
    var sum = 0.0;
    var count = 0u;
    for (var kz = 0u; kz < p.k_d; kz++) {
        let iz = i32(oz * p.stride_d + kz) - i32(p.pad_front);
        if (iz < 0 || iz >= i32(p.in_d)) {
            continue;
        }
        for (var ky = 0u; ky < p.k_h; ky++) {
            let iy = i32(oy * p.stride_h + ky) - i32(p.pad_top);
            if (iy < 0 || iy >= i32(p.in_h)) {
                continue;
            }
            for (var kx = 0u; kx < p.k_w; kx++) {
                let ix = i32(ox * p.stride_w + kx) - i32(p.pad_left);
                if (ix < 0 || ix >= i32(p.in_w)) {
                    continue;
                }
                let pixel = ((n * p.in_d + u32(iz)) * p.in_h + u32(iy)) * p.in_w + u32(ix);
                let v = x[pixel * p.channels + c];
                best = max(best, v);
                sum += v;
                count += 1u;
            }
        }
    }
    if (p.is_max != 0u) {
        y[idx] = best;
    } else {
        y[idx] = sum / f32(max(count, 1u));
    }
}

// One thread per (n, c), over all in_h * in_w positions.
@compute @workgroup_size(64, 1, 1)
fn global_pool2d(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let idx = linear_workgroup(wg, nwg) * 64u + li;
    if (idx >= p.batch * p.channels) {
        return;
    }
    let c = idx % p.channels;
    let n = idx / p.channels;
    let positions = p.in_h * p.in_w;
    var best = NEG_INF;
    var sum = 0.0;
    var count = 0u;
    for (var i = 0u; i < positions; i++) {
        if (p.masked != 0u && ids[n * positions + i] == 0u) {
            continue;
        }
        let v = x[(n * positions + i) * p.channels + c];
        best = max(best, v);
        sum += v;
        count += 1u;
    }
    if (p.is_max != 0u) {
        y[idx] = best;
    } else if (count == 0u) {
        // Keras divides by the mask's sum, 0 when every step is masked: 0 / 0. The bits sit
        // in a variable: Tint (the browsers' WGSL compiler) refuses a NaN constant expression.
        var nan_bits = 0x7fc00000u;
        y[idx] = bitcast<f32>(nan_bits);
    } else {
        y[idx] = sum / f32(count);
    }
}
