//! The Keras Tokenizer port against Keras itself: fits, sequences and pad_sequences computed by
//! tools/text_fixtures.py (tests/fixtures/text/tokenizer_cases.json), and the seed NusaX
//! tokenizer (env WGNN_SEED_MODELS) refitted on NusaX train.csv (env WGNN_DATA).

mod common;

use common::env_dir;
use std::path::Path;

use serde_json::Value;
use wgnn::text::{pad_sequences, Side, Tokenizer, TokenizerOptions};

fn fixture() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/text/tokenizer_cases.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn sequences(v: &Value) -> Vec<Vec<i64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_i64().unwrap())
                .collect()
        })
        .collect()
}

fn pairs(v: &Value) -> Vec<(String, u64)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_u64().unwrap()))
        .collect()
}

fn options_from(v: &Value) -> TokenizerOptions {
    let mut o = TokenizerOptions::default();
    if let Some(t) = v.get("oov_token") {
        o.oov_token = t.as_str().map(str::to_string);
    }
    if let Some(n) = v.get("num_words") {
        o.num_words = n.as_u64().map(|n| n as usize);
    }
    if let Some(b) = v.get("lower") {
        o.lower = b.as_bool().unwrap();
    }
    if let Some(f) = v.get("filters") {
        o.filters = f.as_str().unwrap().to_string();
    }
    if let Some(s) = v.get("split") {
        o.split = s.as_str().unwrap().to_string();
    }
    if let Some(c) = v.get("char_level") {
        o.char_level = c.as_bool().unwrap();
    }
    o
}

#[test]
fn fit_on_texts_matches_keras_for_every_option() {
    let fixture = fixture();
    let probe = strings(&fixture["seed_nusax"]["texts"]);
    for case in fixture["fits"].as_array().unwrap() {
        let options = &case["options"];
        let mut tokenizer = Tokenizer::new(options_from(options));
        tokenizer.fit_on_texts(&strings(&case["texts"]));
        let word_index: Vec<(String, u64)> = tokenizer
            .word_index()
            .map(|(w, i)| (w.to_string(), i as u64))
            .collect();
        assert_eq!(
            word_index,
            pairs(&case["word_index"]),
            "word_index for {options}"
        );
        let word_counts: Vec<(String, u64)> = tokenizer
            .word_counts()
            .map(|(w, c)| (w.to_string(), c))
            .collect();
        assert_eq!(
            word_counts,
            pairs(&case["word_counts"]),
            "word_counts for {options}"
        );
        let mut word_docs: Vec<(String, u64)> = tokenizer
            .word_docs()
            .map(|(w, c)| (w.to_string(), c))
            .collect();
        word_docs.sort();
        assert_eq!(
            word_docs,
            pairs(&case["word_docs"]),
            "word_docs for {options}"
        );
        assert_eq!(
            tokenizer.document_count(),
            case["document_count"].as_u64().unwrap()
        );
        if !probe.is_empty() {
            assert_eq!(
                tokenizer.texts_to_sequences(&probe),
                sequences(&case["sequences"]),
                "sequences for {options}"
            );
        }
    }
}

#[test]
fn pad_sequences_matches_keras() {
    let fixture = fixture();
    let pads = &fixture["pad_sequences"];
    let input = sequences(&pads["sequences"]);
    let cases = pads["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 24);
    for case in cases {
        let maxlen = case["maxlen"].as_u64().map(|n| n as usize);
        let padding: Side = case["padding"].as_str().unwrap().parse().unwrap();
        let truncating: Side = case["truncating"].as_str().unwrap().parse().unwrap();
        let value = case["value"].as_i64().unwrap();
        let got = pad_sequences(&input, maxlen, padding, truncating, value);
        let expected = sequences(&case["expected"]);
        let got_rows: Vec<Vec<i64>> = got.rows().into_iter().map(|r| r.to_vec()).collect();
        assert_eq!(got_rows, expected, "{case}");
    }
}

#[test]
fn to_json_round_trips() {
    let mut tokenizer = Tokenizer::new(TokenizerOptions {
        oov_token: Some("<UNK>".into()),
        num_words: Some(10),
        ..TokenizerOptions::default()
    });
    tokenizer.fit_on_texts(&[
        "Café enak, enak sekali",
        "tidak \"enak\"\tbanget",
        "😀 emoji ok",
    ]);
    let json = tokenizer.to_json();
    assert!(json.is_ascii(), "{json}");
    assert!(json.starts_with(
        "{\"class_name\": \"Tokenizer\", \"config\": {\"num_words\": 10, \"filters\": "
    ));
    let back = Tokenizer::from_json_str(&json, Path::new("memory.json")).unwrap();
    assert_eq!(back, tokenizer);
    assert_eq!(back.to_json(), json);
}

#[test]
fn bad_tokenizer_json_names_the_field() {
    let e = Tokenizer::from_json_str(
        r#"{"class_name": "Tokenizer", "config": {"word_index": "[1, 2]"}}"#,
        Path::new("t.json"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("t.json: tokenizer word_index: not a JSON object"),
        "{e}"
    );
    let e = Tokenizer::from_json_str(
        r#"{"config": {"word_index": "{\"a\": 0}"}}"#,
        Path::new("t.json"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("word 'a' has id 0"), "{e}");
    let e = Tokenizer::from_json_str(r#"{"config": {"lower": "yes"}}"#, Path::new("t.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("tokenizer lower: expected true or false"), "{e}");
}

#[test]
fn fitting_nusax_train_reproduces_the_seed_tokenizer() {
    let (Some(seed), Some(data)) = (env_dir("WGNN_SEED_MODELS"), env_dir("WGNN_DATA")) else {
        return;
    };
    let seed_path = seed.join("nusax_tokenizer.json");
    let keras = Tokenizer::load(&seed_path).unwrap();
    let train = wgnn::data::Nusax::locate(&data)
        .unwrap()
        .load(wgnn::data::nusax::Split::Train, None)
        .unwrap();
    let mut ours = Tokenizer::new(TokenizerOptions {
        oov_token: Some("<UNK>".into()),
        ..TokenizerOptions::default()
    });
    ours.fit_on_texts(&train.texts);

    assert_eq!(ours.vocabulary_size(), 2795); // <UNK> and 2,794 words; Embedding(2796) covers ids 0..=2795
    assert!(
        ours.word_index().eq(keras.word_index()),
        "word_index differs from nusax_tokenizer.json"
    );
    assert!(ours.word_counts().eq(keras.word_counts()));
    let sorted = |t: &Tokenizer| {
        let mut v: Vec<(String, u64)> = t.word_docs().map(|(w, c)| (w.to_string(), c)).collect();
        v.sort();
        v
    };
    assert_eq!(sorted(&ours), sorted(&keras));
    assert_eq!(ours.document_count(), keras.document_count());
    assert_eq!(ours.options(), keras.options());

    // Keras's ids for the probe sentences, from both tokenizers.
    let fixture = fixture();
    let seed_case = &fixture["seed_nusax"];
    let probe = strings(&seed_case["texts"]);
    let expected = sequences(&seed_case["sequences"]);
    assert_eq!(keras.texts_to_sequences(&probe), expected);
    assert_eq!(ours.texts_to_sequences(&probe), expected);
    let padded = ours.texts_to_padded(&probe, 60, Side::Post, Side::Post);
    let padded_rows: Vec<Vec<i64>> = padded.rows().into_iter().map(|r| r.to_vec()).collect();
    assert_eq!(padded_rows, sequences(&seed_case["padded_60_post_post"]));
}

#[test]
fn loaded_seed_tokenizer_writes_back_the_same_bytes() {
    let Some(seed) = env_dir("WGNN_SEED_MODELS") else {
        return;
    };
    let path = seed.join("nusax_tokenizer.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(Tokenizer::load(&path).unwrap().to_json(), text);
}
