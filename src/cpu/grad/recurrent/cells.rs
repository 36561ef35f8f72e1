//! One row of one timestep of each cell, forward and backward, in Keras's gate order (LSTM
//! i, f, c, o; GRU z, r, h). Each rule is generic over its activations and their slopes so that
//! Keras's defaults (sigmoid gates, tanh) get loops the compiler vectorizes.

use super::super::activation::derivative;
use crate::cpu::activation::{scalar, sigmoid, tanh};
use crate::graph::Activation;

/// f(x), with the defaults written out.
#[inline(always)]
fn apply(a: Activation, x: f32) -> f32 {
    match a {
        Activation::Sigmoid => sigmoid(x),
        Activation::Tanh => tanh(x),
        a => scalar(a, x),
    }
}

/// f'(x) from x and y = f(x).
#[inline(always)]
fn slope(a: Activation, x: f32, y: f32) -> f32 {
    match a {
        Activation::Sigmoid => y * (1.0 - y),
        Activation::Tanh => 1.0 - y * y,
        a => derivative(a, x, y),
    }
}

/// Whether f'(x) needs x itself, not only f(x): then the forward keeps the pre-activations.
pub(in crate::cpu::grad) fn slope_needs_input(a: Activation) -> bool {
    !matches!(
        a,
        Activation::Linear | Activation::Sigmoid | Activation::Tanh | Activation::Exponential
    )
}

/// A cell's two activations: `act` (candidate, output) and `ract` (gates).
#[derive(Clone, Copy)]
pub(in crate::cpu::grad) struct Acts {
    pub act: Activation,
    pub ract: Activation,
}

impl Acts {
    fn defaults(&self) -> bool {
        self.act == Activation::Tanh && self.ract == Activation::Sigmoid
    }
}

/// The pre-activation at `j` where the forward kept them, else `y` (the slope does not read it).
#[inline(always)]
fn pre_or(pre: Option<&[f32]>, j: usize, y: f32) -> f32 {
    pre.map_or(y, |p| p[j])
}

// ---- SimpleRNN ----------------------------------------------------------------------------

/// h = act(z); `z` becomes h (the caller keeps z first where the slope needs it).
pub(super) fn simple_forward(act: Activation, z: &[f32], h_new: &mut [f32]) {
    match act {
        Activation::Tanh => h_new.iter_mut().zip(z).for_each(|(h, &v)| *h = tanh(v)),
        a => h_new.iter_mut().zip(z).for_each(|(h, &v)| *h = apply(a, v)),
    }
}

/// dz = dh * act'(z).
pub(super) fn simple_backward(
    act: Activation,
    h: &[f32],
    pre: Option<&[f32]>,
    dh: &[f32],
    dz: &mut [f32],
) {
    for j in 0..h.len() {
        dz[j] = dh[j] * slope(act, pre_or(pre, j, h[j]), h[j]);
    }
}

// ---- LSTM ---------------------------------------------------------------------------------

/// One LSTM row: from z = x W + h R + b (4u) and c_prev, the gates (`acts`), the new carry
/// `c_new`, act(c_new) and h.
pub(in crate::cpu::grad) struct LstmForward<'a> {
    pub z: &'a [f32],
    pub c_prev: &'a [f32],
    pub acts: &'a mut [f32],
    pub c_new: &'a mut [f32],
    pub c_act: &'a mut [f32],
    pub h_new: &'a mut [f32],
}

pub(in crate::cpu::grad) fn lstm_forward(a: Acts, row: LstmForward) {
    if a.defaults() {
        lstm_forward_with(tanh, sigmoid, row);
    } else {
        lstm_forward_with(|x| apply(a.act, x), |x| apply(a.ract, x), row);
    }
}

#[inline(always)]
fn lstm_forward_with(fa: impl Fn(f32) -> f32, fr: impl Fn(f32) -> f32, row: LstmForward) {
    let u = row.c_prev.len();
    let (zi, rest) = row.z.split_at(u);
    let (zf, rest) = rest.split_at(u);
    let (zc, zo) = rest.split_at(u);
    let (ai, rest) = row.acts.split_at_mut(u);
    let (af, rest) = rest.split_at_mut(u);
    let (ac, ao) = rest.split_at_mut(u);
    for j in 0..u {
        let i = fr(zi[j]);
        let f = fr(zf[j]);
        let g = fa(zc[j]);
        let o = fr(zo[j]);
        let c = f * row.c_prev[j] + i * g;
        let t = fa(c);
        ai[j] = i;
        af[j] = f;
        ac[j] = g;
        ao[j] = o;
        row.c_new[j] = c;
        row.c_act[j] = t;
        row.h_new[j] = o * t;
    }
}

/// One LSTM row backward: `dc` holds dL/dc_new and becomes dL/dc_prev; `dz` gets dL/dz.
pub(in crate::cpu::grad) struct LstmBackward<'a> {
    pub acts: &'a [f32],
    pub pre: Option<&'a [f32]>,
    pub c_prev: &'a [f32],
    /// c_new, present where act's slope needs its input.
    pub c_new: Option<&'a [f32]>,
    pub c_act: &'a [f32],
    pub dh: &'a [f32],
    pub dc: &'a mut [f32],
    pub dz: &'a mut [f32],
}

pub(in crate::cpu::grad) fn lstm_backward(a: Acts, row: LstmBackward) {
    if a.defaults() {
        lstm_backward_with(|_, y| 1.0 - y * y, |_, y| y * (1.0 - y), row);
    } else {
        lstm_backward_with(|x, y| slope(a.act, x, y), |x, y| slope(a.ract, x, y), row);
    }
}

#[inline(always)]
fn lstm_backward_with(
    da: impl Fn(f32, f32) -> f32,
    dr: impl Fn(f32, f32) -> f32,
    row: LstmBackward,
) {
    let u = row.c_prev.len();
    let acts = row.acts;
    let pre = row.pre;
    for j in 0..u {
        let (i, f, g, o) = (acts[j], acts[u + j], acts[2 * u + j], acts[3 * u + j]);
        let t = row.c_act[j];
        let dh = row.dh[j];
        let dc = row.dc[j] + dh * o * da(pre_or(row.c_new, j, t), t);
        row.dc[j] = dc * f;
        row.dz[j] = dc * g * dr(pre_or(pre, j, i), i);
        row.dz[u + j] = dc * row.c_prev[j] * dr(pre_or(pre, u + j, f), f);
        row.dz[2 * u + j] = dc * i * da(pre_or(pre, 2 * u + j, g), g);
        row.dz[3 * u + j] = dh * t * dr(pre_or(pre, 3 * u + j, o), o);
    }
}

// ---- GRU, reset_after=True ----------------------------------------------------------------

/// From x W + b_in (`zx`, 3u) and h R + b_rec (`hr`, 3u): z, r, hh into `acts`, h into `h_new`.
pub(super) struct GruAfterForward<'a> {
    pub zx: &'a [f32],
    pub hr: &'a [f32],
    pub h_prev: &'a [f32],
    pub acts: &'a mut [f32],
    pub pre: Option<&'a mut [f32]>,
    pub h_new: &'a mut [f32],
}

pub(super) fn gru_after_forward(a: Acts, row: GruAfterForward) {
    let u = row.h_prev.len();
    let (zx, hr) = (row.zx, row.hr);
    let mut pre = row.pre;
    for j in 0..u {
        let pz = zx[j] + hr[j];
        let pr = zx[u + j] + hr[u + j];
        let zg = apply(a.ract, pz);
        let rg = apply(a.ract, pr);
        let ph = zx[2 * u + j] + rg * hr[2 * u + j];
        let hh = apply(a.act, ph);
        row.h_new[j] = zg * row.h_prev[j] + (1.0 - zg) * hh;
        row.acts[j] = zg;
        row.acts[u + j] = rg;
        row.acts[2 * u + j] = hh;
        if let Some(p) = pre.as_deref_mut() {
            p[j] = pz;
            p[u + j] = pr;
            p[2 * u + j] = ph;
        }
    }
}

/// dL/dz of the input side (`dzx`: z, r, hh pre-activations) and of the recurrent side (`dzh`:
/// the h block scaled by r), and the direct term dL/dh_prev = dh * z.
pub(super) struct GruAfterBackward<'a> {
    pub acts: &'a [f32],
    pub pre: Option<&'a [f32]>,
    /// h R_h + b_rh of this step.
    pub hr_h: &'a [f32],
    pub h_prev: &'a [f32],
    pub dh: &'a [f32],
    pub dzx: &'a mut [f32],
    pub dzh: &'a mut [f32],
    pub dh_prev: &'a mut [f32],
}

pub(super) fn gru_after_backward(a: Acts, row: GruAfterBackward) {
    let u = row.h_prev.len();
    let (acts, pre) = (row.acts, row.pre);
    for j in 0..u {
        let (zg, rg, hh) = (acts[j], acts[u + j], acts[2 * u + j]);
        let dh = row.dh[j];
        let dzp = dh * (row.h_prev[j] - hh) * slope(a.ract, pre_or(pre, j, zg), zg);
        let dah = dh * (1.0 - zg) * slope(a.act, pre_or(pre, 2 * u + j, hh), hh);
        let drp = dah * row.hr_h[j] * slope(a.ract, pre_or(pre, u + j, rg), rg);
        row.dzx[j] = dzp;
        row.dzx[u + j] = drp;
        row.dzx[2 * u + j] = dah;
        row.dzh[j] = dzp;
        row.dzh[u + j] = drp;
        row.dzh[2 * u + j] = dah * rg;
        row.dh_prev[j] = dh * zg;
    }
}

// ---- GRU, reset_after=False ---------------------------------------------------------------

/// First half: z and r from x W + b (`zx`) and h R_zr (`hr`, 2u); `rh` = r * h_rec, the
/// operand of R_h (h_rec: h, or h times its recurrent dropout mask).
pub(super) fn gru_before_gates(
    a: Acts,
    zx: &[f32],
    hr: &[f32],
    h_rec: &[f32],
    acts: &mut [f32],
    mut pre: Option<&mut [f32]>,
    rh: &mut [f32],
) {
    let u = h_rec.len();
    for j in 0..u {
        let pz = zx[j] + hr[j];
        let pr = zx[u + j] + hr[u + j];
        let rg = apply(a.ract, pr);
        acts[j] = apply(a.ract, pz);
        acts[u + j] = rg;
        rh[j] = rg * h_rec[j];
        if let Some(p) = pre.as_deref_mut() {
            p[j] = pz;
            p[u + j] = pr;
        }
    }
}

/// Second half: hh = act(x_h + (r h) R_h) from `rhr` = (r h) R_h, and the new h.
pub(super) fn gru_before_output(
    a: Acts,
    zx: &[f32],
    rhr: &[f32],
    h_prev: &[f32],
    acts: &mut [f32],
    pre: Option<&mut [f32]>,
    h_new: &mut [f32],
) {
    let u = h_prev.len();
    let mut pre = pre;
    for j in 0..u {
        let ph = zx[2 * u + j] + rhr[j];
        let hh = apply(a.act, ph);
        let zg = acts[j];
        acts[2 * u + j] = hh;
        h_new[j] = zg * h_prev[j] + (1.0 - zg) * hh;
        if let Some(p) = pre.as_deref_mut() {
            p[2 * u + j] = ph;
        }
    }
}

/// Backward, first half: dL/dz_z and dL/dz_hh into `dz` (blocks 0 and 2), dh * z into
/// `dh_prev`. The caller then forms d(r h) = dz_hh R_hᵀ.
pub(super) fn gru_before_backward_outer(
    a: Acts,
    acts: &[f32],
    pre: Option<&[f32]>,
    h_prev: &[f32],
    dh: &[f32],
    dz: &mut [f32],
    dh_prev: &mut [f32],
) {
    let u = h_prev.len();
    for j in 0..u {
        let (zg, hh) = (acts[j], acts[2 * u + j]);
        dz[j] = dh[j] * (h_prev[j] - hh) * slope(a.ract, pre_or(pre, j, zg), zg);
        dz[2 * u + j] = dh[j] * (1.0 - zg) * slope(a.act, pre_or(pre, 2 * u + j, hh), hh);
        dh_prev[j] = dh[j] * zg;
    }
}

/// Backward, second half: from `drh` = dL/d(r h_rec), dL/dz_r into `dz` block 1 and
/// r * drh * (h_rec / h) onto `dh_prev` (`rec_mask`: the dropout mask h_rec = h * mask).
// The GRU step's pieces are separate slices of the step's buffers; bundling them would only
// rename the arguments.
#[allow(clippy::too_many_arguments)]
pub(super) fn gru_before_backward_reset(
    a: Acts,
    acts: &[f32],
    pre: Option<&[f32]>,
    h_prev: &[f32],
    rec_mask: Option<&[f32]>,
    drh: &[f32],
    dz: &mut [f32],
    dh_prev: &mut [f32],
) {
    let u = h_prev.len();
    for j in 0..u {
        let rg = acts[u + j];
        let m = rec_mask.map_or(1.0, |m| m[j]);
        let h_rec = h_prev[j] * m;
        dz[u + j] = drh[j] * h_rec * slope(a.ract, pre_or(pre, u + j, rg), rg);
        dh_prev[j] += drh[j] * rg * m;
    }
}
