//! `Model::save` against what Keras writes. Every committed model — the shipped CIFAR-10
//! models, tests/fixtures/ (keras_fixtures.py), tests/fixtures/graph/ and its families' folders
//! (nested models, Bidirectional, shared layers; `.keras`, JSON + `.weights.h5`, JSON + `.npz`,
//! legacy `.h5`), tests/fixtures/legacy/ and the TextVectorization model — is saved as `.keras`,
//! loaded back by wgnn and run: the outputs are bit-identical to the original's, every parameter
//! comes back at its Keras path with its values, `config.json` is the config as read, and where
//! the source was in Keras 3's own layout (`.keras`, `.weights.h5`) the saved weights file has
//! exactly its groups, `name` attributes and datasets (path, shape, dtype), listed with
//! hdf5-pure. Keras 2 configs are refused as `.keras` and saved as `.weights.h5` instead.
//!
//! With env `WGNN_KERAS_SAVE_DIR` set, the saved files go there, with their inputs, wgnn's
//! outputs and `manifest-*.json` files, for `tools/check_keras_save.py` to load with real Keras.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use serde_json::{json, Value};
use wgnn::{Backend, Model};

use common::graph_fixtures::{graph_dir, graph_manifest, GraphFixture};
use common::{fixtures_dir, read_npy_f32, read_npy_ids, FixtureInput};

/// One model to round-trip, with its inputs (token ids as integral floats).
struct Case {
    /// Unique: the fixture folder and name (`graph/conv/conv2d_same`).
    id: String,
    model: PathBuf,
    weights: Option<PathBuf>,
    inputs: Vec<ArrayD<f32>>,
    /// Which inputs are token ids (for the Keras check, which feeds them as integers).
    ids: Vec<bool>,
}

impl Case {
    /// Keras 2 configs (tf.keras / Keras 2.x files), which `.keras` refuses.
    fn keras2(&self) -> bool {
        self.id.starts_with("legacy/k2_")
    }

    fn load(&self) -> wgnn::Result<Model> {
        match &self.weights {
            Some(w) => Model::load_with_weights(&self.model, w),
            None => Model::load(&self.model),
        }
    }

    fn file_stem(&self) -> String {
        self.id.replace('/', "__")
    }
}

/// Where saved files go: `WGNN_KERAS_SAVE_DIR` (kept for the Keras check), else a temporary
/// folder.
struct Output {
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    export: bool,
}

impl Output {
    fn new() -> Output {
        match std::env::var_os("WGNN_KERAS_SAVE_DIR") {
            Some(d) => {
                let dir = PathBuf::from(d);
                std::fs::create_dir_all(&dir).unwrap();
                Output {
                    dir,
                    _tmp: None,
                    export: true,
                }
            }
            None => {
                let tmp = tempfile::tempdir().unwrap();
                Output {
                    dir: tmp.path().to_path_buf(),
                    _tmp: Some(tmp),
                    export: false,
                }
            }
        }
    }

    /// Writes `manifest-<name>.json` when exporting.
    fn manifest(&self, name: &str, entries: Vec<Value>) {
        if self.export {
            let path = self.dir.join(format!("manifest-{name}.json"));
            let text = serde_json::to_string_pretty(&json!({ "cases": entries })).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }
}

fn run(model: &Model, inputs: &[ArrayD<f32>]) -> wgnn::Result<Vec<ArrayD<f32>>> {
    let prepared = inputs
        .iter()
        .enumerate()
        .map(|(i, x)| model.prepare_input(i, x.view()))
        .collect::<wgnn::Result<Vec<_>>>()?;
    model.run_all(&prepared, Backend::Cpu)
}

/// Same shapes and the same bits (NaN included: the same computation gives the same NaN).
fn same_outputs(expected: &[ArrayD<f32>], got: &[ArrayD<f32>]) -> Result<(), String> {
    if expected.len() != got.len() {
        return Err(format!(
            "{} outputs, expected {}",
            got.len(),
            expected.len()
        ));
    }
    for (k, (e, g)) in expected.iter().zip(got).enumerate() {
        if e.shape() != g.shape() {
            return Err(format!(
                "output {k}: shape {:?}, expected {:?}",
                g.shape(),
                e.shape()
            ));
        }
        if let Some((i, (a, b))) = e
            .iter()
            .zip(g.iter())
            .enumerate()
            .find(|(_, (a, b))| a.to_bits() != b.to_bits())
        {
            return Err(format!("output {k}: element {i} is {b}, expected {a}"));
        }
    }
    Ok(())
}

/// Every parameter Keras stores comes back at the same Keras path with the same values.
fn same_params(original: &Model, reloaded: &Model) -> Result<usize, String> {
    let by_path = |m: &Model| -> BTreeMap<String, (Vec<usize>, Vec<u32>)> {
        m.graph()
            .params
            .iter()
            .filter_map(|(_, p)| {
                p.keras.as_ref().map(|k| {
                    let bits = p.value.iter().map(|v| v.to_bits()).collect();
                    (k.path.clone(), (k.shape.clone(), bits))
                })
            })
            .collect()
    };
    let (a, b) = (by_path(original), by_path(reloaded));
    if a.keys().ne(b.keys()) {
        return Err(format!(
            "parameter paths differ: {:?} vs {:?}",
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>()
        ));
    }
    if let Some(path) = a.keys().find(|k| a[*k] != b[*k]) {
        return Err(format!("parameter '{path}' changed in the round trip"));
    }
    Ok(a.len())
}

/// Everything in an HDF5 file: each group (with its `name` attribute) and dataset (shape,
/// dtype), by path.
fn h5_layout(bytes: Vec<u8>) -> BTreeMap<String, String> {
    fn walk(file: &hdf5_pure::File, path: &str, depth: usize, out: &mut BTreeMap<String, String>) {
        assert!(depth < 16, "HDF5 groups nest too deep at {path}");
        let g = if path.is_empty() {
            file.root()
        } else {
            file.group(path).unwrap()
        };
        let name = g
            .attrs()
            .unwrap()
            .get("name")
            .and_then(hdf5_pure::AttrValue::as_str)
            .map(str::to_string);
        let mut attrs: Vec<String> = g.attrs().unwrap().keys().cloned().collect();
        attrs.sort();
        out.insert(
            format!("{path}/"),
            format!("group attrs={attrs:?} name={name:?}"),
        );
        let join = |n: &str| {
            if path.is_empty() {
                n.to_string()
            } else {
                format!("{path}/{n}")
            }
        };
        for d in g.datasets().unwrap() {
            let ds = file.dataset(&join(&d)).unwrap();
            out.insert(
                join(&d),
                format!(
                    "dataset {:?} {:?}",
                    ds.shape().unwrap(),
                    ds.dtype().unwrap()
                ),
            );
        }
        for sub in g.groups().unwrap() {
            walk(file, &join(&sub), depth + 1, out);
        }
    }
    let file = hdf5_pure::File::from_bytes(bytes).unwrap();
    let mut out = BTreeMap::new();
    walk(&file, "", 0, &mut out);
    out
}

fn zip_entry(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut entry = zip.by_name(name).ok()?;
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes).unwrap();
    Some(bytes)
}

fn zip_names(path: &Path) -> Vec<String> {
    let zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    zip.file_names().map(|n| n.unwrap().into_owned()).collect()
}

/// The source's weights when they are in Keras 3's layout: a `.keras`'s `model.weights.h5`,
/// or a Keras 3 `.weights.h5`.
fn keras3_weights(case: &Case) -> Option<Vec<u8>> {
    match &case.weights {
        None if zip_like(&case.model) => zip_entry(&case.model, "model.weights.h5"),
        None => None,
        Some(w) => {
            let bytes = std::fs::read(w).unwrap();
            if !bytes.starts_with(b"\x89HDF") {
                return None;
            }
            let file = hdf5_pure::File::from_bytes(bytes.clone()).unwrap();
            let legacy = file.root().attrs().unwrap().contains_key("layer_names");
            (!legacy && file.group("layers").is_ok()).then_some(bytes)
        }
    }
}

fn zip_like(path: &Path) -> bool {
    std::fs::read(path).unwrap().starts_with(b"PK")
}

/// The config text the model was read from, when saving keeps it verbatim.
fn source_config_text(case: &Case) -> Option<String> {
    if zip_like(&case.model) {
        return zip_entry(&case.model, "config.json").map(|b| String::from_utf8(b).unwrap());
    }
    let text = std::fs::read_to_string(&case.model).ok()?;
    let value: Value = serde_json::from_str(&text).ok()?;
    match value {
        Value::String(inner) => Some(inner),
        _ => Some(text),
    }
}

/// Saves one case, loads it back and checks it; returns a line for the report and, when
/// exporting, its manifest entry.
fn round_trip(case: &Case, out: &Output) -> Result<(String, Option<Value>), String> {
    let original = case.load().map_err(|e| format!("load failed: {e}"))?;
    let expected = run(&original, &case.inputs).map_err(|e| format!("run failed: {e}"))?;
    let saved = out.dir.join(format!("{}.keras", case.file_stem()));
    match original.save(&saved) {
        Err(e) if case.keras2() => {
            return keras2_refused(case, &original, &expected, &saved, e, out)
        }
        Err(e) => return Err(format!("save failed: {e}")),
        Ok(()) if case.keras2() => return Err("a Keras 2 config was saved as .keras".into()),
        Ok(()) => {}
    }
    let reloaded = Model::load(&saved).map_err(|e| format!("reload failed: {e}"))?;
    let got = run(&reloaded, &case.inputs).map_err(|e| format!("reloaded run failed: {e}"))?;
    same_outputs(&expected, &got)?;
    let params = same_params(&original, &reloaded)?;
    let mut names = zip_names(&saved);
    names.truncate(3);
    if names != ["metadata.json", "config.json", "model.weights.h5"] {
        return Err(format!("zip entries {names:?}"));
    }
    let legacy = case.model.extension().is_some_and(|e| e == "h5");
    if !legacy {
        let written = String::from_utf8(zip_entry(&saved, "config.json").unwrap()).unwrap();
        if Some(written) != source_config_text(case) {
            return Err("config.json is not the config as read".into());
        }
    }
    let mut compared = "";
    if let Some(source) = keras3_weights(case) {
        let want = h5_layout(source);
        let have = h5_layout(zip_entry(&saved, "model.weights.h5").unwrap());
        if want != have {
            let only_want: Vec<_> = want
                .iter()
                .filter(|(k, v)| have.get(*k) != Some(v))
                .collect();
            let only_have: Vec<_> = have
                .iter()
                .filter(|(k, v)| want.get(*k) != Some(v))
                .collect();
            return Err(format!(
                "weights layout differs from the source's: source has {only_want:?}, saved has {only_have:?}"
            ));
        }
        compared = ", layout = source's";
    }
    let entry = out
        .export
        .then(|| export_case(case, &saved, &expected, out));
    Ok((
        format!(
            "{}: {} outputs identical, {params} params{compared}",
            case.id,
            expected.len()
        ),
        entry,
    ))
}

/// A Keras 2 config: `.keras` is refused with a note to save `.weights.h5`, which then loads
/// back (with the original config) to the same outputs.
fn keras2_refused(
    case: &Case,
    original: &Model,
    expected: &[ArrayD<f32>],
    saved: &Path,
    err: wgnn::Error,
    out: &Output,
) -> Result<(String, Option<Value>), String> {
    let msg = err.to_string();
    if !msg.contains(".weights.h5") || !msg.contains("Keras 2") || msg.contains('\n') {
        return Err(format!("unclear refusal: {msg}"));
    }
    if saved.exists() {
        return Err("a refused save left a file behind".into());
    }
    let weights = out.dir.join(format!("{}.weights.h5", case.file_stem()));
    original
        .save(&weights)
        .map_err(|e| format!("saving .weights.h5 failed: {e}"))?;
    let reloaded = Model::load_with_weights(&case.model, &weights)
        .map_err(|e| format!("loading the saved .weights.h5 failed: {e}"))?;
    let got = run(&reloaded, &case.inputs).map_err(|e| format!("reloaded run failed: {e}"))?;
    same_outputs(expected, &got)?;
    same_params(original, &reloaded)?;
    Ok((
        format!(
            "{}: .keras refused (Keras 2), .weights.h5 round trip identical",
            case.id
        ),
        None,
    ))
}

/// Writes the case's inputs and wgnn's outputs beside its saved file; returns its manifest
/// entry.
fn export_case(case: &Case, saved: &Path, outputs: &[ArrayD<f32>], out: &Output) -> Value {
    let stem = case.file_stem();
    let mut inputs = Vec::new();
    for (k, x) in case.inputs.iter().enumerate() {
        let name = format!("{stem}.input{k}.npy");
        wgnn::npy::write_f32(&out.dir.join(&name), x).unwrap();
        inputs.push(name);
    }
    let mut outs = Vec::new();
    for (k, y) in outputs.iter().enumerate() {
        let name = format!("{stem}.wgnn{k}.npy");
        wgnn::npy::write_f32(&out.dir.join(&name), y).unwrap();
        outs.push(name);
    }
    json!({
        "id": case.id,
        "model": saved.file_name().unwrap().to_str().unwrap(),
        "inputs": inputs,
        "ids": case.ids,
        "outputs": outs,
        // The file(s) it was saved from, for telling a model Keras cannot run at all.
        "source": case.model,
        "source_weights": case.weights,
    })
}

/// Round-trips every case; fails listing every case that failed.
fn check_all(name: &str, cases: Vec<Case>) {
    assert!(!cases.is_empty(), "{name}: no cases");
    let out = Output::new();
    let mut failures = Vec::new();
    let mut entries = Vec::new();
    let n = cases.len();
    for case in &cases {
        match round_trip(case, &out) {
            Ok((line, entry)) => {
                println!("{line}");
                entries.extend(entry);
            }
            Err(e) => failures.push(format!("{}: {e}", case.id)),
        }
    }
    out.manifest(name, entries);
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!("{name}: {n} cases round-trip");
}

fn read_input(path: &Path, kind: FixtureInput) -> ArrayD<f32> {
    match kind {
        FixtureInput::Float => read_npy_f32(path),
        FixtureInput::Ids => read_npy_ids(path).mapv(|v| v as f32).into_dyn(),
    }
}

/// The fixtures of a `tests/fixtures/manifest.json`-style manifest in `folder`.
fn flat_cases(folder: &str) -> Vec<Case> {
    let dir = fixtures_dir().join(folder);
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    let manifest: Value = serde_json::from_str(&text).unwrap();
    manifest["fixtures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let fx: common::Fixture = serde_json::from_value(f.clone()).unwrap();
            let x = read_input(&dir.join(&fx.input), fx.input_kind);
            Case {
                id: format!("{folder}/{}", fx.name)
                    .trim_start_matches('/')
                    .to_string(),
                model: dir.join(&fx.model),
                weights: fx.weights.as_ref().map(|w| dir.join(w)),
                inputs: vec![x],
                ids: vec![fx.input_kind == FixtureInput::Ids],
            }
        })
        .collect()
}

/// The fixtures of `tests/fixtures/graph/<folder>/manifest.json` (the `recipe` ones, whose
/// weights a test rebuilds, are `tests/graph_apps.rs`'s).
fn graph_cases(folder: &str) -> Vec<Case> {
    let dir = graph_dir().join(folder);
    graph_manifest(folder)
        .fixtures
        .into_iter()
        .filter(|fx: &GraphFixture| fx.form != "recipe")
        .map(|fx| {
            let inputs = fx
                .inputs
                .iter()
                .map(|i| {
                    let kind = if i.kind == "ids" {
                        FixtureInput::Ids
                    } else {
                        FixtureInput::Float
                    };
                    read_input(&dir.join(&i.file), kind)
                })
                .collect();
            Case {
                id: format!("graph/{folder}/{}", fx.name).replace("//", "/"),
                model: dir.join(&fx.model),
                weights: fx.weights.as_ref().map(|w| dir.join(w)),
                inputs,
                ids: fx.inputs.iter().map(|i| i.kind == "ids").collect(),
            }
        })
        .collect()
}

/// Deterministic images in [0, 1) (splitmix64), for the shipped CIFAR-10 models.
fn pattern_images(n: usize) -> ArrayD<f32> {
    let mut state = 0x5eed_u64;
    ArrayD::from_shape_fn(IxDyn(&[n, 32, 32, 3]), |_| {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    })
}

#[test]
fn shipped_models_round_trip() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let cases = ["cifar10_base", "cifar10_vgg6"]
        .iter()
        .map(|name| Case {
            id: format!("models/{name}"),
            model: models.join(format!("{name}.keras")),
            weights: None,
            inputs: vec![pattern_images(4)],
            ids: vec![false],
        })
        .collect();
    check_all("models", cases);
}

#[test]
fn keras_fixtures_round_trip() {
    check_all("fixtures", flat_cases(""));
}

#[test]
fn graph_fixtures_round_trip() {
    check_all("graph", graph_cases(""));
}

#[test]
fn graph_family_fixtures_round_trip() {
    let cases = ["conv", "ir", "merge", "norm", "rnn"]
        .iter()
        .flat_map(|f| graph_cases(f))
        .collect();
    check_all("graph-families", cases);
}

#[test]
fn legacy_fixtures_round_trip() {
    let cases = flat_cases("legacy");
    assert!(cases.iter().any(Case::keras2) && cases.iter().any(|c| !c.keras2()));
    check_all("legacy", cases);
}

/// The TextVectorization model: its vocabularies (`assets/`) go with it, and the reloaded model
/// turns raw text into the same ids and logits.
#[test]
fn text_vectorization_model_round_trips_with_its_assets() {
    let dir = fixtures_dir().join("text");
    let source = dir.join("nusax_textvec_bilstm.keras");
    let cases: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("nusax_textvec_bilstm.cases.json")).unwrap(),
    )
    .unwrap();
    let texts: Vec<&str> = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    let out = Output::new();
    let saved = out.dir.join("text__nusax_textvec_bilstm.keras");
    let original = Model::load(&source).unwrap();
    original.save(&saved).unwrap();
    let reloaded = Model::load(&saved).unwrap();
    assert_eq!(
        reloaded
            .graph()
            .text_vectorization
            .as_ref()
            .map(|t| &t.vocabulary),
        original
            .graph()
            .text_vectorization
            .as_ref()
            .map(|t| &t.vocabulary)
    );
    let assets = |p: &Path| -> Vec<(String, Vec<u8>)> {
        zip_names(p)
            .into_iter()
            .filter(|n| n.starts_with("assets/"))
            .map(|n| {
                let b = zip_entry(p, &n).unwrap();
                (n, b)
            })
            .collect()
    };
    let kept = assets(&saved);
    assert!(!kept.is_empty());
    assert_eq!(kept, assets(&source));
    let logits = |m: &Model| {
        let input = wgnn::eval::texts_to_input(m, None, &texts).unwrap();
        m.run(&input, Backend::Cpu).unwrap()
    };
    let expected = logits(&original);
    same_outputs(
        std::slice::from_ref(&expected),
        std::slice::from_ref(&logits(&reloaded)),
    )
    .unwrap();
    assert_eq!(
        h5_layout(zip_entry(&saved, "model.weights.h5").unwrap()),
        h5_layout(zip_entry(&source, "model.weights.h5").unwrap())
    );
    if out.export {
        let name = "text__nusax_textvec_bilstm.wgnn0.npy";
        wgnn::npy::write_f32(&out.dir.join(name), &expected).unwrap();
        out.manifest(
            "text",
            vec![json!({
                "id": "text/nusax_textvec_bilstm",
                "model": saved.file_name().unwrap().to_str().unwrap(),
                "texts": texts,
                "outputs": [name],
            })],
        );
    }
}

fn flatten_dense() -> Model {
    Model::load(fixtures_dir().join("flatten_dense.keras")).unwrap()
}

#[test]
fn changed_weights_survive_the_round_trip() {
    let model = flatten_dense();
    let fx = common::fixture("flatten_dense");
    let x = read_npy_f32(&fixtures_dir().join(&fx.input));
    let mut graph = model.graph().clone();
    let ids: Vec<_> = graph.params.iter().map(|(id, _)| id).collect();
    for (k, &id) in ids.iter().enumerate() {
        graph
            .params
            .get_mut(id)
            .mapv_inplace(|v| v * 0.5 + 0.01 * k as f32);
    }
    let changed = Model::from_graph(graph.clone(), model.source());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("changed.keras");
    changed.save(&path).unwrap();
    let reloaded = Model::load(&path).unwrap();
    for &id in &ids {
        assert_eq!(
            reloaded.graph().params.get(id),
            graph.params.get(id),
            "{}",
            graph.params.param(id).name
        );
    }
    let before = model.predict(x.view(), Backend::Cpu).unwrap();
    let want = changed.predict(x.view(), Backend::Cpu).unwrap();
    let got = reloaded.predict(x.view(), Backend::Cpu).unwrap();
    assert_ne!(before, want, "the changed weights should change the output");
    same_outputs(&[want], &[got]).unwrap();
}

/// Keras's compile_config for `Adam()` with `loss="mse"` (as Keras 3.15 saves it).
fn adam_compile_config() -> Value {
    json!({"optimizer": {"module": "keras.optimizers", "class_name": "Adam", "config": {
        "name": "adam", "learning_rate": 0.0010000000474974513, "weight_decay": null,
        "clipnorm": null, "global_clipnorm": null, "clipvalue": null, "use_ema": false,
        "ema_momentum": 0.99, "ema_overwrite_frequency": null, "loss_scale_factor": null,
        "gradient_accumulation_steps": null, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-07,
        "amsgrad": false}, "registered_name": null},
        "loss": "mse", "loss_weights": null, "metrics": null, "weighted_metrics": null,
        "run_eagerly": false, "steps_per_execution": 1, "jit_compile": false})
}

/// Adam's variables for `graph` in Keras's order: iteration, learning_rate, then a momentum and
/// a velocity per trainable weight, with values no fresh optimizer has.
fn adam_variables(graph: &wgnn::graph::Graph) -> Vec<(String, ArrayD<f32>)> {
    let scalar = |v: f32| ArrayD::from_elem(IxDyn(&[]), v);
    let mut vars = vec![
        ("adam/iteration".to_string(), scalar(7.0)),
        ("adam/learning_rate".to_string(), scalar(0.0005)),
    ];
    for (k, (_, p)) in graph.params.iter().filter(|(_, p)| p.trainable).enumerate() {
        let stem = p.name.replace('/', "_");
        for (j, what) in ["momentum", "velocity"].iter().enumerate() {
            let mut i = 0.0f32;
            let values = p.value.mapv(|_| {
                i += 1.0;
                (k * 2 + j) as f32 + i * 1e-3
            });
            vars.push((format!("adam/{stem}_{what}"), values));
        }
    }
    vars
}

/// The optimizer's variables go to `optimizer/vars/<i>` (the iteration counter as int64), under
/// a group named after the optimizer; tools/check_keras_save.py checks that Keras's load_model
/// restores them.
#[test]
fn optimizer_variables_are_saved_as_keras_does() {
    let model = flatten_dense();
    let mut graph = model.graph().clone();
    graph.compile_config = Some(adam_compile_config());
    let vars = adam_variables(&graph);
    assert_eq!(
        vars.len(),
        2 + 2 * 4,
        "Conv2D and Dense: kernel and bias each"
    );
    let out = Output::new();
    let path = out.dir.join("optimizer__adam.keras");
    wgnn::keras::save::save(&path, &graph, Some(&vars)).unwrap();
    let h5 = hdf5_pure::File::from_bytes(zip_entry(&path, "model.weights.h5").unwrap()).unwrap();
    let group = h5.group("optimizer/vars").unwrap();
    assert_eq!(
        group
            .attrs()
            .unwrap()
            .get("name")
            .and_then(hdf5_pure::AttrValue::as_str),
        Some("adam")
    );
    assert_eq!(group.datasets().unwrap().len(), vars.len());
    for (i, (name, value)) in vars.iter().enumerate() {
        let ds = h5.dataset(&format!("optimizer/vars/{i}")).unwrap();
        let shape: Vec<usize> = ds.shape().unwrap().iter().map(|&d| d as usize).collect();
        assert_eq!(shape, value.shape(), "{name}");
        let dtype = ds.dtype().unwrap();
        if name.ends_with("/iteration") {
            assert_eq!(dtype, hdf5_pure::DType::I64);
            assert_eq!(ds.read::<i64>().unwrap(), vec![7]);
        } else {
            assert_eq!(dtype, hdf5_pure::DType::F32, "{name}");
            assert_eq!(
                ds.read_f32().unwrap(),
                value.iter().copied().collect::<Vec<_>>()
            );
        }
    }
    // The config carries the compile_config that makes Keras build this optimizer.
    let config: Value = serde_json::from_slice(&zip_entry(&path, "config.json").unwrap()).unwrap();
    assert_eq!(config["compile_config"], adam_compile_config());
    // wgnn still reads it, and the weights are the model's.
    let reloaded = Model::load(&path).unwrap();
    same_params(&model, &reloaded).unwrap();
    assert_eq!(reloaded.graph().compile_config, Some(adam_compile_config()));
    if out.export {
        let arrays: Vec<(String, &ArrayD<f32>)> = vars
            .iter()
            .enumerate()
            .map(|(i, (_, v))| (format!("arr_{i}"), v))
            .collect();
        let named: Vec<(&str, &ArrayD<f32>)> =
            arrays.iter().map(|(n, v)| (n.as_str(), *v)).collect();
        wgnn::npy::write_npz(&out.dir.join("optimizer__adam.variables.npz"), &named).unwrap();
        out.manifest(
            "optimizer",
            vec![json!({
                "id": "optimizer/adam",
                "model": "optimizer__adam.keras",
                "variables": "optimizer__adam.variables.npz",
                "names": vars.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            })],
        );
    }
}

#[test]
fn optimizer_state_needs_a_compiled_optimizer() {
    let model = flatten_dense();
    let vars = adam_variables(model.graph());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.keras");
    let err = model
        .save_with_optimizer(&path, &vars)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("compile_config") && err.contains("m.keras"),
        "{err}"
    );
    assert!(!path.exists());
}

#[test]
fn a_compiled_model_without_optimizer_state_gets_an_empty_optimizer_group() {
    let mut graph = flatten_dense().graph().clone();
    graph.compile_config = Some(adam_compile_config());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.keras");
    wgnn::keras::save::save(&path, &graph, None).unwrap();
    let layout = h5_layout(zip_entry(&path, "model.weights.h5").unwrap());
    assert_eq!(
        layout.get("optimizer/vars/").map(String::as_str),
        Some("group attrs=[\"name\"] name=Some(\"adam\")")
    );
    assert!(!layout
        .keys()
        .any(|k| k.starts_with("optimizer/vars/") && !k.ends_with('/')));
}

#[test]
fn weights_alone_save_as_weights_h5() {
    let model = flatten_dense();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.weights.h5");
    model.save(&path).unwrap();
    let source = zip_entry(
        &fixtures_dir().join("flatten_dense.keras"),
        "model.weights.h5",
    );
    assert_eq!(
        h5_layout(std::fs::read(&path).unwrap()),
        h5_layout(source.unwrap())
    );
    let reloaded =
        Model::load_with_weights(fixtures_dir().join("flatten_dense.keras"), &path).unwrap();
    same_params(&model, &reloaded).unwrap();
}

#[test]
fn save_errors_are_one_line_naming_the_file() {
    let model = flatten_dense();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no_such_folder").join("m.keras");
    let bad_name = dir.path().join("m.h5");
    for path in [&missing, &bad_name] {
        let err = model.save(path).unwrap_err().to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(!path.exists());
    }
    assert!(model
        .save(&bad_name)
        .unwrap_err()
        .to_string()
        .contains(".keras"));
    // A graph built by hand has no config to save.
    let bare = Model::from_graph(wgnn::graph::Graph::new("bare"), Path::new("bare"));
    let err = bare
        .save(dir.path().join("bare.keras"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no Keras config"), "{err}");
}

#[test]
fn saving_replaces_a_file_whole_and_leaves_no_temporary_files() {
    let model = flatten_dense();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.keras");
    std::fs::write(&path, b"an older file").unwrap();
    model.save(&path).unwrap();
    Model::load(&path).unwrap();
    // A refused save (Keras 2 config) leaves the existing file as it was.
    let keras2 = Model::load(fixtures_dir().join("legacy/k2_seq_cnn.h5")).unwrap();
    let before = std::fs::read(&path).unwrap();
    assert!(keras2.save(&path).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("m.keras")]);
}

#[test]
fn metadata_names_keras_3_15() {
    let model = flatten_dense();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.keras");
    model.save(&path).unwrap();
    let meta: Value = serde_json::from_slice(&zip_entry(&path, "metadata.json").unwrap()).unwrap();
    assert_eq!(meta["keras_version"], "3.15.1");
    let date = meta["date_saved"].as_str().unwrap();
    // %Y-%m-%d@%H:%M:%S
    assert_eq!(date.len(), 19, "{date}");
    assert_eq!(&date[10..11], "@", "{date}");
}
