//! `Model::load_bytes` (what the browser build loads a `.keras` through) against
//! `Model::load` of the same file: the same graph and bit-for-bit the same predictions on every
//! `.keras` fixture of both manifests and the shipped models, a free time axis rebuilt from
//! the bytes, and the same one-line errors for bad files.

mod common;

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use wgnn::{Backend, Model};

fn load_both(path: &Path) -> (Model, Model) {
    let from_file = Model::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let bytes = std::fs::read(path).unwrap();
    let from_bytes =
        Model::load_bytes(path, &bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (from_file, from_bytes)
}

fn assert_same_outputs(name: &str, a: &[ArrayD<f32>], b: &[ArrayD<f32>]) {
    assert_eq!(a.len(), b.len(), "{name}: number of outputs");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.shape(), y.shape(), "{name}: output shape");
        let same = x
            .iter()
            .zip(y.iter())
            .all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "{name}: load_bytes predicts differently from load");
    }
}

/// Every `.keras` file of `tests/fixtures/manifest.json`.
#[test]
fn load_bytes_predicts_as_load_on_every_keras_fixture() {
    let dir = common::fixtures_dir();
    let mut checked = 0;
    for fx in common::manifest().fixtures {
        if fx.weights.is_some() || !fx.model.ends_with(".keras") {
            continue;
        }
        let (a, b) = load_both(&dir.join(&fx.model));
        assert_eq!(a.graph().nodes.len(), b.graph().nodes.len(), "{}", fx.name);
        assert_eq!(
            a.graph().param_count(),
            b.graph().param_count(),
            "{}",
            fx.name
        );
        let pa = common::predict_fixture(&fx, &a, Backend::Cpu).unwrap();
        let pb = common::predict_fixture(&fx, &b, Backend::Cpu).unwrap();
        assert_same_outputs(&fx.name, &[pa], &[pb]);
        checked += 1;
    }
    assert!(checked > 100, "only {checked} .keras fixtures found");
}

/// Every `.keras` file of `tests/fixtures/graph/manifest.json` (several inputs and outputs,
/// free time axes, TextVectorization), all outputs compared.
#[test]
fn load_bytes_predicts_as_load_on_every_graph_keras_fixture() {
    let dir = common::fixtures_dir().join("graph");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let mut checked = 0;
    for fx in manifest["fixtures"].as_array().unwrap() {
        let model = fx["model"].as_str().unwrap();
        if !model.ends_with(".keras") || fx.get("weights").is_some_and(|w| !w.is_null()) {
            continue;
        }
        let name = fx["name"].as_str().unwrap();
        let (a, b) = load_both(&dir.join(model));
        let inputs: Vec<ArrayD<f32>> = fx["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|input| {
                let path = dir.join(input["file"].as_str().unwrap());
                match input["kind"].as_str().unwrap() {
                    "float" => common::read_npy_f32(&path),
                    _ => common::read_npy_ids(&path).mapv(|v| v as f32).into_dyn(),
                }
            })
            .collect();
        let views: Vec<_> = inputs.iter().map(|x| x.view()).collect();
        match (
            a.predict_many(&views, Backend::Cpu),
            b.predict_many(&views, Backend::Cpu),
        ) {
            (Ok(pa), Ok(pb)) => assert_same_outputs(name, &pa, &pb),
            (Err(ea), Err(eb)) => assert_eq!(ea.to_string(), eb.to_string(), "{name}"),
            (ra, rb) => panic!("{name}: load gives {ra:?}, load_bytes {rb:?}"),
        }
        checked += 1;
    }
    assert!(checked > 50, "only {checked} graph .keras fixtures found");
}

#[test]
fn load_bytes_predicts_as_load_on_the_shipped_models() {
    for name in ["cifar10_base.keras", "cifar10_vgg6.keras"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join(name);
        let (a, b) = load_both(&path);
        let x = ArrayD::from_shape_fn(IxDyn(&[2, 32, 32, 3]), |d| {
            ((d[1] * 7 + d[2] * 3 + d[3]) % 256) as f32 / 255.0
        });
        let pa = a.predict(x.view(), Backend::Cpu).unwrap();
        let pb = b.predict(x.view(), Backend::Cpu).unwrap();
        assert_same_outputs(name, &[pa], &[pb]);
    }
}

/// A `None` time axis: each new length rebuilds the graph, here from the bytes kept in memory.
#[test]
fn load_bytes_rebuilds_a_free_time_axis_from_memory() {
    let dir = common::fixtures_dir().join("graph");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    // The first single-input .keras fixture whose model takes a None time axis.
    let mut found = false;
    for fx in manifest["fixtures"].as_array().unwrap() {
        let model = fx["model"].as_str().unwrap();
        let inputs = fx["inputs"].as_array().unwrap();
        if !model.ends_with(".keras") || inputs.len() != 1 {
            continue;
        }
        let text = {
            let file = std::fs::File::open(dir.join(model)).unwrap();
            let mut zip = zip::ZipArchive::new(file).unwrap();
            let mut s = String::new();
            std::io::Read::read_to_string(&mut zip.by_name("config.json").unwrap(), &mut s)
                .unwrap();
            s
        };
        if !text.contains("\"batch_shape\": [null, null") {
            continue;
        }
        let (a, b) = load_both(&dir.join(model));
        let path = dir.join(inputs[0]["file"].as_str().unwrap());
        let x = match inputs[0]["kind"].as_str().unwrap() {
            "float" => common::read_npy_f32(&path),
            _ => common::read_npy_ids(&path).mapv(|v| v as f32).into_dyn(),
        };
        // The fixture's own length, then a shorter one (a second graph).
        for len in [x.shape()[1], (x.shape()[1] / 2).max(1)] {
            let cut = x.slice_axis(ndarray::Axis(1), (0..len).into()).to_owned();
            let pa = a.predict_many(&[cut.view()], Backend::Cpu).unwrap();
            let pb = b.predict_many(&[cut.view()], Backend::Cpu).unwrap();
            assert_same_outputs(fx["name"].as_str().unwrap(), &pa, &pb);
        }
        found = true;
        break;
    }
    assert!(found, "no graph fixture with a None time axis");
}

/// Bad files fail with the same one-line message from bytes as from the file.
#[test]
fn load_bytes_errors_are_load_errors() {
    let dir = common::fixtures_dir();
    let mut checked = 0;
    for bad in common::manifest().bad {
        if bad.weights.is_some() {
            continue;
        }
        let path = dir.join(&bad.file);
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        match (Model::load(&path), Model::load_bytes(&path, &bytes)) {
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string(), "{}", bad.file);
                assert!(!b.to_string().contains('\n'), "{}: {b}", bad.file);
            }
            (Ok(_), Ok(_)) => {}
            (a, b) => panic!("{}: load gives {a:?}, load_bytes {b:?}", bad.file),
        }
        checked += 1;
    }
    assert!(checked > 0, "no bad files checked");
    // Empty and truncated files, written out for `load`.
    let tmp = tempfile::tempdir().unwrap();
    let keras =
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/cifar10_base.keras"))
            .unwrap();
    for (name, bytes) in [
        ("empty.keras", &keras[..0]),
        ("cut.keras", &keras[..keras.len() / 2]),
    ] {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let a = Model::load(&path).unwrap_err().to_string();
        let b = Model::load_bytes(&path, bytes).unwrap_err().to_string();
        assert_eq!(a, b, "{name}");
        assert!(b.contains(name) && !b.contains('\n'), "{b}");
    }
}
