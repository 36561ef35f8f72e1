//! GPU parity with Keras: every fixture in `tests/fixtures/manifest.json` loads, predicts with
//! `Backend::Gpu`, and matches Keras's own output within |got - expected| <= 1e-4 * (1 + |expected|).
//! The manifest is walked as a whole, so a new fixture is covered without editing this file.
//!
//! Without a GPU adapter this fails when env `CI` is set and prints a note otherwise.

mod common;

use common::{
    assert_matches_keras, fixtures_dir, load_fixture_model, manifest, predict_fixture, read_npy_f32,
};
use wgnn::Backend;

#[test]
fn every_keras_fixture_matches_on_the_gpu() {
    let fixtures = manifest().fixtures;
    assert!(!fixtures.is_empty(), "the fixture manifest lists no models");
    let mut failures = Vec::new();
    for fx in &fixtures {
        let model = match load_fixture_model(fx) {
            Ok(model) => model,
            Err(e) => {
                failures.push(format!("{}: load failed: {e}", fx.name));
                continue;
            }
        };
        let got = match predict_fixture(fx, &model, Backend::Gpu) {
            Ok(got) => got,
            Err(e) if common::no_adapter_outside_ci(&e) => return,
            Err(e) => {
                failures.push(format!("{}: predict failed: {e}", fx.name));
                continue;
            }
        };
        let expected = read_npy_f32(&fixtures_dir().join(&fx.expected));
        let compared = std::panic::catch_unwind(|| {
            assert_matches_keras(&fx.name, Backend::Gpu, &got, &expected)
        });
        if let Err(panic) = compared {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| format!("{}: mismatch", fx.name));
            failures.push(message);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures differ from Keras on the GPU:\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n")
    );
}
