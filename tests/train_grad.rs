//! Gradients against real Keras: every case of tests/fixtures/train/grad (made by
//! tools/train_fixtures.py with tf.GradientTape inside a tf.function, as Keras's train_step
//! computes them) — the loss, the gradient of every trainable weight and of every float input
//! at relative L2 error ≤ 1e-4 per tensor, the training-mode outputs and the updated moving
//! statistics within 1e-4·(1 + |expected|).

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, Ix2};
use wgnn::npy::{read_npz, NpyArray};
use wgnn::train::{Loss, Rng, TrainGraph};
use wgnn::Model;

fn grad_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train/grad")
}

fn rel_l2(got: &ArrayD<f32>, expected: &ArrayD<f32>) -> f64 {
    let mut diff = 0.0f64;
    let mut norm = 0.0f64;
    for (&g, &e) in got.iter().zip(expected.iter()) {
        diff += (g as f64 - e as f64).powi(2);
        norm += (e as f64).powi(2);
    }
    diff.sqrt() / norm.sqrt().max(1e-6)
}

fn max_excess(got: &ArrayD<f32>, expected: &ArrayD<f32>) -> f32 {
    got.iter()
        .zip(expected.iter())
        .map(|(&g, &e)| (g - e).abs() / (1e-4 * (1.0 + e.abs())))
        .fold(0.0, f32::max)
}

fn float(a: &NpyArray) -> ArrayD<f32> {
    match a {
        NpyArray::Float(x) => x.clone(),
        NpyArray::Float64(x) => x.mapv(|v| v as f32),
        NpyArray::Int(x) => x.mapv(|v| v as f32),
    }
}

/// Runs one case; Err(why) names the first tensor off.
fn check_case(name: &str) -> Result<String, String> {
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
    let tg = TrainGraph::with_input_gradients(graph).map_err(|e| e.to_string())?;
    let (result, state, dxs) = tg
        .compute_with_inputs(&inputs, &targets, &losses, &loss_weights, &mut Rng::new(0))
        .map_err(|e| e.to_string())?;

    let expected_loss = *float(get("loss").ok_or("no loss")?)
        .iter()
        .next()
        .ok_or("empty loss")?;
    let loss_err = (result.loss as f32 - expected_loss).abs();
    if loss_err > 1e-4 * (1.0 + expected_loss.abs()) {
        return Err(format!("loss {} vs Keras {expected_loss}", result.loss));
    }
    let mut worst = 0.0f64;
    let trainable: Vec<_> = graph
        .params
        .iter()
        .filter(|(_, p)| p.trainable)
        .map(|(id, p)| (id, p.name.clone()))
        .collect();
    let mut k = 0;
    while let Some(expected) = get(&format!("g{k}")) {
        let expected = float(expected);
        let (id, pname) = trainable.get(k).ok_or(format!(
            "Keras has gradient g{k}, wgnn only {} trainable weights",
            trainable.len()
        ))?;
        let got = result
            .grads
            .get(*id)
            .cloned()
            .unwrap_or_else(|| ArrayD::zeros(expected.raw_dim()));
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
    for (i, dx) in dxs.iter().enumerate() {
        if let Some(expected) = get(&format!("dx{i}")) {
            let expected = float(expected);
            let got = dx
                .clone()
                .unwrap_or_else(|| ArrayD::zeros(expected.raw_dim()));
            let e = rel_l2(&got, &expected);
            worst = worst.max(e);
            if e > 1e-4 {
                return Err(format!("dx{i}: relative L2 error {e:.2e}"));
            }
        }
    }
    for (i, out) in result.outputs.iter().enumerate() {
        if let Some(expected) = get(&format!("out{i}")) {
            let x = max_excess(out, &float(expected));
            if x > 1.0 {
                return Err(format!("out{i}: {x:.1}x the tolerance"));
            }
        }
    }
    // Moving statistics after the training-mode call, in non-trainable order.
    let non_trainable: Vec<_> = graph.params.iter().filter(|(_, p)| !p.trainable).collect();
    let mut s = 0;
    while let Some(expected) = get(&format!("state{s}")) {
        let expected = float(expected);
        let (id, p) = non_trainable.get(s).ok_or(format!(
            "Keras has state{s}, wgnn fewer non-trainable weights"
        ))?;
        let got = state
            .iter()
            .find(|(sid, _)| sid == id)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| p.value.clone());
        let x = max_excess(&got, &expected);
        if x > 1.0 {
            return Err(format!("state{s} ({}): {x:.1}x the tolerance", p.name));
        }
        s += 1;
    }
    Ok(format!("worst relative L2 {worst:.1e}"))
}

#[test]
fn gradients_match_keras_for_every_fixture() {
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
    let mut failures = Vec::new();
    for name in &names {
        match check_case(name) {
            Ok(note) => println!("ok   {name}: {note}"),
            Err(why) => {
                println!("FAIL {name}: {why}");
                failures.push(format!("{name}: {why}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from Keras:\n{}",
        failures.len(),
        names.len(),
        failures.join("\n")
    );
}
