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
    let losses: Vec<f64> = report["history"]["loss"]
        .as_array()
        .expect("history.loss")
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
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
