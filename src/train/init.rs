//! Keras 3's weight initializers (keras/src/initializers) with its formulas and defaults, drawn
//! from wgnn's seeded `Rng`. Keras's own random streams cannot be reproduced, so a seed gives
//! wgnn's own reproducible draw of the same distribution.
//!
//! An initializer is parsed from its serialized form in a layer config: a name (`"he_normal"`,
//! `"GlorotUniform"`, Keras's aliases `"uniform"`, `"normal"`, `"one"`, `"zero"`), or
//! `{"class_name": "VarianceScaling", "config": {...}}` (Keras 3 adds `module` and
//! `registered_name`, Keras 2 files omit them).

use ndarray::{ArrayD, IxDyn};
use serde_json::Value;

use super::Rng;

/// The standard deviation of a standard normal truncated to [-2, 2]; VarianceScaling divides by
/// it so that the truncated draw has the variance asked for (keras: `0.87962566103423978`).
pub const TRUNCATED_NORMAL_STDDEV: f64 = 0.879_625_661_034_239_8;

/// Which fan VarianceScaling divides its scale by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanMode {
    FanIn,
    FanOut,
    FanAvg,
}

/// VarianceScaling's distributions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    /// Normal truncated at two standard deviations, scaled so its stddev is `sqrt(scale / n)`.
    TruncatedNormal,
    UntruncatedNormal,
    /// Uniform in `[-sqrt(3 * scale / n), sqrt(3 * scale / n)]`.
    Uniform,
}

/// One Keras initializer with its parameters. `seed: Some(s)` is an initializer seeded in the
/// config: like Keras, it draws the same values at every call (from `Rng::new(s)`), whatever the
/// model's seed; `None` draws from the model's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Initializer {
    Zeros,
    Ones,
    Constant(f64),
    RandomNormal {
        mean: f64,
        stddev: f64,
        seed: Option<u64>,
    },
    RandomUniform {
        minval: f64,
        maxval: f64,
        seed: Option<u64>,
    },
    /// Values beyond two standard deviations from the mean are redrawn (TensorFlow's
    /// `truncated_normal`), so the stddev of the draw is `0.8796 * stddev`.
    TruncatedNormal {
        mean: f64,
        stddev: f64,
        seed: Option<u64>,
    },
    VarianceScaling {
        scale: f64,
        mode: FanMode,
        distribution: Distribution,
        /// Keras 3's `input_axes` / `output_axes`: used only when both are set.
        input_axes: Option<Vec<i64>>,
        output_axes: Option<Vec<i64>>,
        seed: Option<u64>,
    },
    /// QR of a standard normal matrix, signs fixed so R has a positive diagonal, times `gain`.
    Orthogonal {
        gain: f64,
        seed: Option<u64>,
    },
    /// `gain * eye(rows, cols)`, 2-D only.
    Identity {
        gain: f64,
    },
}

impl Initializer {
    fn variance_scaling(scale: f64, mode: FanMode, distribution: Distribution) -> Self {
        Initializer::VarianceScaling {
            scale,
            mode,
            distribution,
            input_axes: None,
            output_axes: None,
            seed: None,
        }
    }

    /// Xavier uniform: `limit = sqrt(6 / (fan_in + fan_out))`; Keras's default kernel initializer.
    pub fn glorot_uniform() -> Self {
        Self::variance_scaling(1.0, FanMode::FanAvg, Distribution::Uniform)
    }

    pub fn glorot_normal() -> Self {
        Self::variance_scaling(1.0, FanMode::FanAvg, Distribution::TruncatedNormal)
    }

    pub fn he_uniform() -> Self {
        Self::variance_scaling(2.0, FanMode::FanIn, Distribution::Uniform)
    }

    pub fn he_normal() -> Self {
        Self::variance_scaling(2.0, FanMode::FanIn, Distribution::TruncatedNormal)
    }

    pub fn lecun_uniform() -> Self {
        Self::variance_scaling(1.0, FanMode::FanIn, Distribution::Uniform)
    }

    pub fn lecun_normal() -> Self {
        Self::variance_scaling(1.0, FanMode::FanIn, Distribution::TruncatedNormal)
    }

    /// Keras's `"uniform"` (RandomUniform's defaults), the Embedding default.
    pub fn uniform() -> Self {
        Initializer::RandomUniform {
            minval: -0.05,
            maxval: 0.05,
            seed: None,
        }
    }

    /// Keras's default recurrent initializer.
    pub fn orthogonal() -> Self {
        Initializer::Orthogonal {
            gain: 1.0,
            seed: None,
        }
    }

    /// Parses a serialized initializer; the message says what is wrong (the caller names the
    /// layer and field).
    pub fn from_keras(v: &Value) -> Result<Initializer, String> {
        let empty = serde_json::Map::new();
        let (class, config) = match v {
            Value::String(s) => (s.as_str(), &empty),
            Value::Object(o) => {
                let class = o
                    .get("class_name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("initializer {v} has no class_name"))?;
                let config = match o.get("config") {
                    None | Some(Value::Null) => &empty,
                    Some(Value::Object(c)) => c,
                    Some(other) => {
                        return Err(format!("initializer config {other} is not an object"))
                    }
                };
                (class, config)
            }
            other => {
                return Err(format!(
                    "expected an initializer name or object, found {other}"
                ))
            }
        };
        let c = ConfigReader { class, config };
        Ok(match class {
            "Zeros" | "zeros" | "zero" => Initializer::Zeros,
            "Ones" | "ones" | "one" => Initializer::Ones,
            "Constant" | "constant" => Initializer::Constant(c.number("value", 0.0)?),
            "RandomNormal" | "random_normal" | "normal" => Initializer::RandomNormal {
                mean: c.number("mean", 0.0)?,
                stddev: c.number("stddev", 0.05)?,
                seed: c.seed()?,
            },
            "RandomUniform" | "random_uniform" | "uniform" => Initializer::RandomUniform {
                minval: c.number("minval", -0.05)?,
                maxval: c.number("maxval", 0.05)?,
                seed: c.seed()?,
            },
            "TruncatedNormal" | "truncated_normal" => Initializer::TruncatedNormal {
                mean: c.number("mean", 0.0)?,
                stddev: c.number("stddev", 0.05)?,
                seed: c.seed()?,
            },
            "VarianceScaling" | "variance_scaling" => {
                let scale = c.number("scale", 1.0)?;
                if scale <= 0.0 || scale.is_nan() {
                    return Err(format!(
                        "VarianceScaling scale must be positive, found {scale}"
                    ));
                }
                let mode = match c.string("mode", "fan_in")?.as_str() {
                    "fan_in" => FanMode::FanIn,
                    "fan_out" => FanMode::FanOut,
                    "fan_avg" => FanMode::FanAvg,
                    other => {
                        return Err(format!(
                            "VarianceScaling mode '{other}' is not fan_in, fan_out or fan_avg"
                        ))
                    }
                };
                let distribution = match c.string("distribution", "truncated_normal")?.to_lowercase().as_str() {
                    // Keras maps the old name "normal" to the truncated normal.
                    "truncated_normal" | "normal" => Distribution::TruncatedNormal,
                    "untruncated_normal" => Distribution::UntruncatedNormal,
                    "uniform" => Distribution::Uniform,
                    other => return Err(format!("VarianceScaling distribution '{other}' is not truncated_normal, untruncated_normal or uniform")),
                };
                c.with_axes(scale, mode, distribution)?
            }
            "GlorotUniform" | "glorot_uniform" => c.preset(Initializer::glorot_uniform())?,
            "GlorotNormal" | "glorot_normal" => c.preset(Initializer::glorot_normal())?,
            "HeUniform" | "he_uniform" => c.preset(Initializer::he_uniform())?,
            "HeNormal" | "he_normal" => c.preset(Initializer::he_normal())?,
            "LecunUniform" | "lecun_uniform" => c.preset(Initializer::lecun_uniform())?,
            "LecunNormal" | "lecun_normal" => c.preset(Initializer::lecun_normal())?,
            "Orthogonal" | "orthogonal" | "OrthogonalInitializer" => Initializer::Orthogonal {
                gain: c.number("gain", 1.0)?,
                seed: c.seed()?,
            },
            "Identity" | "identity" | "IdentityInitializer" => Initializer::Identity {
                gain: c.number("gain", 1.0)?,
            },
            "STFT" | "stft" | "STFTInitializer" => {
                return Err("the STFT initializer is not supported by wgnn".into())
            }
            other => return Err(format!("unknown initializer '{other}'")),
        })
    }

    /// Draws a weight of `shape` (row-major). Errors: an Orthogonal weight of rank below 2, an
    /// Identity weight that is not 2-D, VarianceScaling axes outside the shape.
    pub fn fill(&self, shape: &[usize], rng: &mut Rng) -> Result<ArrayD<f32>, String> {
        let n: usize = shape.iter().product();
        let mut seeded = self.seed().map(Rng::new);
        let rng = match seeded.as_mut() {
            Some(own) => own,
            None => rng,
        };
        let values: Vec<f32> = match self {
            Initializer::Zeros => vec![0.0; n],
            Initializer::Ones => vec![1.0; n],
            Initializer::Constant(v) => vec![*v as f32; n],
            Initializer::RandomNormal { mean, stddev, .. } => (0..n)
                .map(|_| (mean + stddev * rng.normal() as f64) as f32)
                .collect(),
            Initializer::RandomUniform { minval, maxval, .. } => (0..n)
                .map(|_| (minval + (maxval - minval) * rng.uniform() as f64) as f32)
                .collect(),
            Initializer::TruncatedNormal { mean, stddev, .. } => (0..n)
                .map(|_| (mean + stddev * truncated_standard_normal(rng)) as f32)
                .collect(),
            Initializer::VarianceScaling {
                scale,
                mode,
                distribution,
                input_axes,
                output_axes,
                ..
            } => {
                let (fan_in, fan_out) =
                    compute_fans(shape, input_axes.as_deref(), output_axes.as_deref())?;
                let (fan_in, fan_out) = (fan_in as f64, fan_out as f64);
                let n_units = match mode {
                    FanMode::FanIn => fan_in,
                    FanMode::FanOut => fan_out,
                    FanMode::FanAvg => (fan_in + fan_out) / 2.0,
                };
                let scale = scale / n_units.max(1.0);
                match distribution {
                    Distribution::TruncatedNormal => {
                        let stddev = scale.sqrt() / TRUNCATED_NORMAL_STDDEV;
                        (0..n)
                            .map(|_| (stddev * truncated_standard_normal(rng)) as f32)
                            .collect()
                    }
                    Distribution::UntruncatedNormal => {
                        let stddev = scale.sqrt();
                        (0..n)
                            .map(|_| (stddev * rng.normal() as f64) as f32)
                            .collect()
                    }
                    Distribution::Uniform => {
                        let limit = (3.0 * scale).sqrt();
                        (0..n)
                            .map(|_| (limit * (2.0 * rng.uniform() as f64 - 1.0)) as f32)
                            .collect()
                    }
                }
            }
            Initializer::Orthogonal { gain, .. } => orthogonal(shape, *gain, rng)?,
            Initializer::Identity { gain } => match shape {
                [rows, cols] => {
                    let mut v = vec![0.0; rows * cols];
                    for i in 0..(*rows).min(*cols) {
                        v[i * cols + i] = *gain as f32;
                    }
                    v
                }
                _ => {
                    return Err(format!(
                        "the Identity initializer makes 2-D matrices only, the weight has shape {shape:?}"
                    ))
                }
            },
        };
        ArrayD::from_shape_vec(IxDyn(shape), values).map_err(|e| e.to_string())
    }

    fn seed(&self) -> Option<u64> {
        match self {
            Initializer::RandomNormal { seed, .. }
            | Initializer::RandomUniform { seed, .. }
            | Initializer::TruncatedNormal { seed, .. }
            | Initializer::VarianceScaling { seed, .. }
            | Initializer::Orthogonal { seed, .. } => *seed,
            Initializer::Zeros
            | Initializer::Ones
            | Initializer::Constant(_)
            | Initializer::Identity { .. } => None,
        }
    }
}

/// A standard normal redrawn until it lies within two standard deviations.
fn truncated_standard_normal(rng: &mut Rng) -> f64 {
    loop {
        let z = rng.normal() as f64;
        if z.abs() <= 2.0 {
            return z;
        }
    }
}

/// keras.src.initializers.random_initializers.compute_fans: (fan_in, fan_out) of a weight shape.
/// A vector's fans are its length; a matrix is (inputs, outputs); a conv kernel
/// `(..., in_channels, out_channels)` multiplies both by its receptive field (the product of the
/// leading axes). With both `input_axes` and `output_axes` the fans are the products of those
/// axes (negative axes count from the end, as Python indexes).
pub fn compute_fans(
    shape: &[usize],
    input_axes: Option<&[i64]>,
    output_axes: Option<&[i64]>,
) -> Result<(usize, usize), String> {
    if let (Some(ins), Some(outs)) = (input_axes, output_axes) {
        let product = |axes: &[i64]| -> Result<usize, String> {
            axes.iter().try_fold(1usize, |acc, &a| {
                let i = if a < 0 { a + shape.len() as i64 } else { a };
                usize::try_from(i)
                    .ok()
                    .and_then(|i| shape.get(i))
                    .map(|&d| acc * d)
                    .ok_or_else(|| format!("axis {a} is outside the weight shape {shape:?}"))
            })
        };
        return Ok((product(ins)?, product(outs)?));
    }
    Ok(match shape {
        [] => (1, 1),
        [n] => (*n, *n),
        [rows, cols] => (*rows, *cols),
        [lead @ .., ins, outs] => {
            let receptive: usize = lead.iter().product();
            (ins * receptive, outs * receptive)
        }
    })
}

/// Keras's Orthogonal: the weight as a (rows = product of all but the last axis, cols = last
/// axis) matrix; a (max, min) standard normal matrix is QR-factored, Q's columns multiplied by
/// the signs of R's diagonal (so Q does not depend on the factorization's sign convention), and
/// transposed when rows < cols (orthonormal rows instead of columns).
fn orthogonal(shape: &[usize], gain: f64, rng: &mut Rng) -> Result<Vec<f32>, String> {
    let Some((&cols, lead)) = shape.split_last().filter(|_| shape.len() >= 2) else {
        return Err(format!(
            "the Orthogonal initializer needs a weight of rank 2 or more, found shape {shape:?}"
        ));
    };
    let rows: usize = lead.iter().product();
    let (m, n) = (rows.max(cols), rows.min(cols));
    let a: Vec<f64> = (0..m * n).map(|_| rng.normal() as f64).collect();
    let (mut q, r_diag) = householder_qr(a, m, n);
    for (j, d) in r_diag.iter().enumerate() {
        // ops.sign: 0 for a zero diagonal (a rank-deficient draw, probability zero).
        let s = if *d > 0.0 {
            1.0
        } else if *d < 0.0 {
            -1.0
        } else {
            0.0
        };
        for i in 0..m {
            q[i * n + j] *= s;
        }
    }
    let mut out = vec![0.0f32; rows * cols];
    for i in 0..m {
        for j in 0..n {
            let v = (gain * q[i * n + j]) as f32;
            if rows < cols {
                // Q is (cols, rows): the weight is its transpose.
                out[j * cols + i] = v;
            } else {
                out[i * cols + j] = v;
            }
        }
    }
    Ok(out)
}

/// Reduced QR of a row-major m x n matrix (m >= n) by Householder reflections: Q (m x n,
/// row-major, orthonormal columns) and the diagonal of R.
fn householder_qr(mut a: Vec<f64>, m: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut reflectors: Vec<Vec<f64>> = Vec::with_capacity(n);
    let mut r_diag = Vec::with_capacity(n);
    for k in 0..n {
        let norm = (k..m).map(|i| a[i * n + k].powi(2)).sum::<f64>().sqrt();
        // alpha takes the sign opposite to the pivot so that v does not cancel.
        let alpha = if a[k * n + k] > 0.0 { -norm } else { norm };
        let mut v: Vec<f64> = (k..m).map(|i| a[i * n + k]).collect();
        v[0] -= alpha;
        let vv: f64 = v.iter().map(|x| x * x).sum();
        if vv > 0.0 {
            // A <- (I - 2 v v^T / v^T v) A on rows k.., columns k..
            for j in k..n {
                let dot: f64 = (k..m).map(|i| v[i - k] * a[i * n + j]).sum();
                let f = 2.0 * dot / vv;
                for i in k..m {
                    a[i * n + j] -= f * v[i - k];
                }
            }
        }
        r_diag.push(a[k * n + k]);
        reflectors.push(if vv > 0.0 { v } else { Vec::new() });
    }
    // Q = H_0 H_1 ... H_{n-1} applied to the first n columns of the identity.
    let mut q = vec![0.0; m * n];
    for j in 0..n {
        q[j * n + j] = 1.0;
    }
    for k in (0..n).rev() {
        let v = &reflectors[k];
        if v.is_empty() {
            continue;
        }
        let vv: f64 = v.iter().map(|x| x * x).sum();
        for j in 0..n {
            let dot: f64 = (k..m).map(|i| v[i - k] * q[i * n + j]).sum();
            let f = 2.0 * dot / vv;
            for i in k..m {
                q[i * n + j] -= f * v[i - k];
            }
        }
    }
    (q, r_diag)
}

/// Reads one initializer's config fields, with Keras's defaults.
struct ConfigReader<'a> {
    class: &'a str,
    config: &'a serde_json::Map<String, Value>,
}

impl ConfigReader<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.config.get(key).filter(|v| !v.is_null())
    }

    fn number(&self, key: &str, default: f64) -> Result<f64, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| format!("{} '{key}' must be a number, found {v}", self.class)),
        }
    }

    fn string(&self, key: &str, default: &'static str) -> Result<String, String> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(format!(
                "{} '{key}' must be a string, found {v}",
                self.class
            )),
        }
    }

    /// An integer seed, or none; Keras's serialized SeedGenerator objects are not read.
    fn seed(&self) -> Result<Option<u64>, String> {
        match self.get("seed") {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                format!(
                    "{} seed must be a non-negative integer or null, found {v}",
                    self.class
                )
            }),
        }
    }

    fn axes(&self, key: &str) -> Result<Option<Vec<i64>>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_i64()
                        .ok_or_else(|| format!("{} '{key}' must list integers", self.class))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(|a| Some(vec![a]))
                .ok_or_else(|| format!("{} '{key}' must list integers", self.class)),
            Some(v) => Err(format!(
                "{} '{key}' must list integers, found {v}",
                self.class
            )),
        }
    }

    fn with_axes(
        &self,
        scale: f64,
        mode: FanMode,
        distribution: Distribution,
    ) -> Result<Initializer, String> {
        Ok(Initializer::VarianceScaling {
            scale,
            mode,
            distribution,
            input_axes: self.axes("input_axes")?,
            output_axes: self.axes("output_axes")?,
            seed: self.seed()?,
        })
    }

    /// A VarianceScaling preset (GlorotUniform ...) with the seed and axes of its config.
    fn preset(&self, preset: Initializer) -> Result<Initializer, String> {
        match preset {
            Initializer::VarianceScaling {
                scale,
                mode,
                distribution,
                ..
            } => self.with_axes(scale, mode, distribution),
            other => Ok(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn draw(init: &Initializer, shape: &[usize], seed: u64) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        init.fill(shape, &mut rng)
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect()
    }

    fn mean_var(v: &[f64]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        (mean, var)
    }

    /// Mean and variance within `k` standard errors of the expected ones. The standard error of
    /// the sample variance uses the fourth moment `kurtosis * var^2` of the distribution.
    fn assert_moments(v: &[f64], mean: f64, var: f64, kurtosis: f64, what: &str) {
        let n = v.len() as f64;
        let (m, s2) = mean_var(v);
        let k = 5.0;
        let se_mean = (var / n).sqrt();
        let se_var = ((kurtosis - 1.0) * var * var / n).sqrt();
        assert!(
            (m - mean).abs() <= k * se_mean,
            "{what}: mean {m}, expected {mean} (se {se_mean})"
        );
        assert!(
            (s2 - var).abs() <= k * se_var,
            "{what}: variance {s2}, expected {var} (se {se_var})"
        );
    }

    /// Kurtosis (fourth moment over variance squared) of the distributions drawn here.
    const NORMAL_KURTOSIS: f64 = 3.0;
    const UNIFORM_KURTOSIS: f64 = 1.8;
    /// Of a standard normal truncated at +-2: E[z^4] / E[z^2]^2.
    fn truncated_kurtosis() -> f64 {
        // E[z^2] = 1 - 2*2*phi(2)/(2Phi(2)-1), E[z^4] = 3 - (2*2^3 + 3*2*2)*phi(2)/(2Phi(2)-1)
        let phi2 = (-2.0f64).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let mass = 0.954_499_736_103_641_6; // 2 Phi(2) - 1
        let m2 = 1.0 - 4.0 * phi2 / mass;
        let m4 = 3.0 - (2.0 * 8.0 + 3.0 * 2.0 * 2.0) * phi2 / mass;
        m4 / (m2 * m2)
    }

    const N: usize = 200_000;

    #[test]
    fn truncation_constant_is_the_stddev_of_the_truncated_standard_normal() {
        let phi2 = (-2.0f64).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let var = 1.0 - 4.0 * phi2 / 0.954_499_736_103_641_6;
        assert!((var.sqrt() - TRUNCATED_NORMAL_STDDEV).abs() < 1e-12);
    }

    #[test]
    fn fans_follow_keras_compute_fans() {
        assert_eq!(compute_fans(&[], None, None).unwrap(), (1, 1));
        assert_eq!(compute_fans(&[7], None, None).unwrap(), (7, 7));
        // Dense kernel (in, out).
        assert_eq!(compute_fans(&[20, 30], None, None).unwrap(), (20, 30));
        // Conv1D (k, in, out), Conv2D (kh, kw, in, out), Conv3D: times the receptive field.
        assert_eq!(compute_fans(&[3, 4, 8], None, None).unwrap(), (12, 24));
        assert_eq!(compute_fans(&[3, 5, 4, 8], None, None).unwrap(), (60, 120));
        assert_eq!(
            compute_fans(&[2, 3, 5, 4, 8], None, None).unwrap(),
            (120, 240)
        );
        // Explicit axes (both needed; one alone is ignored, as Keras does).
        assert_eq!(
            compute_fans(&[3, 5, 4, 8], Some(&[0, -2]), Some(&[-1])).unwrap(),
            (12, 8)
        );
        assert_eq!(
            compute_fans(&[3, 5, 4, 8], Some(&[0]), None).unwrap(),
            (60, 120)
        );
        assert!(compute_fans(&[3, 5], Some(&[2]), Some(&[0])).is_err());
    }

    #[test]
    fn constants_are_exact() {
        let shape = [3, 4];
        assert!(draw(&Initializer::Zeros, &shape, 0)
            .iter()
            .all(|&v| v == 0.0));
        assert!(draw(&Initializer::Ones, &shape, 0)
            .iter()
            .all(|&v| v == 1.0));
        assert!(draw(&Initializer::Constant(0.25), &shape, 0)
            .iter()
            .all(|&v| v == 0.25));
        let eye = draw(&Initializer::Identity { gain: 2.0 }, &[3, 4], 0);
        for r in 0..3 {
            for c in 0..4 {
                assert_eq!(eye[r * 4 + c], if r == c { 2.0 } else { 0.0 });
            }
        }
        let tall = draw(&Initializer::Identity { gain: 1.0 }, &[4, 2], 0);
        assert_eq!(tall, vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        assert!(Initializer::Identity { gain: 1.0 }
            .fill(&[2, 2, 2], &mut Rng::new(0))
            .is_err());
    }

    #[test]
    fn random_normal_and_uniform_have_their_moments() {
        let normal = Initializer::RandomNormal {
            mean: 0.5,
            stddev: 2.0,
            seed: None,
        };
        assert_moments(&draw(&normal, &[N], 1), 0.5, 4.0, NORMAL_KURTOSIS, "normal");
        let uniform = Initializer::RandomUniform {
            minval: -1.0,
            maxval: 3.0,
            seed: None,
        };
        let u = draw(&uniform, &[N], 2);
        assert!(u.iter().all(|&x| (-1.0..3.0).contains(&x)));
        assert_moments(&u, 1.0, 16.0 / 12.0, UNIFORM_KURTOSIS, "uniform");
        // Keras's default "uniform" (the Embedding default): U(-0.05, 0.05).
        let e = draw(&Initializer::uniform(), &[N], 3);
        assert!(e.iter().all(|&x| (-0.05..0.05).contains(&x)));
        assert_moments(&e, 0.0, 0.01 / 12.0, UNIFORM_KURTOSIS, "keras uniform");
    }

    #[test]
    fn truncated_normal_redraws_beyond_two_stddev() {
        let init = Initializer::TruncatedNormal {
            mean: 1.0,
            stddev: 0.5,
            seed: None,
        };
        let v = draw(&init, &[N], 4);
        assert!(v.iter().all(|&x| (x - 1.0).abs() <= 1.0 + 1e-6));
        let s = 0.5 * TRUNCATED_NORMAL_STDDEV;
        assert_moments(&v, 1.0, s * s, truncated_kurtosis(), "truncated");
        // The draw reaches close to the bound: truncation, not a narrower distribution.
        assert!(v.iter().any(|&x| (x - 1.0).abs() > 0.99));
    }

    #[test]
    fn variance_scaling_presets_match_keras_formulas() {
        // A conv kernel: fan_in = 3*3*16 = 144, fan_out = 3*3*32 = 288.
        let shape = [3, 3, 16, 32];
        let (fi, fo) = (144.0f64, 288.0f64);
        let n: usize = shape.iter().product();
        let reps = N / n + 1;
        let pooled = |init: &Initializer| -> Vec<f64> {
            (0..reps as u64)
                .flat_map(|s| draw(init, &shape, 100 + s))
                .collect()
        };
        let uniform_cases = [
            (
                Initializer::glorot_uniform(),
                (6.0 / (fi + fo)).sqrt(),
                "glorot_uniform",
            ),
            (Initializer::he_uniform(), (6.0 / fi).sqrt(), "he_uniform"),
            (
                Initializer::lecun_uniform(),
                (3.0 / fi).sqrt(),
                "lecun_uniform",
            ),
        ];
        for (init, limit, what) in uniform_cases {
            let v = pooled(&init);
            assert!(
                v.iter().all(|&x| x.abs() <= limit),
                "{what} exceeds {limit}"
            );
            assert!(
                v.iter().any(|&x| x.abs() > 0.99 * limit),
                "{what} too narrow"
            );
            assert_moments(&v, 0.0, limit * limit / 3.0, UNIFORM_KURTOSIS, what);
        }
        let normal_cases = [
            (
                Initializer::glorot_normal(),
                2.0 / (fi + fo),
                "glorot_normal",
            ),
            (Initializer::he_normal(), 2.0 / fi, "he_normal"),
            (Initializer::lecun_normal(), 1.0 / fi, "lecun_normal"),
        ];
        for (init, var, what) in normal_cases {
            let v = pooled(&init);
            // Truncated at 2 stddev of the untruncated draw, i.e. 2 sqrt(var) / 0.8796.
            let bound = 2.0 * var.sqrt() / TRUNCATED_NORMAL_STDDEV;
            assert!(v.iter().all(|&x| x.abs() <= bound * (1.0 + 1e-6)), "{what}");
            assert_moments(&v, 0.0, var, truncated_kurtosis(), what);
        }
        let untruncated = Initializer::VarianceScaling {
            scale: 3.0,
            mode: FanMode::FanOut,
            distribution: Distribution::UntruncatedNormal,
            input_axes: None,
            output_axes: None,
            seed: None,
        };
        assert_moments(
            &pooled(&untruncated),
            0.0,
            3.0 / fo,
            NORMAL_KURTOSIS,
            "untruncated fan_out",
        );
        // Fans below 1 are clamped to 1 (a scalar weight).
        let scalar = draw(&Initializer::he_uniform(), &[], 5);
        assert!(scalar[0].abs() <= 6f64.sqrt());
    }

    #[test]
    fn variance_scaling_reads_explicit_axes() {
        let init = Initializer::from_keras(&json!({
            "class_name": "VarianceScaling",
            "config": {"scale": 1.0, "mode": "fan_in", "distribution": "uniform",
                       "input_axes": [0], "output_axes": [1], "seed": null}
        }))
        .unwrap();
        // fan_in = 4 (axis 0), not 4*5 = 20 as the default rule for a 3-D shape would give.
        let v: Vec<f64> = (0..2000).flat_map(|s| draw(&init, &[4, 5, 6], s)).collect();
        let limit = (3.0f64 / 4.0).sqrt();
        assert!(v.iter().all(|&x| x.abs() <= limit));
        assert!(v.iter().any(|&x| x.abs() > 0.99 * limit));
    }

    fn assert_orthonormal_columns(q: &[f64], rows: usize, cols: usize, gain: f64) {
        for a in 0..cols {
            for b in 0..cols {
                let dot: f64 = (0..rows).map(|i| q[i * cols + a] * q[i * cols + b]).sum();
                let want = if a == b { gain * gain } else { 0.0 };
                assert!((dot - want).abs() < 1e-5, "Q^T Q[{a},{b}] = {dot}");
            }
        }
    }

    #[test]
    fn orthogonal_gives_orthonormal_columns_or_rows() {
        // Tall: orthonormal columns, Q^T Q = I.
        let tall = draw(&Initializer::orthogonal(), &[40, 12], 6);
        assert_orthonormal_columns(&tall, 40, 12, 1.0);
        // Wide (an LSTM recurrent kernel, units x 4 units): orthonormal rows, W W^T = I.
        let (u, g) = (10, 40);
        let wide = draw(&Initializer::orthogonal(), &[u, g], 7);
        let transposed: Vec<f64> = (0..g)
            .flat_map(|c| (0..u).map(move |r| (r, c)))
            .map(|(r, c)| wide[r * g + c])
            .collect();
        assert_orthonormal_columns(&transposed, g, u, 1.0);
        // Rank 4 (a conv kernel) is flattened to (3*3*4, 8); gain scales.
        let gain = Initializer::Orthogonal {
            gain: 2.0,
            seed: None,
        };
        let conv = draw(&gain, &[3, 3, 4, 8], 8);
        assert_orthonormal_columns(&conv, 36, 8, 2.0);
        assert!(Initializer::orthogonal()
            .fill(&[5], &mut Rng::new(0))
            .is_err());
    }

    #[test]
    fn householder_qr_factors_with_sign_fixed_q() {
        let (m, n) = (7, 4);
        let mut rng = Rng::new(9);
        let a: Vec<f64> = (0..m * n).map(|_| rng.normal() as f64).collect();
        let (q, d) = householder_qr(a.clone(), m, n);
        assert_orthonormal_columns(&q, m, n, 1.0);
        // R = Q^T A is upper triangular with the returned diagonal, and Q R = A.
        let mut r = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                r[i * n + j] = (0..m).map(|k| q[k * n + i] * a[k * n + j]).sum();
            }
        }
        for i in 0..n {
            assert!((r[i * n + i] - d[i]).abs() < 1e-9);
            for j in 0..i {
                assert!(r[i * n + j].abs() < 1e-9, "R[{i},{j}] = {}", r[i * n + j]);
            }
        }
        // Orthogonal's sign fix makes R's diagonal positive: the Q of the unique QR.
        let fixed = draw(&Initializer::orthogonal(), &[m, n], 9);
        let mut rng = Rng::new(9);
        let a: Vec<f64> = (0..m * n).map(|_| rng.normal() as f64).collect();
        for i in 0..n {
            let rii: f64 = (0..m).map(|k| fixed[k * n + i] * a[k * n + i]).sum();
            assert!(rii > 0.0, "diag {i} = {rii}");
        }
    }

    #[test]
    fn same_seed_same_draw_and_config_seeds_repeat() {
        let init = Initializer::glorot_uniform();
        assert_eq!(draw(&init, &[30, 20], 11), draw(&init, &[30, 20], 11));
        assert_ne!(draw(&init, &[30, 20], 11), draw(&init, &[30, 20], 12));
        // A seeded initializer ignores the model's stream: the same values every call.
        let seeded = Initializer::from_keras(&json!({
            "class_name": "RandomNormal", "config": {"mean": 0.0, "stddev": 1.0, "seed": 42}
        }))
        .unwrap();
        let mut rng = Rng::new(1);
        let a = seeded.fill(&[10], &mut rng).unwrap();
        let b = seeded.fill(&[10], &mut rng).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, seeded.fill(&[10], &mut Rng::new(99)).unwrap());
    }

    #[test]
    fn parses_serialized_forms_and_names() {
        let keras3 = json!({"module": "keras.initializers", "class_name": "GlorotUniform",
                            "config": {"seed": null}, "registered_name": null});
        assert_eq!(
            Initializer::from_keras(&keras3).unwrap(),
            Initializer::glorot_uniform()
        );
        for (name, want) in [
            ("glorot_uniform", Initializer::glorot_uniform()),
            ("GlorotNormal", Initializer::glorot_normal()),
            ("he_uniform", Initializer::he_uniform()),
            ("he_normal", Initializer::he_normal()),
            ("lecun_uniform", Initializer::lecun_uniform()),
            ("LecunNormal", Initializer::lecun_normal()),
            ("zeros", Initializer::Zeros),
            ("zero", Initializer::Zeros),
            ("Ones", Initializer::Ones),
            ("one", Initializer::Ones),
            ("uniform", Initializer::uniform()),
            ("orthogonal", Initializer::orthogonal()),
            ("identity", Initializer::Identity { gain: 1.0 }),
            ("constant", Initializer::Constant(0.0)),
            (
                "normal",
                Initializer::RandomNormal {
                    mean: 0.0,
                    stddev: 0.05,
                    seed: None,
                },
            ),
            (
                "truncated_normal",
                Initializer::TruncatedNormal {
                    mean: 0.0,
                    stddev: 0.05,
                    seed: None,
                },
            ),
            (
                "variance_scaling",
                Initializer::variance_scaling(1.0, FanMode::FanIn, Distribution::TruncatedNormal),
            ),
        ] {
            assert_eq!(
                Initializer::from_keras(&json!(name)).unwrap(),
                want,
                "{name}"
            );
        }
        // Keras 2 form, no module; old distribution name "normal".
        let keras2 = json!({"class_name": "VarianceScaling",
                            "config": {"scale": 2.0, "mode": "fan_out", "distribution": "normal", "seed": 3}});
        assert_eq!(
            Initializer::from_keras(&keras2).unwrap(),
            Initializer::VarianceScaling {
                scale: 2.0,
                mode: FanMode::FanOut,
                distribution: Distribution::TruncatedNormal,
                input_axes: None,
                output_axes: None,
                seed: Some(3),
            }
        );
        let constant = json!({"class_name": "Constant", "config": {"value": 0.3}});
        assert_eq!(
            Initializer::from_keras(&constant).unwrap(),
            Initializer::Constant(0.3)
        );
        for bad in [
            json!("bogus"),
            json!({"class_name": "STFT", "config": {}}),
            json!({"class_name": "VarianceScaling", "config": {"scale": -1.0}}),
            json!({"class_name": "VarianceScaling", "config": {"mode": "fan_sideways"}}),
            json!({"class_name": "RandomNormal", "config": {"seed": "x"}}),
            json!({"config": {}}),
            json!(3),
        ] {
            assert!(Initializer::from_keras(&bad).is_err(), "{bad}");
        }
    }
}
