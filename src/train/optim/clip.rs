//! Gradient clipping as Keras's `_clip_gradients` does it, before weight decay and the update.
//! On a lookup table's rows it works on the rows themselves (TensorFlow clips an
//! `IndexedSlices`' values), so a repeated id is clipped and counted in the norm per lookup.

use super::spec::Clip;
use super::update::Grad;

/// Sum of squares, accumulated in f64 and rounded once (TensorFlow's tree reduction is close to
/// exact; a running f32 sum is not).
fn sum_of_squares(values: &[f32]) -> f32 {
    values.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() as f32
}

pub(super) fn clip(clip: Clip, grads: &mut [Grad]) {
    match clip {
        Clip::Norm(c) if c > 0.0 => {
            // tf.clip_by_norm: g * c / max(norm, c), with a zero gradient left zero.
            let c = c as f32;
            for g in grads {
                let values = g.values_mut();
                let l2sum = sum_of_squares(values);
                let norm = if l2sum > 0.0 { l2sum.sqrt() } else { l2sum };
                let bound = norm.max(c);
                values.iter_mut().for_each(|v| *v = (*v * c) / bound);
            }
        }
        Clip::GlobalNorm(c) if c > 0.0 => {
            // clip_by_global_norm: scale = c * min(1 / norm, 1 / c), made NaN by a non-finite norm.
            let squared: f32 = grads.iter().map(|g| sum_of_squares(g.values())).sum();
            let norm = squared.sqrt();
            let poison = if norm.is_finite() { 0.0 } else { f32::NAN };
            let scale = (c as f32) * (1.0 / norm).min((1.0 / c) as f32) + poison;
            for g in grads {
                g.values_mut().iter_mut().for_each(|v| *v *= scale);
            }
        }
        Clip::Value(c) if c > 0.0 => {
            // tf.clip_by_value: maximum(minimum(g, c), -c), NaN staying NaN.
            let c = c as f32;
            for g in grads {
                for v in g.values_mut() {
                    if !v.is_nan() {
                        *v = v.min(c).max(-c);
                    }
                }
            }
        }
        Clip::None | Clip::Norm(_) | Clip::GlobalNorm(_) | Clip::Value(_) => {}
    }
}
