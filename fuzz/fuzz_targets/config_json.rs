//! Any bytes as a model JSON, loaded with a fixed, valid weights file through
//! `Model::load_with_weights`. The first byte picks the weights (so one corpus reaches CNN,
//! RNN, functional and npz models); the rest is the JSON.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// (scratch tag, bytes) of each fixed weights file, from the crate's test fixtures.
const WEIGHTS: [(&str, &[u8]); 5] = [
    (
        "cnn.weights.h5",
        include_bytes!("../../tests/fixtures/h5_weights_cnn.weights.h5"),
    ),
    (
        "rnn.weights.h5",
        include_bytes!("../../tests/fixtures/h5_weights_rnn.weights.h5"),
    ),
    (
        "functional_cnn.weights.h5",
        include_bytes!("../../tests/fixtures/h5_weights_functional_cnn.weights.h5"),
    ),
    (
        "functional_rnn.npz",
        include_bytes!("../../tests/fixtures/npz_weights_functional_rnn.npz"),
    ),
    (
        "bilstm.npz",
        include_bytes!("../../tests/fixtures/npz_weights_bilstm_unmasked.npz"),
    ),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, json)) = data.split_first() else {
        return;
    };
    static PATHS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    let weights = wgnn_fuzz::fixed_scratch_files(&PATHS, &WEIGHTS);
    let weights = &weights[selector as usize % weights.len()];
    let config = wgnn_fuzz::write_scratch("model.json", json);
    if let Ok(model) = wgnn::Model::load_with_weights(&config, weights) {
        wgnn_fuzz::exercise(&model);
    }
});
