//! ConvLSTM on the CPU: the input conv of every timestep as one batch of N*T images, then per
//! step the recurrent conv of h (stride 1, `same`) and the LSTM gates at every position.

use ndarray::{Array4, ArrayD, ArrayView4, IxDyn};

use super::activation::scalar;
use super::{conv2d, ConvArgs};
use crate::error::{Error, Result};
use crate::graph::{Activation, ConvLstm, ParamStore};

/// The layer's two convolutions, gates i, f, c, o along the output channels: the input conv
/// (with the bias) and the recurrent conv of h (stride 1, `same`, no bias). Shared by the
/// inference and the training forward.
pub(crate) fn convs<'a>(
    c: &ConvLstm,
    params: &'a ParamStore,
) -> std::result::Result<(ConvArgs<'a>, ConvArgs<'a>), ndarray::ShapeError> {
    let [kh, kw] = c.window.kernel;
    let g = 4 * c.filters;
    let view = |id, rows| ArrayView4::from_shape((kh, kw, rows, g), params.slice(id));
    let input_conv = ConvArgs {
        filters: g,
        window: c.window,
        in_channels: c.in_channels,
        kernel: view(c.kernel, c.in_channels)?,
        bias: c.bias.map(|b| params.view1(b)),
        activation: Activation::Linear,
        kernel_generation: Some(params.generation(c.kernel)),
    };
    let recurrent_conv = ConvArgs {
        filters: g,
        window: c.recurrent_window,
        in_channels: c.filters,
        kernel: view(c.recurrent_kernel, c.filters)?,
        bias: None,
        activation: Activation::Linear,
        kernel_generation: Some(params.generation(c.recurrent_kernel)),
    };
    Ok((input_conv, recurrent_conv))
}

pub(super) fn run(
    c: &ConvLstm,
    params: &ParamStore,
    x: ArrayD<f32>,
    out_dims: &[usize],
    name: &str,
) -> Result<ArrayD<f32>> {
    let n = x.shape()[0];
    let t_len = c.timesteps;
    let [h, w] = c.window.in_hw;
    let [oh, ow] = c.window.out_hw;
    let f = c.filters;
    let g = 4 * f;
    let x = x
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(&[n * t_len, h, w, c.in_channels]))
        .map_err(|e| Error::Internal(format!("layer '{name}': {e}")))?
        .into_dimensionality::<ndarray::Ix4>()
        .map_err(|e| Error::Internal(format!("layer '{name}': {e}")))?;
    let (input_conv, recurrent_conv) =
        convs(c, params).map_err(|e| Error::Internal(format!("layer '{name}': kernel: {e}")))?;
    // (N*T, OH, OW, 4F): x_t conv W + b for every step.
    let xz = conv2d(&input_conv, &x);
    let xz = xz.as_slice().expect("a new array is contiguous");
    let positions = oh * ow;
    let step_len = positions * g;
    let mut hs = Array4::<f32>::zeros((n, oh, ow, f));
    let mut cs = vec![0.0f32; n * positions * f];
    let mut seq = if c.return_sequences {
        vec![0.0f32; n * t_len * positions * f]
    } else {
        Vec::new()
    };
    let (act, ract) = (c.activation, c.recurrent_activation);
    for step in 0..t_len {
        let t = if c.go_backwards {
            t_len - 1 - step
        } else {
            step
        };
        let hz = conv2d(&recurrent_conv, &hs);
        let hz = hz.as_slice().expect("a new array is contiguous");
        let h_data = hs.as_slice_mut().expect("contiguous");
        for b in 0..n {
            let xrow = &xz[(b * t_len + t) * step_len..][..step_len];
            let hrow = &hz[b * step_len..][..step_len];
            for p in 0..positions {
                let z =
                    |gate: usize, j: usize| xrow[p * g + gate * f + j] + hrow[p * g + gate * f + j];
                for j in 0..f {
                    let i_g = scalar(ract, z(0, j));
                    let f_g = scalar(ract, z(1, j));
                    let cand = scalar(act, z(2, j));
                    let o_g = scalar(ract, z(3, j));
                    let k = (b * positions + p) * f + j;
                    let c_new = f_g * cs[k] + i_g * cand;
                    cs[k] = c_new;
                    h_data[k] = o_g * scalar(act, c_new);
                }
            }
            if c.return_sequences {
                let src = &h_data[b * positions * f..][..positions * f];
                seq[((b * t_len) + step) * positions * f..][..positions * f].copy_from_slice(src);
            }
        }
    }
    let data = if c.return_sequences {
        seq
    } else {
        hs.into_raw_vec_and_offset().0
    };
    ArrayD::from_shape_vec(IxDyn(out_dims), data)
        .map_err(|e| Error::Internal(format!("layer '{name}': {e}")))
}
