// Conv1D/2D/3D as an implicit GEMM over a channels-last image (concatenated after common.wgsl
// and gemm.wgsl): row = (batch, out_z, out_y, out_x), col = (kernel_z, kernel_y, kernel_x,
// in_channel of the group), which is exactly the row-major flattening of Keras's kernel
// (k..., C / groups, F), so B is the kernel as stored. 1-D and 2-D convs have a depth axis of 1
// (Conv1D is a one-row image). Taps are `dil_*` apart; out-of-image taps read zero (TensorFlow
// `same` or causal padding, with the pads before already resolved by the IR).

// The plain case (one group, no depth axis, no dilation): the 2-D index arithmetic only.
// `CONV_GENERAL` is a constant the host puts before this file (false for Kernel::Conv2d, true
// for Kernel::ConvNd), so each pipeline compiles one of the two paths.
fn load_a(row: u32, col: u32, group: u32) -> f32 {
    if (CONV_GENERAL) {
        return load_a_general(row, col, group);
    }
    let ox = row % p.out_w;
    let oy = (row / p.out_w) % p.out_h;
    let n = row / (p.out_w * p.out_h);
    let ci = col % p.in_c;
    let kx = (col / p.in_c) % p.k_w;
    let ky = col / (p.in_c * p.k_w);
    let iy = i32(oy * p.stride_h + ky) - i32(p.pad_top);
    let ix = i32(ox * p.stride_w + kx) - i32(p.pad_left);
    if (iy < 0 || ix < 0 || iy >= i32(p.in_h) || ix >= i32(p.in_w)) {
        return 0.0;
    }
    return a[((n * p.in_h + u32(iy)) * p.in_w + u32(ix)) * p.in_c + ci];
}

fn load_a_general(row: u32, col: u32, group: u32) -> f32 {
    let ox = row % p.out_w;
    let oy = (row / p.out_w) % p.out_h;
    let oz = (row / (p.out_w * p.out_h)) % p.out_d;
    let n = row / (p.out_w * p.out_h * p.out_d);
    let ci = col % p.in_c;
    let kx = (col / p.in_c) % p.k_w;
    let ky = (col / (p.in_c * p.k_w)) % p.k_h;
    let kz = col / (p.in_c * p.k_w * p.k_h);
    let iz = i32(oz * p.stride_d + kz * p.dil_d) - i32(p.pad_front);
    let iy = i32(oy * p.stride_h + ky * p.dil_h) - i32(p.pad_top);
    let ix = i32(ox * p.stride_w + kx * p.dil_w) - i32(p.pad_left);
    if (iz < 0 || iy < 0 || ix < 0 || iz >= i32(p.in_d) || iy >= i32(p.in_h) || ix >= i32(p.in_w)) {
        return 0.0;
    }
    let pixel = ((n * p.in_d + u32(iz)) * p.in_h + u32(iy)) * p.in_w + u32(ix);
    return a[pixel * p.in_c_total + group * p.in_c + ci];
}

fn load_b(k: u32, col: u32, ld: u32) -> f32 {
    return b[k * ld + col];
}
