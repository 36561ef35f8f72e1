//! `wgnn train` from the command line: a run that tracks Keras and saves a model wgnn loads
//! back, and bad input — labels out of range or of the wrong shape, a loss that does not fit
//! the output, an unknown optimizer, no loss at all, a NaN — as one-line errors naming the
//! problem, never leaving a half-written model.

use std::path::{Path, PathBuf};
use std::process::Command;

use ndarray::ArrayD;
use wgnn::npy::{read_npz, NpyArray};
use wgnn::{Backend, Model};

fn wgnn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wgnn"))
}

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

/// The fixture's x0 and y0 written as .npy files in `dir`; returns (x, y, the fixture arrays).
fn write_xy(case: &str, dir: &Path) -> (PathBuf, PathBuf, Vec<(String, NpyArray)>) {
    let arrays = read_npz(&fit_dir().join(format!("{case}.npz"))).expect("fixture npz");
    let get = |k: &str| float(&arrays.iter().find(|(n, _)| n == k).expect(k).1);
    let x = dir.join("x.npy");
    let y = dir.join("y.npy");
    wgnn::npy::write_f32(&x, &get("x0")).unwrap();
    wgnn::npy::write_f32(&y, &get("y0")).unwrap();
    (x, y, arrays)
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = wgnn().args(args).output().expect("run wgnn");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether a GPU run's stderr says no adapter was found: a failure under CI, a note otherwise.
fn no_gpu_outside_ci(stderr: &str) -> bool {
    if !stderr.contains("no GPU adapter found") {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but there is no GPU adapter: {stderr}"
    );
    eprintln!("note: no GPU adapter; skipping outside CI");
    true
}

fn one_error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0]
}

#[test]
fn a_run_tracks_keras_and_saves_a_model_wgnn_loads_back() {
    let case = "cnn_adam_scce_l2";
    let tmp = tempfile::tempdir().unwrap();
    let (x, y, arrays) = write_xy(case, tmp.path());
    let model = fit_dir().join(format!("{case}.keras"));
    let out = tmp.path().join("out.keras");
    let plot = tmp.path().join("curves.png");
    let (ok, stdout, stderr) = run(&[
        "train",
        model.to_str().unwrap(),
        "--x",
        x.to_str().unwrap(),
        "--y",
        y.to_str().unwrap(),
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--no-shuffle",
        "--backend",
        "cpu",
        "-o",
        out.to_str().unwrap(),
        "--json",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let last = stdout.lines().last().expect("a JSON line");
    let report: serde_json::Value = serde_json::from_str(last).expect("JSON");
    let losses = epoch_losses(&report);
    let keras = float(&arrays.iter().find(|(n, _)| n == "loss").unwrap().1);
    assert_eq!(losses.len(), 3);
    for (got, want) in losses.iter().zip(keras.iter()) {
        let want = *want as f64;
        assert!(
            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
            "loss {got} vs Keras {want}"
        );
    }
    assert!(report["history"]["accuracy"].as_array().is_some(), "{last}");
    assert_eq!(report["steps"], 15);
    assert!(report["items_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(report["backend"], "cpu");
    // The saved model predicts what Keras's trained model predicts.
    let trained = Model::load(&out).expect("the saved model loads");
    let x0 = float(&arrays.iter().find(|(n, _)| n == "x0").unwrap().1);
    let pred = trained.predict(x0.view(), Backend::Cpu).unwrap();
    let want = float(&arrays.iter().find(|(n, _)| n == "pred0").unwrap().1);
    for (p, w) in pred.iter().zip(want.iter()) {
        assert!((p - w).abs() <= 1e-4 * (1.0 + w.abs()), "{p} vs {w}");
    }
    let png = std::fs::read(&plot).expect("the plot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
}

#[test]
fn bad_labels_and_losses_are_one_line_errors() {
    let case = "cnn_adam_scce_l2";
    let tmp = tempfile::tempdir().unwrap();
    let (x, _, arrays) = write_xy(case, tmp.path());
    let model = fit_dir().join(format!("{case}.keras"));
    let model = model.to_str().unwrap();
    let out = tmp.path().join("out.keras");
    let y0 = float(&arrays.iter().find(|(n, _)| n == "y0").unwrap().1);
    let n = y0.len();
    let bad = |name: &str, y: ArrayD<f32>| {
        let p = tmp.path().join(name);
        wgnn::npy::write_f32(&p, &y).unwrap();
        p
    };
    let mut out_of_range = y0.clone();
    out_of_range[[5]] = 7.0;
    let out_of_range = bad("range.npy", out_of_range);
    let short = bad(
        "short.npy",
        y0.slice(ndarray::s![..n - 3]).to_owned().into_dyn(),
    );
    let base = |y: &Path| -> Vec<String> {
        [
            "train",
            model,
            "--x",
            x.to_str().unwrap(),
            "--y",
            y.to_str().unwrap(),
            "--epochs",
            "1",
            "--no-shuffle",
            "-o",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (base(&out_of_range), "label 7 is not a class index in 0..3"),
        (base(&short), "rows"),
        (
            [
                base(&y_path(tmp.path(), &y0)),
                vec!["--loss".into(), "categorical_crossentropy".into()],
            ]
            .concat(),
            "sparse_categorical_crossentropy",
        ),
        (
            [
                base(&y_path(tmp.path(), &y0)),
                vec!["--optimizer".into(), "adamax2".into()],
            ]
            .concat(),
            "unknown optimizer 'adamax2'",
        ),
        (
            [
                base(&y_path(tmp.path(), &y0)),
                vec!["--loss".into(), "hinge".into()],
            ]
            .concat(),
            "unknown loss 'hinge'",
        ),
    ];
    for (args, words) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, stderr) = run(&args);
        assert!(!ok, "{args:?} succeeded");
        let line = one_error_line(&stderr);
        assert!(
            line.contains(words),
            "{args:?}: expected '{words}' in: {line}"
        );
        assert!(!out.exists(), "a failed run wrote {}", out.display());
    }
}

fn y_path(dir: &Path, y: &ArrayD<f32>) -> PathBuf {
    let p = dir.join("y_ok.npy");
    wgnn::npy::write_f32(&p, y).unwrap();
    p
}

#[test]
fn a_model_without_a_loss_asks_for_one() {
    // The shipped models carry an empty compile config.
    let tmp = tempfile::tempdir().unwrap();
    let x = tmp.path().join("x.npy");
    let y = tmp.path().join("y.npy");
    wgnn::npy::write_f32(&x, &ArrayD::zeros(ndarray::IxDyn(&[4, 32, 32, 3]))).unwrap();
    wgnn::npy::write_f32(&y, &ArrayD::zeros(ndarray::IxDyn(&[4]))).unwrap();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cifar10_base.keras");
    let out = tmp.path().join("out.keras");
    let (ok, _, stderr) = run(&[
        "train",
        model.to_str().unwrap(),
        "--x",
        x.to_str().unwrap(),
        "--y",
        y.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(one_error_line(&stderr).contains("pass --loss"), "{stderr}");
}

#[test]
fn a_nan_stops_naming_the_step_and_keeps_the_last_good_model() {
    let case = "mlp_mse_rmsprop";
    let tmp = tempfile::tempdir().unwrap();
    let (x, y, _) = write_xy(case, tmp.path());
    let model = fit_dir().join(format!("{case}.keras"));
    let out = tmp.path().join("out.keras");
    // A good model already sits at the output path: a failed run must leave it as it is.
    std::fs::copy(&model, &out).unwrap();
    let before = std::fs::read(&out).unwrap();
    let (ok, _, stderr) = run(&[
        "train",
        model.to_str().unwrap(),
        "--x",
        x.to_str().unwrap(),
        "--y",
        y.to_str().unwrap(),
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--no-shuffle",
        "--optimizer",
        "sgd",
        "--learning-rate",
        "1e30",
        "--checkpoint-every",
        "1",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!ok, "a diverging run succeeded");
    let line = one_error_line(&stderr);
    assert!(line.contains("at epoch 1 step"), "{line}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        before,
        "the last good model was touched"
    );
}

/// The fixture's .keras copied to `dest` without `model.weights.h5`; returns its config.json.
fn keras_without_weights(case: &str, dest: &Path) -> serde_json::Value {
    use std::io::{Read, Write};
    let src = std::fs::File::open(fit_dir().join(format!("{case}.keras"))).unwrap();
    let mut zin = zip::ZipArchive::new(src).unwrap();
    let mut zout = zip::ZipWriter::new(std::fs::File::create(dest).unwrap());
    let mut config = None;
    for i in 0..zin.len() {
        let mut entry = zin.by_index(i).unwrap();
        let name = entry.name().unwrap().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        if name == "config.json" {
            config = Some(serde_json::from_slice(&bytes).unwrap());
        }
        if name == "model.weights.h5" {
            continue;
        }
        zout.start_file(name.as_str(), zip::write::SimpleFileOptions::default())
            .unwrap();
        zout.write_all(&bytes).unwrap();
    }
    zout.finish().unwrap();
    config.expect("config.json in the fixture")
}

/// `wgnn train` with `extra` arguments; returns the --json history's loss per epoch.
fn train_losses(model: &Path, x: &Path, y: &Path, out: &Path, extra: &[&str]) -> Vec<f64> {
    let mut args = vec![
        "train",
        model.to_str().unwrap(),
        "--x",
        x.to_str().unwrap(),
        "--y",
        y.to_str().unwrap(),
        "--epochs",
        "6",
        "--batch-size",
        "16",
        "-o",
        out.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = run(&args);
    assert!(ok, "{args:?}: {stderr}");
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a JSON line")).expect("JSON");
    epoch_losses(&report)
}

/// A `wgnn train --json` report's per-epoch losses.
fn epoch_losses(report: &serde_json::Value) -> Vec<f64> {
    report["history"]["loss"]
        .as_array()
        .expect("history.loss")
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn assert_learns(what: &str, losses: &[f64]) {
    assert!(
        losses.iter().all(|l| l.is_finite()) && losses.last() < losses.first(),
        "{what}: the loss did not go down: {losses:?}"
    );
}

#[test]
fn a_keras_file_without_weights_is_initialized_from_the_seed() {
    let case = "mlp_mse_rmsprop";
    let tmp = tempfile::tempdir().unwrap();
    let (x, y, arrays) = write_xy(case, tmp.path());
    let bare = tmp.path().join("bare.keras");
    keras_without_weights(case, &bare);
    let out = tmp.path().join("out.keras");
    // Model::load alone refuses it: there is nothing to start from but the config.
    assert!(Model::load(&bare).is_err());
    let a = train_losses(&bare, &x, &y, &out, &["--seed", "3"]);
    assert_learns("bare .keras", &a);
    assert!(Model::load(&out).is_ok(), "the trained model does not load");
    let b = train_losses(&bare, &x, &y, &out, &["--seed", "3"]);
    assert_eq!(a, b, "the same seed gave another run");
    let c = train_losses(&bare, &x, &y, &out, &["--seed", "4"]);
    assert_ne!(a[0], c[0], "--seed does not seed the initializers");
    // The .keras with its weights still starts from them (its first epoch is Keras's).
    let with_weights = fit_dir().join(format!("{case}.keras"));
    let w = train_losses(
        &with_weights,
        &x,
        &y,
        &out,
        &["--seed", "3", "--no-shuffle"],
    );
    let w2 = train_losses(
        &with_weights,
        &x,
        &y,
        &out,
        &["--seed", "4", "--no-shuffle"],
    );
    assert_eq!(
        w, w2,
        "a .keras with weights depends on --seed without a shuffle"
    );
    let keras = float(&arrays.iter().find(|(n, _)| n == "loss").unwrap().1)[0] as f64;
    assert!(
        (w[0] - keras).abs() <= 1e-4 * (1.0 + keras.abs()),
        "a .keras with weights: first epoch's loss {} vs Keras's {keras}",
        w[0]
    );
}

#[test]
fn a_model_json_without_weights_is_initialized_from_the_seed() {
    let case = "mlp_mse_rmsprop";
    let tmp = tempfile::tempdir().unwrap();
    let (x, y, _) = write_xy(case, tmp.path());
    let mut config = keras_without_weights(case, &tmp.path().join("bare.keras"));
    // As `model.to_json()` writes it: no compile config, so the loss and optimizer are given.
    config.as_object_mut().unwrap().remove("compile_config");
    let json = tmp.path().join("model.json");
    std::fs::write(&json, serde_json::to_string(&config).unwrap()).unwrap();
    let out = tmp.path().join("out.keras");
    let extra = [
        "--loss",
        "mean_squared_error",
        "--optimizer",
        "adam",
        "--learning-rate",
        "0.01",
        "--seed",
        "7",
    ];
    let a = train_losses(&json, &x, &y, &out, &extra);
    assert_learns("model JSON", &a);
    let trained = Model::load(&out).expect("the trained model loads");
    assert_eq!(trained.graph().outputs.len(), 1);
    let b = train_losses(&json, &x, &y, &out, &extra);
    assert_eq!(a, b, "the same seed gave another run");
    let mut other = extra;
    other[7] = "8";
    let c = train_losses(&json, &x, &y, &out, &other);
    assert_ne!(a[0], c[0], "--seed does not seed the initializers");
}

/// `wgnn train MODEL --x X --y Y -o OUT extra...` must fail with one `error:` line holding
/// `words`, exit status 1 (2 for a usage error: a bad command-line value), and leave no OUT
/// behind.
fn assert_refused(model: &Path, x: &Path, y: &Path, extra: &[&str], words: &str) {
    assert_refused_with(1, model, x, y, extra, words)
}

fn assert_refused_with(code: i32, model: &Path, x: &Path, y: &Path, extra: &[&str], words: &str) {
    let out = x.with_file_name("refused.keras");
    let mut args = vec![
        "train",
        model.to_str().unwrap(),
        "--x",
        x.to_str().unwrap(),
        "--y",
        y.to_str().unwrap(),
        "--epochs",
        "2",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let done = wgnn().args(&args).output().expect("run wgnn");
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(code), "{args:?}: {stderr}");
    let line = one_error_line(&stderr);
    assert!(
        line.contains(words),
        "{args:?}: expected '{words}' in: {line}"
    );
    assert!(!out.exists(), "a failed run wrote {}", out.display());
}

#[test]
fn labels_losses_layers_and_data_that_do_not_fit_are_one_line_errors() {
    let case = "cnn_adam_scce_l2"; // Dense(3, softmax), sparse CE
    let tmp = tempfile::tempdir().unwrap();
    let (x, y, arrays) = write_xy(case, tmp.path());
    let model = fit_dir().join(format!("{case}.keras"));
    let y0 = float(&arrays.iter().find(|(n, _)| n == "y0").unwrap().1);
    let x0 = float(&arrays.iter().find(|(n, _)| n == "x0").unwrap().1);
    let write = |name: &str, a: &ArrayD<f32>| {
        let p = tmp.path().join(name);
        wgnn::npy::write_f32(&p, a).unwrap();
        p
    };
    // Labels of the wrong shape: two per row for sparse CE, or one-hot targets for it.
    let two = ndarray::stack(ndarray::Axis(1), &[y0.view(), y0.view()]).unwrap();
    let two = write("two.npy", &two.into_dyn());
    assert_refused(&model, &x, &two, &[], "labels of shape");
    let onehot = ArrayD::from_shape_fn(ndarray::IxDyn(&[y0.len(), 3]), |i| {
        (y0[[i[0]]] as usize == i[1]) as u8 as f32
    });
    let onehot = write("onehot.npy", &onehot);
    assert_refused(&model, &x, &onehot, &[], "sparse_categorical_crossentropy");
    // A loss that does not fit: binary or categorical CE on integer labels of a 3-way softmax
    // (Keras refuses both: target and output shapes differ).
    for loss in ["binary_crossentropy", "categorical_crossentropy"] {
        assert_refused(
            &model,
            &x,
            &y,
            &["--loss", loss],
            "do not match the output's",
        );
    }
    assert_refused_with(
        2,
        &model,
        &x,
        &y,
        &["--optimizer", "nadam2"],
        "unknown optimizer 'nadam2'",
    );
    // A NaN in the inputs is named with its file and row.
    let mut bad = x0.clone();
    bad[[5, 1, 2, 0]] = f32::NAN;
    let bad = write("x_nan.npy", &bad);
    assert_refused(&model, &bad, &y, &[], "x_nan.npy: input value NaN (row 5)");
    // A layer with no backward, named.
    let (mx, my, _) = write_xy("mlp_mse_rmsprop", tmp.path());
    let json = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/train/no_backward_bn_renorm.json");
    assert_refused(
        &json,
        &mx,
        &my,
        &["--loss", "mse", "--optimizer", "sgd"],
        "layer 'bn' (BatchNormalization): BatchNormalization with renorm=True has no backward",
    );
}

#[test]
fn a_loss_that_blows_up_mid_training_keeps_the_last_checkpoint() {
    let case = "mlp_mse_rmsprop";
    let tmp = tempfile::tempdir().unwrap();
    let (x, y, _) = write_xy(case, tmp.path());
    let model = fit_dir().join(format!("{case}.keras"));
    let out = tmp.path().join("out.keras");
    // SGD just past its edge of stability: the loss overflows in the second epoch, after
    // epoch 1's checkpoint.
    let (ok, _, stderr) = run(&[
        "train",
        model.to_str().unwrap(),
        "--x",
        x.to_str().unwrap(),
        "--y",
        y.to_str().unwrap(),
        "--epochs",
        "30",
        "--batch-size",
        "8",
        "--no-shuffle",
        "--optimizer",
        "sgd",
        "--learning-rate",
        "0.93",
        "--checkpoint-every",
        "1",
        "--json",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!ok, "the run did not blow up");
    let line = one_error_line(&stderr);
    let epoch: usize = line
        .split("at epoch ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("no epoch named in: {line}"));
    assert!(line.contains(" step "), "{line}");
    assert!(
        epoch >= 2,
        "it blew up in epoch {epoch}, before any checkpoint: {line}"
    );
    let saved = Model::load(&out).expect("the last checkpoint loads");
    let x0 = wgnn::npy::read(&x).unwrap();
    let pred = saved
        .predict(float(&x0).view(), Backend::Cpu)
        .expect("the checkpoint predicts");
    assert!(
        pred.iter().all(|v| v.is_finite()),
        "the checkpoint is not the last good model"
    );
}

/// `wgnn train --json` with `extra`; returns (success, the report or the stderr).
fn train_json(
    model: &Path,
    x: &Path,
    y: &Path,
    out: &Path,
    extra: &[&str],
) -> Result<serde_json::Value, String> {
    let mut args = vec![
        "train",
        model.to_str().unwrap(),
        "--x",
        x.to_str().unwrap(),
        "--y",
        y.to_str().unwrap(),
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--no-shuffle",
        "-o",
        out.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = run(&args);
    if !ok {
        return Err(stderr);
    }
    Ok(serde_json::from_str(stdout.lines().last().expect("a JSON line")).expect("JSON"))
}

#[test]
fn gpu_training_from_the_command_line_tracks_the_cpu() {
    let case = "cnn_adam_scce_l2";
    let tmp = tempfile::tempdir().unwrap();
    let (x, y, _) = write_xy(case, tmp.path());
    let model = fit_dir().join(format!("{case}.keras"));
    let cpu = train_json(
        &model,
        &x,
        &y,
        &tmp.path().join("cpu.keras"),
        &["--backend", "cpu"],
    )
    .expect("the CPU run");
    let gpu = match train_json(
        &model,
        &x,
        &y,
        &tmp.path().join("gpu.keras"),
        &["--backend", "gpu"],
    ) {
        Ok(r) => r,
        Err(stderr) if no_gpu_outside_ci(&stderr) => {
            return;
        }
        Err(stderr) => panic!("the GPU run failed: {stderr}"),
    };
    assert_eq!(gpu["backend"], "gpu", "{gpu}");
    let (c, g) = (epoch_losses(&cpu), epoch_losses(&gpu));
    assert_eq!(c.len(), 3);
    for (e, (g, c)) in g.iter().zip(&c).enumerate() {
        assert!(
            (g - c).abs() <= 1e-4 * c.abs(),
            "epoch {e}: gpu {g} vs cpu {c}"
        );
    }
    // The GPU-trained file predicts what the CPU-trained one does.
    let a = Model::load(tmp.path().join("cpu.keras")).unwrap();
    let b = Model::load(tmp.path().join("gpu.keras")).unwrap();
    let arrays = read_npz(&fit_dir().join(format!("{case}.npz"))).unwrap();
    let x0 = float(&arrays.iter().find(|(n, _)| n == "x0").unwrap().1);
    let pa = a.predict(x0.view(), Backend::Cpu).unwrap();
    let pb = b.predict(x0.view(), Backend::Cpu).unwrap();
    for (p, q) in pb.iter().zip(pa.iter()) {
        assert!((p - q).abs() <= 1e-4 * (1.0 + q.abs()), "{p} vs {q}");
    }
    // A recurrent layer with its own training forward (ConvLSTM2D) trains on the GPU from
    // the command line as on the CPU.
    let grad_dir = fit_dir().join("../grad");
    let arrays = read_npz(&grad_dir.join("convlstm2d_last.npz")).expect("fixture npz");
    let get = |k: &str| float(&arrays.iter().find(|(n, _)| n == k).expect(k).1);
    let (x, y) = (tmp.path().join("cl_x.npy"), tmp.path().join("cl_y.npy"));
    wgnn::npy::write_f32(&x, &get("x0")).unwrap();
    wgnn::npy::write_f32(&y, &get("y0")).unwrap();
    let model = grad_dir.join("convlstm2d_last.keras");
    let run_on = |backend: &str| {
        let out = tmp.path().join(format!("convlstm2d_last_{backend}.keras"));
        let report = train_json(&model, &x, &y, &out, &["--backend", backend])
            .unwrap_or_else(|e| panic!("ConvLSTM2D on {backend}: {e}"));
        assert!(out.exists(), "ConvLSTM2D on {backend} wrote no output");
        report
    };
    let (cpu, gpu) = (run_on("cpu"), run_on("gpu"));
    assert_eq!(gpu["backend"], "gpu", "{gpu}");
    let (lc, lg) = (epoch_losses(&cpu), epoch_losses(&gpu));
    assert_eq!(lc.len(), lg.len());
    for (e, (g, c)) in lg.iter().zip(&lc).enumerate() {
        assert!(
            (g - c).abs() <= 1e-4 * c.abs(),
            "ConvLSTM2D epoch {e}: gpu {g} vs cpu {c}"
        );
    }
}

/// `wgnn train` of the blow-up run above with `--backend` `backend`: (success, stderr).
fn blow_up(backend: &str, model: &Path, x: &Path, y: &Path, out: &Path) -> (bool, String) {
    let (ok, _, stderr) = run(&[
        "train",
        model.to_str().unwrap(),
        "--x",
        x.to_str().unwrap(),
        "--y",
        y.to_str().unwrap(),
        "--epochs",
        "30",
        "--batch-size",
        "8",
        "--no-shuffle",
        "--optimizer",
        "sgd",
        "--learning-rate",
        "0.93",
        "--checkpoint-every",
        "1",
        "--backend",
        backend,
        "-o",
        out.to_str().unwrap(),
    ]);
    (ok, stderr)
}

#[test]
fn a_loss_that_blows_up_on_the_gpu_stops_where_the_cpu_does() {
    // The GPU records the next step while the current one runs; a non-finite loss must still
    // stop before that step and keep the last good checkpoint, as on the CPU.
    let case = "mlp_mse_rmsprop";
    let tmp = tempfile::tempdir().unwrap();
    let (x, y, arrays) = write_xy(case, tmp.path());
    let model = fit_dir().join(format!("{case}.keras"));
    let (cpu_out, gpu_out) = (tmp.path().join("cpu.keras"), tmp.path().join("gpu.keras"));
    let (ok, cpu) = blow_up("cpu", &model, &x, &y, &cpu_out);
    assert!(!ok, "the CPU run did not blow up");
    let (ok, gpu) = blow_up("gpu", &model, &x, &y, &gpu_out);
    if no_gpu_outside_ci(&gpu) {
        return;
    }
    assert!(!ok, "the GPU run did not blow up");
    // Each epoch's progress line comes first on stderr; the error is the last line.
    let error = |stderr: &str| stderr.lines().last().unwrap_or_default().to_string();
    let (cpu, gpu) = (error(&cpu), error(&gpu));
    assert!(cpu.starts_with("error: "), "{cpu}");
    assert!(cpu.contains("at epoch 2 "), "{cpu}");
    assert_eq!(gpu, cpu, "the GPU stopped elsewhere");
    let x0 = float(&arrays.iter().find(|(n, _)| n == "x0").unwrap().1);
    let predict = |p: &Path| {
        Model::load(p)
            .expect("the last checkpoint loads")
            .predict(x0.view(), Backend::Cpu)
            .expect("the checkpoint predicts")
    };
    let (c, g) = (predict(&cpu_out), predict(&gpu_out));
    for (p, q) in g.iter().zip(c.iter()) {
        assert!(q.is_finite(), "the CPU checkpoint is not finite");
        assert!(
            (p - q).abs() <= 1e-4 * (1.0 + q.abs()),
            "gpu {p} vs cpu {q}"
        );
    }
}

#[test]
fn bench_train_times_steps_on_both_backends() {
    let model = fit_dir().join("cnn_adam_scce_l2.keras");
    for backend in ["cpu", "gpu"] {
        let (ok, stdout, stderr) = run(&[
            "bench",
            model.to_str().unwrap(),
            "--train",
            "--json",
            "--iters",
            "3",
            "--warmup",
            "1",
            "--batch-size",
            "8",
            "--backend",
            backend,
        ]);
        if backend == "gpu" && no_gpu_outside_ci(&stderr) {
            return;
        }
        assert!(ok, "wgnn bench --train --backend {backend}: {stderr}");
        let report: serde_json::Value =
            serde_json::from_str(stdout.lines().last().expect("a JSON line")).expect("JSON");
        assert_eq!(report["backend"], backend, "{report}");
        assert_eq!(report["steps"], 3, "{report}");
        assert_eq!(report["batch_size"], 8, "{report}");
        let per_s = report["steps_per_s"].as_f64().expect("steps_per_s");
        assert!(per_s.is_finite() && per_s > 0.0, "{report}");
        assert_eq!(report["optimizer"], "Adam", "{report}");
    }
}

#[test]
fn recurrent_dropout_trains_on_the_gpu_as_on_the_cpu() {
    // A SimpleRNN's own dropout and recurrent_dropout: the GPU draws the masks on the host
    // from the run's RNG as the CPU does, so every epoch's loss agrees.
    let case = "text_stacked_simplernn_sgd";
    let tmp = tempfile::tempdir().unwrap();
    let (x, y, _) = write_xy(case, tmp.path());
    let mut config = keras_without_weights(case, &tmp.path().join("bare.keras"));
    config.as_object_mut().unwrap().remove("compile_config");
    let with_rates = |rate: f64, name: &str| {
        let mut config = config.clone();
        let layers = config["config"]["layers"].as_array_mut().expect("layers");
        let rnn = layers
            .iter_mut()
            .find(|l| l["class_name"] == "SimpleRNN")
            .expect("a SimpleRNN layer");
        rnn["config"]["recurrent_dropout"] = serde_json::json!(rate);
        rnn["config"]["dropout"] = serde_json::json!(rate);
        let json = tmp.path().join(name);
        std::fs::write(&json, serde_json::to_string(&config).unwrap()).unwrap();
        json
    };
    let json = with_rates(0.25, "model.json");
    let run_on = |json: &Path, backend: &str| {
        let out = tmp.path().join(format!("out_{backend}.keras"));
        let extra = [
            "--loss",
            "binary_crossentropy",
            "--optimizer",
            "sgd",
            "--backend",
            backend,
        ];
        train_json(json, &x, &y, &out, &extra)
    };
    let cpu = run_on(&json, "cpu").expect("the CPU run");
    let gpu = match run_on(&json, "gpu") {
        Ok(r) => r,
        Err(stderr) if no_gpu_outside_ci(&stderr) => return,
        Err(stderr) => panic!("the GPU run failed: {stderr}"),
    };
    assert_eq!(gpu["backend"], "gpu", "{gpu}");
    let (c, g) = (epoch_losses(&cpu), epoch_losses(&gpu));
    assert_eq!(c.len(), 3);
    assert_eq!(g.len(), 3);
    for (e, (g, c)) in g.iter().zip(&c).enumerate() {
        assert!(
            (g - c).abs() <= 1e-4 * c.abs(),
            "epoch {e}: gpu {g} vs cpu {c}"
        );
    }
    // The masks matter: without them the GPU's losses are others.
    let plain = run_on(&with_rates(0.0, "plain.json"), "gpu").expect("the GPU run at rate 0");
    let p = epoch_losses(&plain);
    assert!(
        p.iter()
            .zip(&g)
            .any(|(p, g)| (p - g).abs() > 1e-3 * g.abs()),
        "dropout changed no loss: {p:?} vs {g:?}"
    );
}
