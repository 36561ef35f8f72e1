//! Any bytes as a Keras 3 `.weights.h5`: parsed in memory by `H5Weights::from_bytes`, then
//! read the way the model builder does (`take` on the groups Keras writes, `finish`). Files that
//! parse are also loaded against two fixed model JSONs, which checks every array's shape.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wgnn::keras::weights::{H5Weights, WeightSource};

/// (layer name, h5 group, sub-path, arrays) as the builder asks for them.
const TAKES: [(&str, &str, &[&str], usize); 9] = [
    ("conv2d", "conv2d", &[], 2),
    ("conv2d_1", "conv2d_1", &[], 2),
    ("dense", "dense", &[], 2),
    ("embedding", "embedding", &[], 1),
    ("lstm", "lstm", &["cell"], 3),
    ("simple_rnn", "simple_rnn", &["cell"], 3),
    (
        "bidirectional",
        "bidirectional",
        &["forward_layer", "cell"],
        3,
    ),
    (
        "bidirectional",
        "bidirectional",
        &["backward_layer", "cell"],
        3,
    ),
    ("flatten", "flatten", &[], 0),
];

const CONFIGS: [(&str, &[u8]); 2] = [
    (
        "cnn.json",
        include_bytes!("../../tests/fixtures/h5_weights_cnn.json"),
    ),
    (
        "rnn.json",
        include_bytes!("../../tests/fixtures/h5_weights_rnn.json"),
    ),
];

fuzz_target!(|data: &[u8]| {
    let Ok(weights) = H5Weights::from_bytes(Path::new("fuzz.weights.h5"), data.to_vec()) else {
        return;
    };
    let mut source = WeightSource::H5(weights);
    for (layer, group, sub, count) in TAKES {
        let _ = source.take(layer, group, sub, count);
    }
    let _ = source.finish();

    let weights_path = wgnn_fuzz::write_scratch("weights.h5", data);
    static PATHS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    for config in wgnn_fuzz::fixed_scratch_files(&PATHS, &CONFIGS) {
        if let Ok(model) = wgnn::Model::load_with_weights(config, &weights_path) {
            wgnn_fuzz::exercise(&model);
        }
    }
});
