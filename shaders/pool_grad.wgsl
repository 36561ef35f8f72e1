// Pooling backward (concatenated after common.wgsl), channels-last with up to three spatial
// axes (D, H, W; 1-D and 2-D pools have leading axes of 1), as TensorFlow's kernels compute it
// (cpu/grad/pool.rs is the reference). Every kernel is a gather: one thread per element it
// writes, no atomics, so results are deterministic and every output is overwritten.
//
// - `pool_grad`: each dx element sums over the windows that cover it. Average: dy / the
//   window's in-bounds tap count. Max 1-D / 2-D (mode 1): dy when this element is the window's
//   first maximum in window order (the first tap, then only a strictly larger one, as
//   MaxPoolGrad). Max 3-D (mode 2): dy when it equals the window's maximum (MaxPool3DGrad).
//   Windows are re-scanned from x, so the rule is the reference's exactly.
// - global pooling: `global_pool_grad_share` computes per (n, c) the share each receiving
//   element gets (max: dy / the number of tied maxima; masked average: dy / unmasked steps)
//   and, for max, the maximum; `global_pool_grad` writes dx from them (plain average needs no
//   first pass: dy / positions).

struct PoolGradParams {
    batch: u32,
    channels: u32,
    in_d: u32,
    in_h: u32,
    in_w: u32,
    out_d: u32,
    out_h: u32,
    out_w: u32,
    k_d: u32,
    k_h: u32,
    k_w: u32,
    stride_d: u32,
    stride_h: u32,
    stride_w: u32,
    pad_d: u32,
    pad_h: u32,
    pad_w: u32,
    // Windowed: 0 average, 1 first maximum, 2 all maxima. Global: 0 average, 1 max.
    mode: u32,
    // Global only: positions per item, and 1 when token id 0 at (n, position) masks it.
    positions: u32,
    masked: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
// The model's token ids (masked global average only; else a dummy binding).
@group(0) @binding(2) var<storage, read> ids: array<u32>;
// Global pooling's per (n, c) share and maximum, [n * C + c][2] (else a dummy binding).
@group(0) @binding(3) var<storage, read> share: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;
@group(0) @binding(5) var<uniform> p: PoolGradParams;

const MODE_AVERAGE: u32 = 0u;
const MODE_FIRST_MAX: u32 = 1u;

// Along one axis: the first and one past the last output position whose window covers input
// position `i` (an empty range when none does).
fn covering(i: u32, k: u32, stride: u32, pad: u32, size: u32) -> vec2<u32> {
    let at = i + pad;
    var lo = 0u;
    if (at + 1u > k) {
        lo = (at + 1u - k + stride - 1u) / stride;
    }
    let hi = min(at / stride + 1u, size);
    return vec2<u32>(lo, max(lo, hi));
}

// Along one axis: the in-bounds input range of output position `o`'s window.
fn window_range(o: u32, k: u32, stride: u32, pad: u32, size: u32) -> vec2<u32> {
    let start = i32(o * stride) - i32(pad);
    let end = min(start + i32(k), i32(size));
    let lo = u32(max(start, 0));
    return vec2<u32>(lo, max(lo, u32(max(end, 0))));
}

@compute @workgroup_size(64, 1, 1)
fn pool_grad(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let idx = linear_workgroup(wg, nwg) * 64u + li;
    if (idx >= p.batch * p.in_d * p.in_h * p.in_w * p.channels) {
        return;
    }
    let c = idx % p.channels;
    let ix = (idx / p.channels) % p.in_w;
    let iy = (idx / (p.channels * p.in_w)) % p.in_h;
    let iz = (idx / (p.channels * p.in_w * p.in_h)) % p.in_d;
    let n = idx / (p.channels * p.in_w * p.in_h * p.in_d);
    // Depth index of this image's first plane.
    let image = n * p.in_d;
    let me = x[idx];
    let zs = covering(iz, p.k_d, p.stride_d, p.pad_d, p.out_d);
    let ys = covering(iy, p.k_h, p.stride_h, p.pad_h, p.out_h);
    let xs = covering(ix, p.k_w, p.stride_w, p.pad_w, p.out_w);
    var sum = 0.0;
    for (var oz = zs.x; oz < zs.y; oz++) {
        let wz = window_range(oz, p.k_d, p.stride_d, p.pad_d, p.in_d);
        for (var oy = ys.x; oy < ys.y; oy++) {
            let wy = window_range(oy, p.k_h, p.stride_h, p.pad_h, p.in_h);
            for (var ox = xs.x; ox < xs.y; ox++) {
                let wx = window_range(ox, p.k_w, p.stride_w, p.pad_w, p.in_w);
                let g = dy[(((n * p.out_d + oz) * p.out_h + oy) * p.out_w + ox) * p.channels + c];
                if (p.mode == MODE_AVERAGE) {
                    let count = (wz.y - wz.x) * (wy.y - wy.x) * (wx.y - wx.x);
                    sum += g / f32(count);
                    continue;
                }
                // Scan the window in order: the winning pixel (first maximum) and the maximum.
                var best = x[(((image + wz.x) * p.in_h + wy.x) * p.in_w + wx.x) * p.channels + c];
                var win = vec3<u32>(wz.x, wy.x, wx.x);
                for (var z = wz.x; z < wz.y; z++) {
                    for (var yy = wy.x; yy < wy.y; yy++) {
                        let row = ((image + z) * p.in_h + yy) * p.in_w;
                        for (var xx = wx.x; xx < wx.y; xx++) {
                            let v = x[(row + xx) * p.channels + c];
                            if (v > best) {
                                best = v;
                                win = vec3<u32>(z, yy, xx);
                            }
                        }
                    }
                }
                if (p.mode == MODE_FIRST_MAX) {
                    if (all(win == vec3<u32>(iz, iy, ix))) {
                        sum += g;
                    }
                } else if (me == best) {
                    sum += g;
                }
            }
        }
    }
    dx[idx] = sum;
}

// One thread per (n, c): share[2 * (n * C + c)] = the gradient each receiving position gets,
// share[2 * (n * C + c) + 1] = the maximum (max only). Written to the `dx` binding.
@compute @workgroup_size(64, 1, 1)
fn global_pool_grad_share(
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
    let first = n * p.positions;
    var count = 0u;
    var best = 0.0;
    if (p.mode == MODE_AVERAGE) {
        for (var i = 0u; i < p.positions; i++) {
            count += u32(ids[first + i] != 0u);
        }
    } else {
        // As the reference: the maximum from -inf, then every element equal to it.
        best = x[first * p.channels + c];
        for (var i = 1u; i < p.positions; i++) {
            best = max(best, x[(first + i) * p.channels + c]);
        }
        for (var i = 0u; i < p.positions; i++) {
            count += u32(x[(first + i) * p.channels + c] == best);
        }
    }
    // 0 receivers (every step masked) leaves an unused inf.
    dx[2u * idx] = dy[idx] / f32(count);
    dx[2u * idx + 1u] = best;
}

// One thread per dx element (n, position, c).
@compute @workgroup_size(64, 1, 1)
fn global_pool_grad(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let idx = linear_workgroup(wg, nwg) * 64u + li;
    if (idx >= p.batch * p.positions * p.channels) {
        return;
    }
    let c = idx % p.channels;
    let step = idx / p.channels;
    let n = step / p.positions;
    let nc = n * p.channels + c;
    var v = 0.0;
    if (p.mode == MODE_AVERAGE) {
        if (p.masked == 0u) {
            v = dy[nc] / f32(p.positions);
        } else if (ids[step] != 0u) {
            v = share[2u * nc];
        }
    } else if (x[idx] == share[2u * nc + 1u]) {
        v = share[2u * nc];
    }
    dx[idx] = v;
}
