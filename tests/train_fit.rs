//! Whole training runs against Keras's `fit` (tests/fixtures/train/fit, made by
//! tools/train_fixtures.py with shuffle=False from the weights saved in each .keras): the
//! per-epoch history (every key of Keras's: loss, each output's loss, the metrics, their
//! val_ twins), the trained weights and the trained model's predictions, each within
//! 1e-4·(1 + |expected|) or a small multiple of the drift Keras shows against itself when its
//! start moves by one ulp, whichever is larger. The same runs on the GPU (`TrainBackend::Gpu`)
//! must meet the same bounds, or be refused up front with one line naming what GPU training
//! lacks; without a GPU adapter that half fails when env `CI` is set.

mod common;

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, Ix2};
use wgnn::npy::{read_npz, NpyArray};
use wgnn::train::compile::Compiled;
use wgnn::train::{fit, Shuffle, TrainBackend, TrainConfig, TrainData, Trainer};
use wgnn::{Backend, Model};

/// How many times Keras's own one-ulp drift a difference may be.
const DRIFT_MULTIPLE: f64 = 4.0;

fn fit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train/fit")
}

fn float(a: &NpyArray) -> ArrayD<f32> {
    match a {
        NpyArray::Float(x) => x.clone(),
        NpyArray::Float64(x) => x.mapv(|v| v as f32),
        NpyArray::Int(x) => x.mapv(|v| v as f32),
    }
}

/// max |got − expected| / (1 + |expected|).
fn rel_max(got: &ArrayD<f32>, expected: &ArrayD<f32>) -> f64 {
    got.iter()
        .zip(expected.iter())
        .map(|(&g, &e)| ((g - e).abs() / (1.0 + e.abs())) as f64)
        .fold(0.0, f64::max)
}

/// How a run on a backend ended: matched Keras (with a note), or refused before training.
enum Outcome {
    Matched(String),
    Refused(String),
}

fn check_case(case: &serde_json::Value, backend: &TrainBackend) -> Result<Outcome, String> {
    let name = case["name"].as_str().ok_or("case without a name")?;
    let dir = fit_dir();
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
    let compiled = Compiled::from_graph(graph, model.source()).map_err(|e| e.to_string())?;
    let config = TrainConfig {
        epochs: case["epochs"].as_u64().ok_or("no epochs")? as usize,
        batch_size: case["batch_size"].as_u64().ok_or("no batch_size")? as usize,
        shuffle: Shuffle::None,
        seed: 0,
        losses: compiled.losses,
        loss_weights: compiled.loss_weights,
        optimizer: compiled
            .optimizer
            .ok_or("no optimizer in the compile config")?,
        metrics: compiled.metrics,
    };
    let data = TrainData {
        inputs: inputs.clone(),
        targets,
    };
    let (train, validation) = match case["validation_split"].as_f64() {
        Some(f) if f > 0.0 => {
            let (t, v) = data.split_validation(f).map_err(|e| e.to_string())?;
            (t, Some(v))
        }
        _ => (data, None),
    };
    let mut trainer = match Trainer::on(graph, config, backend.clone()) {
        Ok(t) => t,
        Err(wgnn::Error::Train(why)) if *backend != TrainBackend::Cpu => {
            return Ok(Outcome::Refused(why))
        }
        Err(e) => return Err(e.to_string()),
    };
    let history = trainer
        .fit(&train, validation.as_ref(), &mut fit::Quiet)
        .map_err(|e| e.to_string())?;

    let drift_loss = get("drift_loss").map(float);
    let mut worst = 0.0f64;
    // Every key of Keras's history (the manifest lists them; the npz holds them as loss,
    // val_loss, m_<key>, val_m_<key>) against wgnn's, and no key of wgnn's that Keras lacks.
    let keras_keys: Vec<&str> = case["history"]
        .as_object()
        .ok_or("no history in the manifest")?
        .keys()
        .map(String::as_str)
        .collect();
    let ours = history.keras_history();
    let our_keys: Vec<&str> = ours.iter().map(|(k, _)| k.as_str()).collect();
    for key in &our_keys {
        if !keras_keys.contains(key) {
            return Err(format!(
                "wgnn logs {key}, Keras's history has only {keras_keys:?}"
            ));
        }
    }
    for key in &keras_keys {
        let npz_key = match *key {
            "loss" | "val_loss" => key.to_string(),
            k => match k.strip_prefix("val_") {
                Some(rest) => format!("val_m_{rest}"),
                None => format!("m_{k}"),
            },
        };
        let want = get(&npz_key)
            .map(float)
            .ok_or(format!("the npz lacks {npz_key} for Keras's {key}"))?;
        let got = &ours
            .iter()
            .find(|(k, _)| k == key)
            .ok_or(format!(
                "Keras's history has {key}, wgnn's only {our_keys:?}"
            ))?
            .1;
        if got.len() != want.len() {
            return Err(format!(
                "{key}: {} epochs logged, Keras {}",
                got.len(),
                want.len()
            ));
        }
        // A loss drifts as the total loss does; a metric is held to 1e-4.
        let is_loss = key.ends_with("loss");
        for (e, (&g, &w)) in got.iter().zip(want.iter()).enumerate() {
            let w = w as f64;
            let drift = drift_loss.as_ref().map_or(0.0, |d| d[e] as f64);
            let mut tol = 1e-4 * (1.0 + w.abs());
            if is_loss {
                tol = tol.max(DRIFT_MULTIPLE * drift);
            }
            let diff = (g - w).abs();
            if is_loss {
                worst = worst.max(diff / tol);
            }
            if diff.is_nan() || diff > tol {
                return Err(format!(
                    "epoch {} {key} {g:.7} vs Keras {w:.7} (|Δ| {diff:.2e}, tolerance {tol:.2e})",
                    e + 1
                ));
            }
        }
    }
    let drift_w = get("drift_w").map(float);
    let params: Vec<_> = trainer.params().iter().collect();
    let mut i = 0;
    while let Some(want) = get(&format!("w{i}")) {
        let want = float(want);
        let (_, p) = params
            .get(i)
            .ok_or(format!("Keras has weight w{i}, wgnn fewer"))?;
        if p.value.shape() != want.shape() {
            return Err(format!(
                "w{i} ({}): shape {:?} vs {:?}",
                p.name,
                p.value.shape(),
                want.shape()
            ));
        }
        let d = rel_max(&p.value, &want);
        let tol = 1e-4f64.max(DRIFT_MULTIPLE * drift_w.as_ref().map_or(0.0, |d| d[i] as f64));
        worst = worst.max(d / tol);
        if d > tol {
            return Err(format!(
                "trained w{i} ({}): {d:.2e} off (tolerance {tol:.2e})",
                p.name
            ));
        }
        i += 1;
    }
    let mut trained = graph.clone();
    trained.params = trainer.params().clone();
    let trained = Model::from_graph(trained, model.source());
    let preds = trained
        .run_all(&inputs, Backend::Cpu)
        .map_err(|e| e.to_string())?;
    let drift_pred = get("drift_pred").map_or(0.0, |d| {
        float(d).iter().copied().fold(0.0f32, f32::max) as f64
    });
    for (k, p) in preds.iter().enumerate() {
        if let Some(want) = get(&format!("pred{k}")) {
            let d = rel_max(p, &float(want));
            let tol = 1e-4f64.max(DRIFT_MULTIPLE * drift_pred);
            worst = worst.max(d / tol);
            if d > tol {
                return Err(format!(
                    "pred{k} of the trained model: {d:.2e} off (tolerance {tol:.2e})"
                ));
            }
        }
    }
    Ok(Outcome::Matched(format!(
        "worst {worst:.1e} of the tolerance"
    )))
}

fn fit_cases() -> Vec<serde_json::Value> {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fit_dir().join("manifest.json")).expect("fit manifest"),
    )
    .expect("manifest JSON");
    let cases = manifest["cases"].as_array().expect("cases").clone();
    assert!(cases.len() >= 10, "only {} fit cases", cases.len());
    cases
}

/// Runs every case on `backend`; returns the names that matched Keras and that were refused.
fn run_all(backend: &TrainBackend) -> (Vec<String>, Vec<String>) {
    let cases = fit_cases();
    let mut failures = Vec::new();
    let (mut matched, mut refused) = (Vec::new(), Vec::new());
    for case in &cases {
        let name = case["name"].as_str().unwrap_or("?").to_string();
        match check_case(case, backend) {
            Ok(Outcome::Matched(note)) => {
                println!("ok      {name}: {note}");
                matched.push(name);
            }
            Ok(Outcome::Refused(why)) => {
                assert!(
                    !why.contains('\n') && why.contains("--backend cpu"),
                    "{name}: a refusal must be one line pointing to the CPU path: {why}"
                );
                println!("refused {name}: {why}");
                refused.push(name);
            }
            Err(why) => {
                println!("FAIL    {name}: {why}");
                failures.push(format!("{name}: {why}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} runs differ from Keras on {backend:?}:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    (matched, refused)
}

#[test]
fn training_runs_track_keras_fit() {
    let (matched, refused) = run_all(&TrainBackend::Cpu);
    assert!(refused.is_empty(), "the CPU refused {refused:?}");
    assert!(!matched.is_empty());
}

#[test]
fn gpu_training_runs_track_keras_fit_or_are_refused() {
    match wgnn::gpu::train::probe_adapter() {
        Ok(()) => {}
        Err(e) if common::no_adapter_outside_ci(&e) => return,
        Err(e) => panic!("{e}"),
    }
    let (matched, refused) = run_all(&TrainBackend::Gpu { adapter: None });
    println!(
        "{} runs match Keras on the GPU, {} refused",
        matched.len(),
        refused.len()
    );
    // The families GPU training supports must not regress into refusals.
    for must in ["cnn_adam_scce_l2", "mlp_mse_adamw", "mlp_mse_sgd_clipnorm"] {
        assert!(
            matched.iter().any(|n| n == must),
            "{must} did not run on the GPU"
        );
    }
}
