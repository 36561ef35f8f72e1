//! The `wgnn` binary as a user runs it: predict, info, eval, tokenizer fit, and one-line errors
//! (exit 1, `error: ...`, never a panic) for bad files and inputs.

mod common;

use common::env_dir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn wgnn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgnn"))
        .args(args)
        .output()
        .expect("run wgnn")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture(name: &str) -> String {
    fixtures().join(name).display().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The run failed cleanly: exit 1, one `error:` line naming `words`, no panic.
fn assert_clean_error(out: &Output, words: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "exit status; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no 'error:' line in: {err}"));
    for w in words {
        assert!(line.contains(w), "'{w}' missing from: {line}");
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wgnn-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn read_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    (shape, npy.into_vec::<f32>().unwrap())
}

fn write_f32(path: &Path, shape: &[u64], values: &[f32]) {
    use npyz::WriterBuilder;
    let file = std::fs::File::create(path).unwrap();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .unwrap();
    w.extend(values.iter().copied()).unwrap();
    w.finish().unwrap();
}

fn assert_close(got: &[f32], expected: &[f32]) {
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "[{i}] {g} vs {e}");
    }
}

#[test]
fn predict_cpu_writes_keras_outputs() {
    let dir = temp_dir("predict");
    for (model, weights, name) in [
        ("conv2d_same_stride2.keras", None, "conv2d_same_stride2"),
        (
            "h5_weights_cnn.json",
            Some("h5_weights_cnn.weights.h5"),
            "h5_weights_cnn",
        ),
        (
            "npz_weights_rnn.json",
            Some("npz_weights_rnn.npz"),
            "npz_weights_rnn",
        ),
    ] {
        let out_path = dir.join(format!("{name}.out.npy"));
        let mut args = vec![
            "predict".to_string(),
            fixture(model),
            fixture(&format!("{name}.input.npy")),
            "-o".into(),
            out_path.display().to_string(),
            "--backend".into(),
            "cpu".into(),
        ];
        if let Some(w) = weights {
            args.extend(["--weights".into(), fixture(w)]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = wgnn(&argv);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let (shape, got) = read_f32(&out_path);
        let (eshape, expected) = read_f32(&fixtures().join(format!("{name}.expected.npy")));
        assert_eq!(shape, eshape, "{name}");
        assert_close(&got, &expected);
    }
}

#[test]
fn info_lists_layers_params_and_flops() {
    let out = wgnn(&["info", &fixture("conv2d_same_stride2.keras")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Conv2D"), "{text}");
    assert!(text.contains("total params:"), "{text}");
    assert!(text.contains("FLOPs per item:"), "{text}");
}

#[test]
fn bad_model_files_give_one_line_errors() {
    let dir = temp_dir("bad");
    let empty = dir.join("empty.keras");
    std::fs::write(&empty, b"").unwrap();
    let not_zip = dir.join("notzip.keras");
    std::fs::write(&not_zip, b"this is not a zip file at all").unwrap();
    let input = fixture("conv2d_same_stride2.input.npy");
    let o = dir.join("o.npy").display().to_string();
    for (model, words) in [
        ("/nonexistent/model.keras".to_string(), vec!["model.keras"]),
        (empty.display().to_string(), vec!["empty.keras", "empty"]),
        (not_zip.display().to_string(), vec!["notzip.keras"]),
        (fixture("bad/conv2d_lora.keras"), vec!["lora_rank"]),
        (fixture("bad/lstm_stateful.keras"), vec!["stateful"]),
    ] {
        let out = wgnn(&["predict", &model, &input, "-o", &o, "--backend", "cpu"]);
        assert_clean_error(&out, &words);
    }
}

#[test]
fn wrong_input_shape_and_dtype_are_named() {
    let dir = temp_dir("input");
    let o = dir.join("o.npy").display().to_string();
    let model = fixture("conv2d_same_stride2.keras");
    // Wrong shape: expected vs found.
    let wrong = dir.join("wrong_shape.npy");
    write_f32(&wrong, &[2, 3, 3, 1], &[0.5; 18]);
    let out = wgnn(&[
        "predict",
        &model,
        wrong.to_str().unwrap(),
        "-o",
        &o,
        "--backend",
        "cpu",
    ]);
    assert_clean_error(&out, &["wrong_shape.npy", "expected shape"]);
    // Not an npy at all.
    let garbage = dir.join("garbage.npy");
    std::fs::write(&garbage, b"hello").unwrap();
    let out = wgnn(&[
        "predict",
        &model,
        garbage.to_str().unwrap(),
        "-o",
        &o,
        "--backend",
        "cpu",
    ]);
    assert_clean_error(&out, &["garbage.npy"]);
    // Token ids beyond the vocabulary name the id and the Embedding layer.
    let ids_model = fixture("embedding.keras");
    if Path::new(&ids_model).exists() {
        let ids = dir.join("ids.npy");
        write_f32(&ids, &[1, 7], &[1.0, 99999.0, 2.0, 0.0, 0.0, 0.0, 0.0]);
        let out = wgnn(&[
            "predict",
            &ids_model,
            ids.to_str().unwrap(),
            "-o",
            &o,
            "--backend",
            "cpu",
        ]);
        assert_clean_error(&out, &["99999", "Embedding"]);
    }
}

#[test]
fn unknown_backend_is_a_usage_error() {
    let o = temp_dir("usage").join("o.npy").display().to_string();
    let out = wgnn(&[
        "predict",
        &fixture("conv2d_same_stride2.keras"),
        &fixture("conv2d_same_stride2.input.npy"),
        "-o",
        &o,
        "--backend",
        "tpu",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("unknown backend 'tpu'"));
}

#[test]
fn eval_nusax_json_last_line_has_the_seed_macro_f1() {
    let (Some(seed), Some(data)) = (env_dir("WGNN_SEED_MODELS"), env_dir("WGNN_DATA")) else {
        return;
    };
    let out = wgnn(&[
        "eval",
        "nusax",
        seed.join("lstm_cell8.keras").to_str().unwrap(),
        "--tokenizer",
        seed.join("nusax_tokenizer.json").to_str().unwrap(),
        "--data",
        data.join("nusax").to_str().unwrap(),
        "--backend",
        "cpu",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(
        (v["macro_f1"].as_f64().unwrap() * 1e4).round() / 1e4,
        0.4889
    );
    assert_eq!(v["n"], 400);
    assert_eq!(v["backend"], "cpu");
    for key in [
        "accuracy",
        "items_per_s",
        "adapter",
        "per_class",
        "confusion",
    ] {
        assert!(!v[key].is_null(), "{key} missing");
    }
}

#[test]
fn tokenizer_fit_reproduces_the_seed_word_index() {
    let (Some(seed), Some(data)) = (env_dir("WGNN_SEED_MODELS"), env_dir("WGNN_DATA")) else {
        return;
    };
    let out_path = temp_dir("tokfit").join("tok.json");
    let out = wgnn(&[
        "tokenizer",
        "fit",
        data.join("nusax/train.csv").to_str().unwrap(),
        "-o",
        out_path.to_str().unwrap(),
        "--oov",
        "<UNK>",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let word_index = |p: &Path| -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        let wi = &v["config"]["word_index"];
        // Keras stores it as a JSON string holding JSON.
        match wi.as_str() {
            Some(s) => serde_json::from_str(s).unwrap(),
            None => wi.clone(),
        }
    };
    let ours = word_index(&out_path);
    let theirs = word_index(&seed.join("nusax_tokenizer.json"));
    assert_eq!(ours.as_object().unwrap().len(), 2795);
    assert_eq!(ours, theirs);
}

#[test]
fn float64_token_ids_are_checked_before_rounding_and_fortran_order_is_read() {
    use npyz::WriterBuilder;
    let dir = temp_dir("f64");
    let o = dir.join("o.npy");
    // 3.0000000001 would round to 3.0 in float32: it must be refused, not used as id 3.
    let ids = dir.join("ids.npy");
    let file = std::fs::File::create(&ids).unwrap();
    let mut w = npyz::WriteOptions::<f64>::new()
        .default_dtype()
        .shape(&[1, 7])
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .unwrap();
    w.extend([1.0, 3.000_000_000_1, 2.0, 0.0, 0.0, 0.0, 0.0])
        .unwrap();
    w.finish().unwrap();
    let out = wgnn(&[
        "predict",
        &fixture("embedding.keras"),
        ids.to_str().unwrap(),
        "-o",
        o.to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    assert_clean_error(&out, &["ids.npy", "integers", "3.0000000001"]);

    // A Fortran-ordered copy of a fixture input gives the same output as the C-ordered one.
    let name = "conv2d_same_stride2";
    let (shape, values) = read_f32(&fixtures().join(format!("{name}.input.npy")));
    let c_order = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), values).unwrap();
    let fortran = dir.join("fortran.npy");
    let file = std::fs::File::create(&fortran).unwrap();
    let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut w = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&dims)
        .order(npyz::Order::Fortran)
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .unwrap();
    // Column-major order = the row-major order of the transposed array.
    w.extend(c_order.t().iter().copied()).unwrap();
    w.finish().unwrap();
    let out = wgnn(&[
        "predict",
        &fixture(&format!("{name}.keras")),
        fortran.to_str().unwrap(),
        "-o",
        o.to_str().unwrap(),
        "--backend",
        "cpu",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, got) = read_f32(&o);
    let (_, expected) = read_f32(&fixtures().join(format!("{name}.expected.npy")));
    assert_close(&got, &expected);
}

/// Where Mesa's Vulkan drivers are installed, their implicit device-select layer asks a Wayland
/// compositor for the default GPU, and libwayland prints "error: XDG_RUNTIME_DIR is invalid or
/// not set in the environment." (once per enumeration) when the variable is unset: on a
/// headless machine that read as wgnn's own error. wgnn turns the layer off then.
#[test]
fn gpu_probing_without_xdg_runtime_dir_prints_no_wayland_error() {
    let dir = temp_dir("xdg");
    let name = "conv2d_same_stride2";
    let out_path = dir.join(format!("{name}.out.npy"));
    let out = Command::new(env!("CARGO_BIN_EXE_wgnn"))
        .args([
            "predict",
            &fixture(&format!("{name}.keras")),
            &fixture(&format!("{name}.input.npy")),
            "-o",
            &out_path.display().to_string(),
            "--backend",
            "auto",
        ])
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("NODEVICE_SELECT")
        .env_remove("MESA_VK_DEVICE_SELECT")
        .output()
        .expect("run wgnn");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("XDG_RUNTIME_DIR"), "stderr: {err}");
    let (_, got) = read_f32(&out_path);
    let (_, expected) = read_f32(&fixtures().join(format!("{name}.expected.npy")));
    assert_close(&got, &expected);
}

/// The arrays of an `.npz`, by entry name (without `.npy`), in the archive's order.
fn read_npz(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    use std::io::Read;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    (0..zip.len())
        .map(|i| {
            let mut entry = zip.by_index(i).unwrap();
            let name = entry.name().unwrap().trim_end_matches(".npy").to_string();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
            let shape = npy.shape().iter().map(|&d| d as usize).collect();
            (name, shape, npy.into_vec::<f32>().unwrap())
        })
        .collect()
}

#[test]
fn predict_two_inputs_two_outputs_writes_an_npz_named_after_the_outputs() {
    // tests/fixtures/graph/ir (tools/graph_fixtures_ir.py): inputs [vector, image], outputs
    // [reg, cls], from independent branches.
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("graph/ir/manifest.json")).unwrap(),
    )
    .unwrap();
    let fx = &manifest["fixtures"][0];
    assert_eq!(fx["name"], "two_branches");
    let file = |v: &serde_json::Value| fixture(&format!("graph/ir/{}", v.as_str().unwrap()));
    let inputs: Vec<String> = fx["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| file(&i["file"]))
        .collect();
    let dir = temp_dir("two_outputs");
    for backend in ["cpu", "gpu"] {
        let out_path = dir.join(format!("out_{backend}.npz"));
        let out_arg = out_path.display().to_string();
        let model = file(&fx["model"]);
        let mut args = vec!["predict", model.as_str()];
        args.extend(inputs.iter().map(String::as_str));
        args.extend(["-o", &out_arg, "--backend", backend]);
        let out = wgnn(&args);
        let err = stderr(&out);
        if backend == "gpu" && !out.status.success() && err.contains("no GPU adapter found") {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but there is no GPU adapter: {err}"
            );
            eprintln!("note: no GPU adapter; skipping the GPU run outside CI");
            continue;
        }
        assert!(out.status.success(), "{backend}: {err}");
        assert!(err.contains("wrote reg [3, 2], cls [3, 4]"), "{err}");
        let arrays = read_npz(&out_path);
        let names: Vec<&str> = arrays.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["reg", "cls"],
            "{backend}: entries in the model's output order"
        );
        for (expected, (name, shape, got)) in fx["outputs"].as_array().unwrap().iter().zip(&arrays)
        {
            assert_eq!(expected["name"].as_str().unwrap(), name);
            let (eshape, want) = read_f32(Path::new(&file(&expected["file"])));
            assert_eq!(shape, &eshape, "{backend} {name}");
            assert_close(got, &want);
        }
    }

    // One .npy for a two-input model is a usage error (exit 2) naming the inputs.
    let o = dir.join("o.npz").display().to_string();
    let model = file(&fx["model"]);
    let out = wgnn(&["predict", &model, &inputs[0], "-o", &o, "--backend", "cpu"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("error: the model takes 2 input(s) (vector, image), 1 .npy file(s) given"),
        "{err}"
    );
    assert!(!Path::new(&o).exists(), "no output on a usage error");
}

#[test]
fn bench_profile_times_gpu_dispatches_and_is_refused_on_the_cpu() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/cifar10_base.keras");
    let model = model.to_str().unwrap();
    let args = |backend: &'static str| {
        vec![
            "bench",
            model,
            "--backend",
            backend,
            "--profile",
            "--json",
            "--batch-size",
            "2",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--latency-runs",
            "0",
        ]
    };
    // A usage error: exit 2, one line.
    let refused = wgnn(&args("cpu"));
    let err = stderr(&refused);
    assert_eq!(refused.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("--profile") && err.contains("--backend gpu"),
        "{err}"
    );
    let out = wgnn(&args("gpu"));
    let err = stderr(&out);
    if err.contains("no GPU adapter found") {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but there is no GPU adapter: {err}"
        );
        eprintln!("note: no GPU adapter; skipping outside CI");
        return;
    }
    assert!(out.status.success(), "wgnn bench --profile: {err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a JSON line")).expect("JSON");
    let profile = report["profile"].as_array().expect("a profile array");
    // Both convolutions, both poolings and the two Dense layers, each timed.
    for layer in [
        "conv2d_2",
        "max_pooling2d_2",
        "conv2d_3",
        "max_pooling2d_3",
        "dense_2",
        "dense_3",
    ] {
        let timed = profile.iter().find(|d| d["layer"] == layer);
        let ms = timed.and_then(|d| d["ms"].as_f64());
        assert!(
            ms.is_some_and(|ms| ms.is_finite() && ms >= 0.0),
            "{layer}: {profile:?}"
        );
    }
    assert!(profile.iter().all(|d| d["batch"] == 2), "{profile:?}");
}
