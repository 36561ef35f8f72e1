//! Replays the inputs the fuzzers found (fuzz/artifacts-found/) through the same library calls,
//! in the ordinary test build: each once crashed, hung or exhausted memory, and each must now be a
//! clean `Err` naming the file. The fuzz crate needs ASan and its own build; this keeps the fixes
//! guarded by `cargo test`.

use std::path::{Path, PathBuf};

use wgnn::keras::weights::{H5Weights, WeightSource};
use wgnn::Backend;

fn finding(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/artifacts-found")
        .join(name)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Every committed finding is replayed by one of the tests below.
#[test]
fn every_finding_is_replayed() {
    let mut names: Vec<String> = std::fs::read_dir(finding(""))
        .expect("fuzz/artifacts-found exists")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "npy_npz-4GiB-header-oom-c6bf4a47.npy",
            "npy_npz-nested-header-timeout-b2630562.npy",
            "weights_h5-self-linked-group.weights.h5",
            "weights_h5-stack-overflow-a022963f.weights.h5",
        ],
        "a new finding in fuzz/artifacts-found needs a replay test here"
    );
}

fn assert_npy_refused(name: &str, expect_in_message: &str) {
    let path = finding(name);
    let err = wgnn::npy::read(&path).expect_err("a malformed .npy must be refused");
    let message = err.to_string();
    assert!(message.contains(name), "message names the file: {message}");
    assert!(
        message.contains(expect_in_message),
        "message says what is wrong ({expect_in_message}): {message}"
    );
    assert!(!message.contains('\n'), "one line: {message}");
    let bytes = std::fs::read(&path).unwrap();
    assert!(wgnn::keras::weights::read_npy_f32(&bytes).is_err());
}

#[test]
fn npy_header_declaring_4_gib_is_refused() {
    assert_npy_refused(
        "npy_npz-4GiB-header-oom-c6bf4a47.npy",
        "header declares 4059165046 bytes",
    );
}

#[test]
fn npy_header_nested_deeply_is_refused_quickly() {
    // npyz's header parser took exponential time on this 243-byte file (it hung the fuzzer).
    assert_npy_refused(
        "npy_npz-nested-header-timeout-b2630562.npy",
        "header brackets nest",
    );
}

/// A weights file that once recursed without end. Whatever it parses to, loading it against each
/// fixture model is either an error naming the file, or — when the layers' own arrays are intact
/// and only an unused group is corrupt — exactly the model the clean weights give.
fn assert_h5_refused_or_intact(name: &str) {
    let path = finding(name);
    let bytes = std::fs::read(&path).unwrap();
    if let Ok(weights) = H5Weights::from_bytes(&path, bytes) {
        let mut source = WeightSource::H5(weights);
        let _ = source.take("conv2d", "conv2d", &[], 2);
        let _ = source.finish();
    }
    for stem in ["h5_weights_cnn", "h5_weights_rnn"] {
        let config = fixture(&format!("{stem}.json"));
        match wgnn::Model::load_with_weights(&config, &path) {
            Err(err) => {
                let message = err.to_string();
                assert!(message.contains(name), "message names the file: {message}");
                assert!(!message.contains('\n'), "one line: {message}");
            }
            Ok(model) => {
                let clean =
                    wgnn::Model::load_with_weights(&config, fixture(&format!("{stem}.weights.h5")))
                        .unwrap();
                let wgnn::npy::NpyArray::Float(x) =
                    wgnn::npy::read(&fixture(&format!("{stem}.input.npy"))).unwrap()
                else {
                    panic!("{stem}.input.npy holds float32");
                };
                let got = model.predict(x.view(), Backend::Cpu).unwrap();
                let want = clean.predict(x.view(), Backend::Cpu).unwrap();
                assert_eq!(got, want, "{name} loaded as {stem} but changed its output");
            }
        }
    }
}

#[test]
fn h5_group_linked_to_itself_is_refused_or_ignored() {
    assert_h5_refused_or_intact("weights_h5-self-linked-group.weights.h5");
}

#[test]
fn h5_stack_overflow_input_is_refused() {
    assert_h5_refused_or_intact("weights_h5-stack-overflow-a022963f.weights.h5");
}
