// Data movement (concatenated after common.wgsl): the strided copy that concatenates, pads,
// crops, permutes, repeats and nearest-upsamples (see graph::StridedCopy), and TensorFlow's
// half-pixel bilinear resize of UpSampling2D. Uniform words:
//   shape[8], src_strides[8], dst_strides[8], w[8]   (strides in elements, the batch axis first).

struct CopyParams {
    shape: array<vec4<u32>, 2>,
    src_strides: array<vec4<u32>, 2>,
    dst_strides: array<vec4<u32>, 2>,
    w: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: CopyParams;

// Element i of one 8-word field of the uniform block (read in place, not copied).
fn shape_at(i: u32) -> u32 {
    return p.shape[i / 4u][i % 4u];
}

fn src_strides_at(i: u32) -> u32 {
    return p.src_strides[i / 4u][i % 4u];
}

fn dst_strides_at(i: u32) -> u32 {
    return p.dst_strides[i / 4u][i % 4u];
}

fn w_at(i: u32) -> u32 {
    return p.w[i / 4u][i % 4u];
}

// w: rank, total, src_offset, dst_offset. One thread per copied element.
@compute @workgroup_size(64, 1, 1)
fn strided_copy(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    let rank = w_at(0u);
    if (i >= w_at(1u)) {
        return;
    }
    var rem = i;
    var s = w_at(2u);
    var d = w_at(3u);
    for (var k = i32(rank) - 1; k >= 0; k = k - 1) {
        let n = shape_at(u32(k));
        let c = rem % n;
        rem = rem / n;
        s = s + c * src_strides_at(u32(k));
        d = d + c * dst_strides_at(u32(k));
    }
    y[d] = x[s];
}

// One input coordinate of the half-pixel resize: (lower, upper, weight of upper).
fn tap(o: u32, in_size: u32, scale: f32) -> vec3<f32> {
    let pos = (f32(o) + 0.5) * scale - 0.5;
    let fl = floor(pos);
    let lower = max(fl, 0.0);
    let upper = min(ceil(pos), f32(in_size) - 1.0);
    return vec3<f32>(lower, max(upper, 0.0), pos - fl);
}

// w: batch, in_h, in_w, channels, out_h, out_w, scale_h, scale_w (f32 bits). NHWC.
@compute @workgroup_size(64, 1, 1)
fn bilinear(
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
    if (i >= batch * oh * ow * c) {
        return;
    }
    let ch = i % c;
    let ox = (i / c) % ow;
    let oy = (i / (c * ow)) % oh;
    let n = i / (c * ow * oh);
    let ty = tap(oy, ih, bitcast<f32>(w_at(6u)));
    let tx = tap(ox, iw, bitcast<f32>(w_at(7u)));
    let y0 = u32(ty.x);
    let y1 = u32(ty.y);
    let x0 = u32(tx.x);
    let x1 = u32(tx.y);
    let base = n * ih * iw * c + ch;
    let tl = x[base + (y0 * iw + x0) * c];
    let tr = x[base + (y0 * iw + x1) * c];
    let bl = x[base + (y1 * iw + x0) * c];
    let br = x[base + (y1 * iw + x1) * c];
    let top = tl + (tr - tl) * tx.z;
    let bottom = bl + (br - bl) * tx.z;
    y[i] = top + (bottom - top) * ty.z;
}
