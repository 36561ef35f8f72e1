// Backward of the ops that move or scale values without parameters (concatenated after
// common.wgsl; cpu/grad/{shape,copy,spatial,merge,norm}.rs are the reference). Every kernel is
// a gather: one thread per dx element, which it overwrites; no atomics, so results are
// deterministic. (Padding, cropping and Permute backward are strided copies, copy.wgsl.)
//
// - `scale_grad`:    dx = dy * b[k]: Rescaling's scale, Normalization's 1 / sd (sd inverted),
//                    k the weight index of the element under broadcasting (dims / strides).
// - `scalar_grad`:   an operator node with one constant (x op c, or c op x): dx from x (a) and
//                    dy (b), TensorFlow's rules (ties of maximum / minimum as the reference).
// - `block_sum`:     dx[d...] = sum over r of dy[d * f + r] on every axis (nearest upsampling;
//                    RepeatVector as an axis of 1 repeated n times), dy's blocks in row-major
//                    order.
// - `bilinear_grad`: UpSampling2D bilinear (NHWC): each dx element sums dy times the forward's
//                    half-pixel weight over the outputs whose taps reach it, in the reference's
//                    order (output rows, then columns, then the four taps).
//
// Uniform words: dims[8], factors[8], strides[8], w[8].
//   scale_grad:    dims = one item's shape, strides = the weight's (0 where it broadcasts);
//                  w: len, rank.
//   scalar_grad:   w: len, op (0 add, 1 subtract, 2 multiply, 3 divide, 4 maximum, 5 minimum),
//                  1 when the constant comes first, the constant (f32 bits).
//   block_sum:     dims = dx's shape (batch first), factors per axis, strides = dy's;
//                  w: rank, dx's length, floats per block.
//   bilinear_grad: w: batch, in_h, in_w, channels, out_h, out_w, scale_h, scale_w (f32 bits).

struct ShapeGradParams {
    dims: array<vec4<u32>, 2>,
    factors: array<vec4<u32>, 2>,
    strides: array<vec4<u32>, 2>,
    w: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;
@group(0) @binding(3) var<uniform> p: ShapeGradParams;

fn dims_at(i: u32) -> u32 {
    return p.dims[i / 4u][i % 4u];
}

fn factors_at(i: u32) -> u32 {
    return p.factors[i / 4u][i % 4u];
}

fn strides_at(i: u32) -> u32 {
    return p.strides[i / 4u][i % 4u];
}

fn w_at(i: u32) -> u32 {
    return p.w[i / 4u][i % 4u];
}

@compute @workgroup_size(64, 1, 1)
fn scale_grad(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    if (i >= w_at(0u)) {
        return;
    }
    // The item coordinates of i (what is left over is the batch index) times the strides.
    var rest = i;
    var k = 0u;
    for (var j = i32(w_at(1u)) - 1; j >= 0; j = j - 1) {
        let n = dims_at(u32(j));
        k = k + (rest % n) * strides_at(u32(j));
        rest = rest / n;
    }
    dx[i] = a[i] * b[k];
}

@compute @workgroup_size(64, 1, 1)
fn scalar_grad(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    if (i >= w_at(0u)) {
        return;
    }
    let v = a[i];
    let g = b[i];
    let first = w_at(2u) == 1u;
    let c = bitcast<f32>(w_at(3u));
    var r = g;
    switch w_at(1u) {
        case 1u: {
            if (first) {
                r = -g;
            }
        }
        case 2u: {
            r = g * c;
        }
        case 3u: {
            if (first) {
                r = g * (-c / v / v);
            } else {
                r = g / c;
            }
        }
        // With the constant first, x is the second argument: it gets dy where the test on the
        // first (c >= x, c <= x) fails.
        case 4u: {
            r = select(0.0, g, select(v >= c, !(c >= v), first));
        }
        case 5u: {
            r = select(0.0, g, select(v <= c, !(c <= v), first));
        }
        default: {}
    }
    dx[i] = r;
}

@compute @workgroup_size(64, 1, 1)
fn block_sum(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    let rank = w_at(0u);
    if (i >= w_at(1u)) {
        return;
    }
    // dy's index of the block's first element: coordinate d becomes d * f on every axis.
    var rest = i;
    var base = 0u;
    for (var j = i32(rank) - 1; j >= 0; j = j - 1) {
        let n = dims_at(u32(j));
        base = base + (rest % n) * factors_at(u32(j)) * strides_at(u32(j));
        rest = rest / n;
    }
    var sum = 0.0;
    for (var r = 0u; r < w_at(2u); r = r + 1u) {
        var q = r;
        var offset = 0u;
        for (var j = i32(rank) - 1; j >= 0; j = j - 1) {
            let f = factors_at(u32(j));
            offset = offset + (q % f) * strides_at(u32(j));
            q = q / f;
        }
        sum = sum + a[base + offset];
    }
    dx[i] = sum;
}

// One input coordinate of the half-pixel resize, as the forward's (copy.wgsl):
// (lower, upper, weight of upper).
fn grad_tap(o: u32, in_size: u32, scale: f32) -> vec3<f32> {
    let pos = (f32(o) + 0.5) * scale - 0.5;
    let fl = floor(pos);
    let lower = max(fl, 0.0);
    let upper = min(ceil(pos), f32(in_size) - 1.0);
    return vec3<f32>(lower, max(upper, 0.0), pos - fl);
}

// The outputs whose taps on one axis can reach input t: those with a position in (t - 1,
// t + 1), plus a margin for rounding (each is tested exactly), clamped to [0, out_size).
fn tap_range(t: u32, out_size: u32, scale: f32) -> vec2<u32> {
    let lo = i32(floor((f32(t) - 0.5) / scale - 0.5)) - 2;
    let hi = i32(ceil((f32(t) + 1.5) / scale - 0.5)) + 2;
    return vec2<u32>(u32(max(lo, 0)), u32(clamp(hi, 0, i32(out_size) - 1)));
}

@compute @workgroup_size(64, 1, 1)
fn bilinear_grad(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    let batch = w_at(0u);
    let ih = w_at(1u);
    let iw = w_at(2u);
    let c = w_at(3u);
    let oh = w_at(4u);
    let ow = w_at(5u);
    let sh = bitcast<f32>(w_at(6u));
    let sw = bitcast<f32>(w_at(7u));
    if (i >= batch * ih * iw * c) {
        return;
    }
    let ch = i % c;
    let ix = (i / c) % iw;
    let iy = (i / (c * iw)) % ih;
    let n = i / (c * iw * ih);
    let ys = tap_range(iy, oh, sh);
    let xs = tap_range(ix, ow, sw);
    var sum = 0.0;
    for (var oy = ys.x; oy <= ys.y; oy = oy + 1u) {
        let ty = grad_tap(oy, ih, sh);
        let y0 = u32(ty.x);
        let y1 = u32(ty.y);
        if (y0 != iy && y1 != iy) {
            continue;
        }
        let yl = ty.z;
        for (var ox = xs.x; ox <= xs.y; ox = ox + 1u) {
            let tx = grad_tap(ox, iw, sw);
            let x0 = u32(tx.x);
            let x1 = u32(tx.y);
            if (x0 != ix && x1 != ix) {
                continue;
            }
            let xl = tx.z;
            let g = a[((n * oh + oy) * ow + ox) * c + ch];
            if (y0 == iy && x0 == ix) {
                sum = sum + g * ((1.0 - yl) * (1.0 - xl));
            }
            if (y0 == iy && x1 == ix) {
                sum = sum + g * ((1.0 - yl) * xl);
            }
            if (y1 == iy && x0 == ix) {
                sum = sum + g * (yl * (1.0 - xl));
            }
            if (y1 == iy && x1 == ix) {
                sum = sum + g * (yl * xl);
            }
        }
    }
    dx[i] = sum;
}
