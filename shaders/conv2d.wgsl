// Conv2D as an implicit GEMM over an NHWC image (concatenated after common.wgsl and gemm.wgsl):
// row = (batch, out_y, out_x), col = (kernel_y, kernel_x, in_channel), which is exactly the
// row-major flattening of Keras's HWIO kernel, so B is the kernel as stored. Out-of-image taps
// read zero (TensorFlow `same` padding, with pad_top/pad_left already resolved by the IR).

fn load_a(row: u32, col: u32) -> f32 {
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
