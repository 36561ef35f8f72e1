//! Dropout and the noise layers in training mode, with the seeded RNG of the run: the forward
//! keeps the multiplier it drew, the backward multiplies dy by it.

use ndarray::{ArrayD, IxDyn};

use super::{as_float, Forward, NodeIo};
use crate::cpu::Tensor;
use crate::error::Result;
use crate::graph::{Dropout, DropoutKind, Node};
use crate::train::Rng;

/// The SELU constants AlphaDropout keeps the statistics of (Keras's, to full precision).
const SELU_ALPHA: f64 = 1.673_263_242_354_377_3;
const SELU_SCALE: f64 = 1.050_700_987_355_480_5;
/// What AlphaDropout sets a dropped value to before its affine map: SELU's negative limit.
const ALPHA_P: f64 = -SELU_ALPHA * SELU_SCALE;

/// What the forward multiplied by, broadcast to the input's shape; None when it only added
/// noise (GaussianNoise) or drew nothing (rate 0).
struct Multiplier(Option<ArrayD<f32>>);

/// One training forward's draws over the noise shape (shared axes of size 1), in the order
/// the run's RNG yields them. The GPU trainer draws through this too, so both backends see
/// the same noise from the same seed.
enum Draws {
    /// GaussianNoise: added.
    Add(ArrayD<f32>),
    /// Dropout, GaussianDropout: multiplied.
    Multiply(ArrayD<f32>),
    /// AlphaDropout: which positions are kept, and the affine map (a, b) after it.
    Alpha { kept: ArrayD<bool>, a: f64, b: f64 },
}

fn draw(d: &Dropout, x_shape: &[usize], rng: &mut Rng) -> Draws {
    // One draw per position of the noise shape: shared axes have size 1 there.
    let mut noise_shape = x_shape.to_vec();
    for &a in &d.shared_axes {
        noise_shape[a + 1] = 1;
    }
    let draws: usize = noise_shape.iter().product();
    let rate = d.rate;
    match d.kind {
        DropoutKind::GaussianNoise { stddev } => {
            Draws::Add(ArrayD::from_shape_fn(IxDyn(&noise_shape), |_| {
                rng.normal() * stddev
            }))
        }
        DropoutKind::Dropout => {
            let scale = 1.0 / (1.0 - rate);
            let m = (0..draws)
                .map(|_| if rng.uniform() >= rate { scale } else { 0.0 })
                .collect();
            Draws::Multiply(ArrayD::from_shape_vec(IxDyn(&noise_shape), m).expect("noise shape"))
        }
        DropoutKind::GaussianDropout => {
            let stddev = (rate / (1.0 - rate)).sqrt();
            Draws::Multiply(ArrayD::from_shape_fn(IxDyn(&noise_shape), |_| {
                1.0 + rng.normal() * stddev
            }))
        }
        DropoutKind::AlphaDropout => {
            let r = rate as f64;
            let a = ((1.0 - r) * (1.0 + r * ALPHA_P * ALPHA_P)).powf(-0.5);
            let b = -a * ALPHA_P * r;
            let kept = ArrayD::from_shape_fn(IxDyn(&noise_shape), |_| rng.uniform() >= rate);
            Draws::Alpha { kept, a, b }
        }
    }
}

/// AlphaDropout's derivative dy/dx: `a` where kept, 0 where dropped.
fn alpha_multiplier(kept: &ArrayD<bool>, a: f64) -> ArrayD<f32> {
    kept.mapv(|k| if k { a as f32 } else { 0.0 })
}

/// A training forward's (multiplier, addend), flattened.
pub(crate) type Noise = (Option<Vec<f32>>, Option<Vec<f32>>);

/// A training forward's noise as y = x * multiplier + addend, each broadcast to `x_shape`
/// (with the batch axis) and flattened; None where the layer has no such term (or draws
/// nothing). Consumes the RNG exactly as the CPU forward does.
pub(crate) fn training_noise(d: &Dropout, x_shape: &[usize], rng: &mut Rng) -> Noise {
    if d.is_noop_in_training() {
        return (None, None);
    }
    let full = |m: ArrayD<f32>| -> Vec<f32> {
        m.broadcast(IxDyn(x_shape))
            .expect("noise broadcasts")
            .iter()
            .copied()
            .collect()
    };
    match draw(d, x_shape, rng) {
        Draws::Add(noise) => (None, Some(full(noise))),
        Draws::Multiply(m) => (Some(full(m)), None),
        Draws::Alpha { kept, a, b } => {
            let mult = alpha_multiplier(&kept, a);
            let add = kept.mapv(|k| {
                if k {
                    b as f32
                } else {
                    (a * ALPHA_P + b) as f32
                }
            });
            (Some(full(mult)), Some(full(add)))
        }
    }
}

pub(super) fn forward(
    d: &Dropout,
    node: &Node,
    inputs: &[Tensor],
    rng: &mut Rng,
) -> Result<Forward> {
    let x = as_float(&inputs[0], node)?;
    if d.is_noop_in_training() {
        return Ok(Forward {
            outputs: vec![Tensor::F32(x.clone())],
            saved: Some(Box::new(Multiplier(None))),
            state: Vec::new(),
        });
    }
    let (y, multiplier) = match draw(d, x.shape(), rng) {
        Draws::Add(noise) => (x + &noise, None),
        Draws::Multiply(m) => (x * &m, Some(m)),
        Draws::Alpha { kept, a, b } => {
            // y = a * (x where kept, else ALPHA_P) + b.
            let mut y = x.clone();
            let kept_b = kept.broadcast(x.raw_dim()).expect("noise broadcasts");
            ndarray::Zip::from(&mut y).and(&kept_b).for_each(|v, &k| {
                let z = if k { *v as f64 } else { ALPHA_P };
                *v = (a * z + b) as f32;
            });
            let m = alpha_multiplier(&kept, a);
            (y, Some(m))
        }
    };
    let multiplier = multiplier.map(|m| {
        m.broadcast(x.raw_dim())
            .expect("noise broadcasts")
            .to_owned()
    });
    Ok(Forward {
        outputs: vec![Tensor::F32(y)],
        saved: Some(Box::new(Multiplier(multiplier))),
        state: Vec::new(),
    })
}

pub(super) fn backward(_d: &Dropout, io: &NodeIo, dy: ArrayD<f32>) -> Result<ArrayD<f32>> {
    Ok(match &io.saved::<Multiplier>()?.0 {
        Some(m) => dy * m,
        None => dy,
    })
}
