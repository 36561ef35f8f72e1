//! TextVectorization against Keras: tests/fixtures/text/text_vectorization.keras holds six
//! TextVectorization layers (adapted vocabularies in assets/, vocabularies in the config, every
//! standardize and split mode); text_vectorization.json holds the ids Keras returned for probe
//! texts with punctuation, mixed case, non-ASCII letters and punctuation, unknown words, odd
//! whitespace and an empty string. Both made by tools/text_fixtures.py.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use wgnn::text::text_vectorization_from_keras;

fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/text")
        .join(name)
}

/// The model's layer entries and every zip entry under assets/.
fn read_keras(path: &Path) -> (Vec<Value>, Vec<(String, Vec<u8>)>) {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut config = String::new();
    zip.by_name("config.json")
        .unwrap()
        .read_to_string(&mut config)
        .unwrap();
    let config: Value = serde_json::from_str(&config).unwrap();
    let layers = config["config"]["layers"].as_array().unwrap().clone();
    let mut assets = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).unwrap();
        let name = entry.name().unwrap().to_string();
        if name.starts_with("assets/") {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).unwrap();
            assets.push((name, bytes));
        }
    }
    (layers, assets)
}

#[test]
fn every_text_vectorization_layer_matches_keras() {
    let path = fixture_path("text_vectorization.keras");
    let (layers, assets) = read_keras(&path);
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_path("text_vectorization.json")).unwrap(),
    )
    .unwrap();
    let texts: Vec<&str> = expected["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let mut checked = 0;
    for layer in layers
        .iter()
        .filter(|l| l["class_name"] == "TextVectorization")
    {
        let name = layer["config"]["name"].as_str().unwrap();
        let spec = text_vectorization_from_keras(&path, name, &layer["config"], &assets)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(spec.name, name);
        assert_eq!(spec.vocabulary[0], "");
        assert_eq!(spec.vocabulary[1], "[UNK]");
        let got = spec.vectorize(&texts);
        let want: Vec<Vec<i64>> = expected["expected"][name]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap())
                    .collect()
            })
            .collect();
        let got_rows: Vec<Vec<i64>> = got.rows().into_iter().map(|r| r.to_vec()).collect();
        assert_eq!(got_rows, want, "layer {name}");
        checked += 1;
    }
    assert_eq!(checked, 6);
}

#[test]
fn whole_layer_entry_is_accepted_too() {
    let path = fixture_path("text_vectorization.keras");
    let (layers, assets) = read_keras(&path);
    let layer = layers
        .iter()
        .find(|l| l["config"]["name"] == "tv_adapted")
        .unwrap();
    let spec = text_vectorization_from_keras(&path, "tv_adapted", layer, &assets).unwrap();
    assert_eq!(spec.output_sequence_length, Some(12));
    assert_eq!(
        spec.standardize.as_deref(),
        Some("lower_and_strip_punctuation")
    );
    assert_eq!(spec.split.as_deref(), Some("whitespace"));
}

fn base_config() -> Value {
    json!({
        "name": "tv", "standardize": "lower_and_strip_punctuation", "split": "whitespace",
        "ngrams": null, "output_mode": "int", "output_sequence_length": 4, "ragged": false,
        "vocabulary": ["enak", "sekali"], "encoding": "utf-8", "vocabulary_size": 4
    })
}

fn error_for(field: &str, value: Value) -> String {
    let mut config = base_config();
    config[field] = value;
    text_vectorization_from_keras(Path::new("m.keras"), "tv", &config, &[])
        .unwrap_err()
        .to_string()
}

#[test]
fn unsupported_options_name_the_layer_and_field() {
    let e = error_for("output_mode", json!("multi_hot"));
    assert!(
        e.starts_with(
            "m.keras: layer 'tv' (TextVectorization): output_mode: \"multi_hot\" is not supported"
        ),
        "{e}"
    );
    let e = error_for("ngrams", json!(2));
    assert!(
        e.contains("layer 'tv' (TextVectorization): ngrams: 2 is not supported"),
        "{e}"
    );
    let e = error_for("ragged", json!(true));
    assert!(e.contains("ragged: ragged output is not supported"), "{e}");
    let e = error_for(
        "standardize",
        json!({"module": "builtins", "class_name": "function", "config": "my_fn"}),
    );
    assert!(
        e.contains("standardize: custom standardize callables are not supported"),
        "{e}"
    );
    let e = error_for(
        "split",
        json!({"module": "builtins", "class_name": "function", "config": "my_split"}),
    );
    assert!(
        e.contains("split: custom split callables are not supported"),
        "{e}"
    );
    let e = error_for("vocabulary", json!("vocab.txt"));
    assert!(
        e.contains("vocabulary: a vocabulary file path ('vocab.txt') is not supported"),
        "{e}"
    );
    let e = error_for("vocabulary_size", json!(7));
    assert!(
        e.contains("vocabulary_size: config says 7 but the saved vocabulary holds 4 tokens"),
        "{e}"
    );
    let e = error_for("vocabulary", json!(["a", "b", "a"]));
    assert!(e.contains("vocabulary: token 'a' is repeated"), "{e}");
    let e = error_for("vocabulary", Value::Null);
    assert!(
        e.contains("vocabulary: no vocabulary in the config and no assets"),
        "{e}"
    );
}

#[test]
fn several_adapted_layers_are_told_apart_by_vocabulary_size() {
    let assets = vec![
        (
            "assets/layers/text_vectorization/vocabulary.txt".to_string(),
            b"\n[UNK]\na\nb".to_vec(),
        ),
        (
            "assets/layers/text_vectorization_1/vocabulary.txt".to_string(),
            b"\n[UNK]\nc".to_vec(),
        ),
        (
            "assets/layers/text_vectorization_1/_lookup_layer/vocabulary.txt".to_string(),
            b"\n[UNK]\nc".to_vec(),
        ),
    ];
    let mut config = base_config();
    config["vocabulary"] = Value::Null;
    config["vocabulary_size"] = json!(3);
    let spec = text_vectorization_from_keras(Path::new("m.keras"), "tv", &config, &assets).unwrap();
    assert_eq!(spec.vocabulary, vec!["", "[UNK]", "c"]);
    assert_eq!(
        spec.vectorize(&["C, a!", ""])
            .rows()
            .into_iter()
            .map(|r| r.to_vec())
            .collect::<Vec<_>>(),
        vec![vec![2, 1, 0, 0], vec![0, 0, 0, 0]]
    );

    config["vocabulary_size"] = Value::Null;
    let e = text_vectorization_from_keras(Path::new("m.keras"), "tv", &config, &assets)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("vocabulary: cannot tell which saved vocabulary is this layer's: 2 candidates"),
        "{e}"
    );
}
