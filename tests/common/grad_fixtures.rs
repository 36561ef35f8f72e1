//! The gradient fixtures of tests/fixtures/train/grad (made by tools/train_fixtures.py with
//! tf.GradientTape inside a tf.function, as Keras's train_step computes them): each case's
//! model, inputs, targets, losses and Keras's loss and gradients, and the comparisons the CPU
//! and GPU gradient tests share.

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, Ix2};
use wgnn::npy::{read_npz, NpyArray};
use wgnn::train::Loss;
use wgnn::{Model, PreparedInput};

pub fn grad_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train/grad")
}

/// Every case name, sorted.
pub fn case_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(grad_dir())
        .expect("tests/fixtures/train/grad")
        .filter_map(|e| {
            let p = e.ok()?.path();
            if p.extension()? != "npz" {
                return None;
            }
            Some(p.file_stem()?.to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    assert!(names.len() > 50, "only {} gradient fixtures", names.len());
    names
}

pub struct GradCase {
    pub model: Model,
    pub inputs: Vec<PreparedInput>,
    pub targets: Vec<ArrayD<f32>>,
    pub losses: Vec<Loss>,
    pub loss_weights: Vec<f32>,
    arrays: Vec<(String, NpyArray)>,
}

pub fn rel_l2(got: &ArrayD<f32>, expected: &ArrayD<f32>) -> f64 {
    let mut diff = 0.0f64;
    let mut norm = 0.0f64;
    for (&g, &e) in got.iter().zip(expected.iter()) {
        diff += (g as f64 - e as f64).powi(2);
        norm += (e as f64).powi(2);
    }
    diff.sqrt() / norm.sqrt().max(1e-6)
}

pub fn max_excess(got: &ArrayD<f32>, expected: &ArrayD<f32>) -> f32 {
    got.iter()
        .zip(expected.iter())
        .map(|(&g, &e)| (g - e).abs() / (1e-4 * (1.0 + e.abs())))
        .fold(0.0, f32::max)
}

pub fn float(a: &NpyArray) -> ArrayD<f32> {
    match a {
        NpyArray::Float(x) => x.clone(),
        NpyArray::Float64(x) => x.mapv(|v| v as f32),
        NpyArray::Int(x) => x.mapv(|v| v as f32),
    }
}

impl GradCase {
    pub fn load(name: &str) -> Result<GradCase, String> {
        let dir = grad_dir();
        let model = Model::load(dir.join(format!("{name}.keras"))).map_err(|e| e.to_string())?;
        let arrays = read_npz(&dir.join(format!("{name}.npz"))).map_err(|e| e.to_string())?;
        let get = |key: &str| arrays.iter().find(|(k, _)| k == key).map(|(_, a)| a);
        let graph = model.graph();
        let mut inputs = Vec::new();
        for i in 0..graph.inputs.len() {
            let a = get(&format!("x{i}")).ok_or(format!("no x{i}"))?;
            inputs.push(match a {
                NpyArray::Int(ids) => {
                    let ids = ids
                        .clone()
                        .into_dimensionality::<Ix2>()
                        .map_err(|e| e.to_string())?;
                    model
                        .prepare_ids_for(i, ids.view())
                        .map_err(|e| e.to_string())?
                }
                other => model
                    .prepare_input(i, float(other).view())
                    .map_err(|e| e.to_string())?,
            });
        }
        let targets: Vec<ArrayD<f32>> = (0..graph.outputs.len())
            .map(|i| get(&format!("y{i}")).map(float).ok_or(format!("no y{i}")))
            .collect::<Result<_, _>>()?;
        let compile = graph
            .compile_config
            .as_ref()
            .ok_or("the .keras file has no compile_config")?;
        let losses: Vec<Loss> = match &compile["loss"] {
            serde_json::Value::Array(list) => list
                .iter()
                .map(Loss::from_keras)
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?,
            one => vec![Loss::from_keras(one).map_err(|e| e.to_string())?; graph.outputs.len()],
        };
        let loss_weights: Vec<f32> = compile["loss_weights"]
            .as_array()
            .map(|ws| {
                ws.iter()
                    .map(|w| w.as_f64().unwrap_or(1.0) as f32)
                    .collect()
            })
            .unwrap_or_default();
        Ok(GradCase {
            model,
            inputs,
            targets,
            losses,
            loss_weights,
            arrays,
        })
    }

    /// The fixture's array `key` (x0, y0, loss, g0, dx0, out0, state0, ...).
    pub fn get(&self, key: &str) -> Option<ArrayD<f32>> {
        self.arrays
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, a)| float(a))
    }

    /// The total loss against Keras's, within 1e-4·(1 + |keras|).
    pub fn check_loss(&self, loss: f64) -> Result<(), String> {
        let expected = *self
            .get("loss")
            .ok_or("no loss")?
            .iter()
            .next()
            .ok_or("empty loss")?;
        if (loss as f32 - expected).abs() > 1e-4 * (1.0 + expected.abs()) {
            return Err(format!("loss {loss} vs Keras {expected}"));
        }
        Ok(())
    }

    /// Keras's gradient g{k} of every trainable weight (in the graph's trainable order)
    /// against `grad(id)`, at relative L2 error ≤ 1e-4 per tensor (a missing gradient counts
    /// as zeros). Returns the worst error.
    pub fn check_param_grads(
        &self,
        grad: impl Fn(wgnn::graph::ParamId) -> Option<ArrayD<f32>>,
    ) -> Result<f64, String> {
        let graph = self.model.graph();
        let trainable: Vec<_> = graph
            .params
            .iter()
            .filter(|(_, p)| p.trainable)
            .map(|(id, p)| (id, p.name.clone()))
            .collect();
        let mut worst = 0.0f64;
        let mut k = 0;
        while let Some(expected) = self.get(&format!("g{k}")) {
            let (id, pname) = trainable.get(k).ok_or(format!(
                "Keras has gradient g{k}, wgnn only {} trainable weights",
                trainable.len()
            ))?;
            let got = grad(*id).unwrap_or_else(|| ArrayD::zeros(expected.raw_dim()));
            if got.shape() != expected.shape() {
                return Err(format!(
                    "g{k} ({pname}): shape {:?} vs Keras {:?}",
                    got.shape(),
                    expected.shape()
                ));
            }
            let e = rel_l2(&got, &expected);
            worst = worst.max(e);
            if e > 1e-4 {
                return Err(format!("g{k} ({pname}): relative L2 error {e:.2e}"));
            }
            k += 1;
        }
        if k != trainable.len() {
            return Err(format!(
                "Keras has {k} gradients, wgnn {} trainable weights",
                trainable.len()
            ));
        }
        Ok(worst)
    }
}
