//! The update rules, in float32 and in the operation order of Keras 3's `update_step`s
//! (keras/src/optimizers/{sgd,adam,rmsprop,adagrad}.py). Hyperparameters that Keras uses as
//! Python floats inside a Python expression (`1 - beta_1`) are computed in f64 and then cast,
//! as TensorFlow converts the result; the rest are cast to float32 first.
//!
//! A lookup table's gradient arrives as rows (TensorFlow's `IndexedSlices`, repeated ids not
//! summed). Keras's sparse-aware ops then square, scale and divide each row on its own and sum
//! rows only where a slice meets a dense tensor; rows no lookup touched end up exactly as with
//! a dense zero gradient (checked against Keras). Each rule below follows that op by op.

use ndarray::ArrayD;
use rayon::prelude::*;

use super::spec::Rule;
use crate::train::grads::RowSlices;

/// A parameter's gradient as the optimizer sees it.
#[derive(Debug, Clone)]
pub(super) enum Grad {
    Dense(ArrayD<f32>),
    Rows(RowSlices),
}

impl Grad {
    /// The values clipping works on: the dense array, or the slices' rows.
    pub(super) fn values_mut(&mut self) -> &mut [f32] {
        match self {
            Grad::Dense(g) => g.as_slice_mut().expect("gradients are in standard layout"),
            Grad::Rows(r) => &mut r.values,
        }
    }

    pub(super) fn values(&self) -> &[f32] {
        match self {
            Grad::Dense(g) => g.as_slice().expect("gradients are in standard layout"),
            Grad::Rows(r) => &r.values,
        }
    }
}

/// The dense tensor of `f` applied to each slice: zeros with `f(row)` summed into each row, in
/// slice order (TensorFlow's conversion of `IndexedSlices` to a tensor).
fn scatter(rows: &RowSlices, len: usize, f: impl Fn(f32) -> f32) -> Vec<f32> {
    let mut out = vec![0f32; len];
    let w = rows.row_len;
    for (k, &i) in rows.indices.iter().enumerate() {
        out[i * w..(i + 1) * w]
            .iter_mut()
            .zip(rows.row(k))
            .for_each(|(o, &g)| *o += f(g));
    }
    out
}

/// Which of the `len / row_len` rows at least one slice touches.
fn touched(rows: &RowSlices, len: usize) -> Vec<bool> {
    let mut t = vec![false; len / rows.row_len.max(1)];
    for &i in &rows.indices {
        t[i] = true;
    }
    t
}

fn slice(a: &mut ArrayD<f32>) -> &mut [f32] {
    a.as_slice_mut()
        .expect("optimizer slots are in standard layout")
}

/// Elements per parallel piece of an elementwise update (each element's arithmetic is the
/// same whichever thread runs it, so the split changes no result).
const UPDATE_CHUNK: usize = 1 << 14;

/// Adam on a dense gradient without amsgrad, the common case, as straight-line elementwise
/// code over zipped slices (vectorized, no bounds checks), in parallel pieces for big weights.
/// `[c1, c2, alpha, eps]`: 1 - beta_1, 1 - beta_2, the bias-corrected step size, epsilon.
fn adam_dense(var: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: [f32; 4]) {
    if var.len() < 4 * UPDATE_CHUNK {
        adam_piece(var, g, m, v, k);
        return;
    }
    var.par_chunks_mut(UPDATE_CHUNK)
        .zip(g.par_chunks(UPDATE_CHUNK))
        .zip(m.par_chunks_mut(UPDATE_CHUNK))
        .zip(v.par_chunks_mut(UPDATE_CHUNK))
        .for_each(|(((var, g), m), v)| adam_piece(var, g, m, v, k));
}

/// [`adam_dense`] on one piece.
fn adam_piece(var: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: [f32; 4]) {
    let [c1, c2, alpha, eps] = k;
    for (((w, &g), m), v) in var.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m += (g - *m) * c1;
        *v += (g * g - *v) * c2;
        *w -= (*m * alpha) / (v.sqrt() + eps);
    }
}

/// One `update_step` of `rule` on `var` with gradient `grad`, learning rate `lr` and the
/// iteration count before this step; `slots` are the variable's slots in `super::slot_names`
/// order.
pub(super) fn update(
    rule: &Rule,
    lr: f32,
    iterations: i64,
    var: &mut [f32],
    grad: &Grad,
    slots: &mut [ArrayD<f32>],
) {
    let n = var.len();
    match *rule {
        Rule::Sgd { momentum, nesterov } => {
            if momentum != 0.0 {
                let mom = momentum as f32;
                let m = slice(&mut slots[0]);
                // m = m * momentum - g * lr; the slices' g * lr are summed where they meet m.
                let step = |m: &mut [f32], var: &mut [f32], i: usize, g_lr: f32| {
                    m[i] = m[i] * mom - g_lr;
                    var[i] += if nesterov { m[i] * mom - g_lr } else { m[i] };
                };
                match grad {
                    Grad::Dense(g) => {
                        let g = g.as_slice().expect("standard layout");
                        (0..n).for_each(|i| step(m, var, i, g[i] * lr));
                    }
                    Grad::Rows(r) => {
                        let g_lr = scatter(r, n, |g| g * lr);
                        (0..n).for_each(|i| step(m, var, i, g_lr[i]));
                    }
                }
            } else {
                match grad {
                    Grad::Dense(g) => {
                        let g = g.as_slice().expect("standard layout");
                        var.iter_mut().zip(g).for_each(|(v, &g)| *v -= g * lr);
                    }
                    // scatter_sub: each slice subtracted in turn.
                    Grad::Rows(r) => {
                        let w = r.row_len;
                        for (k, &i) in r.indices.iter().enumerate() {
                            var[i * w..(i + 1) * w]
                                .iter_mut()
                                .zip(r.row(k))
                                .for_each(|(v, &g)| *v -= g * lr);
                        }
                    }
                }
            }
        }
        Rule::Adam(p) | Rule::AdamW(p) => {
            let local_step = (iterations + 1) as f32;
            let beta_1_power = (p.beta_1 as f32).powf(local_step);
            let beta_2_power = (p.beta_2 as f32).powf(local_step);
            let alpha = lr * (1.0 - beta_2_power).sqrt() / (1.0 - beta_1_power);
            let (c1, c2, eps) = (
                (1.0 - p.beta_1) as f32,
                (1.0 - p.beta_2) as f32,
                p.epsilon as f32,
            );
            // g and g*g: the slices' sums, and the sums of their squares (not the squares of sums).
            let (g_sum, g_sq): (Vec<f32>, Vec<f32>);
            let (g, sq): (&[f32], Option<&[f32]>) = match grad {
                Grad::Dense(g) => (g.as_slice().expect("standard layout"), None),
                Grad::Rows(r) => {
                    g_sum = scatter(r, n, |g| g);
                    g_sq = scatter(r, n, |g| g * g);
                    (&g_sum, Some(&g_sq))
                }
            };
            let (m, rest) = slots
                .split_first_mut()
                .expect("Adam has momentum and velocity");
            let (v, rest) = rest
                .split_first_mut()
                .expect("Adam has momentum and velocity");
            let (m, v) = (slice(m), slice(v));
            let mut v_hat = rest.first_mut().map(slice);
            if let (None, None) = (sq, v_hat.as_ref()) {
                adam_dense(var, g, m, v, [c1, c2, alpha, eps]);
                return;
            }
            for i in 0..n {
                let gg = sq.map_or(g[i] * g[i], |s| s[i]);
                m[i] += (g[i] - m[i]) * c1;
                v[i] += (gg - v[i]) * c2;
                let vv = match v_hat.as_deref_mut() {
                    Some(vh) => {
                        vh[i] = vh[i].max(v[i]);
                        vh[i]
                    }
                    None => v[i],
                };
                var[i] -= (m[i] * alpha) / (vv.sqrt() + eps);
            }
        }
        Rule::RmsProp {
            rho,
            momentum,
            epsilon,
            centered,
        } => {
            let (rho32, c, eps) = (rho as f32, (1.0 - rho) as f32, epsilon as f32);
            let mut slots = slots.iter_mut();
            let velocity = slice(slots.next().expect("RMSprop has a velocity"));
            let mom = (momentum > 0.0).then(|| slice(slots.next().expect("momentum slot")));
            let average = centered.then(|| slice(slots.next().expect("average_gradient slot")));
            // velocity = rho * velocity + (1 - rho) * g^2, and the centered average alike; the
            // slices' terms are scaled one by one, then summed into the dense state.
            let (sq_term, g_term): (Vec<f32>, Option<Vec<f32>>) = match grad {
                Grad::Dense(g) => {
                    let g = g.as_slice().expect("standard layout");
                    (
                        g.iter().map(|&g| c * (g * g)).collect(),
                        centered.then(|| g.iter().map(|&g| c * g).collect()),
                    )
                }
                Grad::Rows(r) => (
                    scatter(r, n, |g| c * (g * g)),
                    centered.then(|| scatter(r, n, |g| c * g)),
                ),
            };
            for i in 0..n {
                velocity[i] = rho32 * velocity[i] + sq_term[i];
            }
            let mut denominator: Vec<f32> = velocity.iter().map(|&v| v + eps).collect();
            if let (Some(avg), Some(g_term)) = (average, &g_term) {
                for i in 0..n {
                    avg[i] = rho32 * avg[i] + g_term[i];
                    denominator[i] = velocity[i] - avg[i] * avg[i] + eps;
                }
            }
            let sqrt_den: Vec<f32> = denominator.iter().map(|d| d.sqrt()).collect();
            // increment = lr * g / sqrt(denominator), per slice for rows.
            match grad {
                Grad::Dense(g) => {
                    let g = g.as_slice().expect("standard layout");
                    let inc = |i: usize| (lr * g[i]) / sqrt_den[i];
                    match mom {
                        Some(m) => {
                            let k = momentum as f32;
                            for i in 0..n {
                                m[i] = k * m[i] + inc(i);
                                var[i] -= m[i];
                            }
                        }
                        None => (0..n).for_each(|i| var[i] -= inc(i)),
                    }
                }
                Grad::Rows(r) => {
                    let w = r.row_len;
                    let hit = touched(r, n);
                    // Untouched rows see the zero gradient (0 / sqrt(den): NaN where den is).
                    let zero_inc = |i: usize| (lr * 0.0) / sqrt_den[i];
                    match mom {
                        Some(m) => {
                            let k = momentum as f32;
                            let mut inc = vec![0f32; n];
                            for (row, &h) in hit.iter().enumerate() {
                                if !h {
                                    (row * w..(row + 1) * w).for_each(|i| inc[i] = zero_inc(i));
                                }
                            }
                            for (s, &row) in r.indices.iter().enumerate() {
                                for (j, &g) in r.row(s).iter().enumerate() {
                                    let i = row * w + j;
                                    inc[i] += (lr * g) / sqrt_den[i];
                                }
                            }
                            for i in 0..n {
                                m[i] = k * m[i] + inc[i];
                                var[i] -= m[i];
                            }
                        }
                        None => {
                            for (row, &h) in hit.iter().enumerate() {
                                if !h {
                                    (row * w..(row + 1) * w).for_each(|i| var[i] -= zero_inc(i));
                                }
                            }
                            for (s, &row) in r.indices.iter().enumerate() {
                                for (j, &g) in r.row(s).iter().enumerate() {
                                    let i = row * w + j;
                                    var[i] -= (lr * g) / sqrt_den[i];
                                }
                            }
                        }
                    }
                }
            }
        }
        Rule::Adagrad { epsilon, .. } => {
            let eps = epsilon as f32;
            let acc = slice(&mut slots[0]);
            match grad {
                Grad::Dense(g) => {
                    let g = g.as_slice().expect("standard layout");
                    for i in 0..n {
                        acc[i] += g[i] * g[i];
                        var[i] -= (lr * g[i]) / (acc[i] + eps).sqrt();
                    }
                }
                Grad::Rows(r) => {
                    let w = r.row_len;
                    // scatter_add of each slice's square, then scatter_sub of each slice's step.
                    for (s, &row) in r.indices.iter().enumerate() {
                        for (j, &g) in r.row(s).iter().enumerate() {
                            acc[row * w + j] += g * g;
                        }
                    }
                    for (row, h) in touched(r, n).into_iter().enumerate() {
                        if !h {
                            for i in row * w..(row + 1) * w {
                                var[i] -= (lr * 0.0) / (acc[i] + eps).sqrt();
                            }
                        }
                    }
                    for (s, &row) in r.indices.iter().enumerate() {
                        for (j, &g) in r.row(s).iter().enumerate() {
                            let i = row * w + j;
                            var[i] -= (lr * g) / (acc[i] + eps).sqrt();
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::optim::AdamParams;
    use ndarray::IxDyn;

    /// Adam's dense fast path, serial below and parallel above 4 pieces, gives exactly the
    /// scalar rule: m += (g - m)(1 - β1), v += (g² - v)(1 - β2), w -= m·α / (√v + ε).
    #[test]
    fn adam_dense_path_is_the_scalar_rule_bit_for_bit() {
        let p = AdamParams {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
            amsgrad: false,
        };
        for n in [1, 1000, 4 * UPDATE_CHUNK + 3] {
            let wave = |k: usize, f: f32| (k as f32 * f).sin() * 0.5;
            let mut var: Vec<f32> = (0..n).map(|k| wave(k, 0.37)).collect();
            let g: Vec<f32> = (0..n).map(|k| wave(k, 1.91) * 1e-2).collect();
            let m0: Vec<f32> = (0..n).map(|k| wave(k, 0.73) * 1e-3).collect();
            let v0: Vec<f32> = (0..n).map(|k| wave(k, 2.3).abs() * 1e-5).collect();
            let mut slots = vec![
                ArrayD::from_shape_vec(IxDyn(&[n]), m0.clone()).unwrap(),
                ArrayD::from_shape_vec(IxDyn(&[n]), v0.clone()).unwrap(),
            ];
            let (lr, iterations) = (1e-3f32, 4i64);
            let mut want = var.clone();
            let t = (iterations + 1) as f32;
            let alpha = lr * (1.0 - 0.999f32.powf(t)).sqrt() / (1.0 - 0.9f32.powf(t));
            let (mut m, mut v) = (m0, v0);
            for k in 0..n {
                m[k] += (g[k] - m[k]) * (1.0 - 0.9f64) as f32;
                v[k] += (g[k] * g[k] - v[k]) * (1.0 - 0.999f64) as f32;
                want[k] -= (m[k] * alpha) / (v[k].sqrt() + 1e-7f64 as f32);
            }
            let grad = Grad::Dense(ArrayD::from_shape_vec(IxDyn(&[n]), g).unwrap());
            update(&Rule::Adam(p), lr, iterations, &mut var, &grad, &mut slots);
            assert_eq!(var, want, "weights, n = {n}");
            assert_eq!(slots[0].as_slice().unwrap(), &m[..], "momentum, n = {n}");
            assert_eq!(slots[1].as_slice().unwrap(), &v[..], "velocity, n = {n}");
        }
    }
}
