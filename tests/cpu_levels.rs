//! The CPU path at every SIMD level this host runs (`WGNN_CPU`, see `wgnn::cpu::simd`): each
//! level matches Keras on every committed fixture, and the vector levels (AVX2, AVX-512) give
//! the same bits on the fixtures and on the shipped CIFAR-10 models (their Winograd, im2col,
//! direct-convolution, pooling and activation loops are the dispatched ones). The baseline level
//! runs an image layer on im2col instead of the direct convolution, so its bits differ there;
//! it is checked against Keras only. The level is fixed once per process, so the driver reruns
//! this test binary once per level.

mod common;

use std::process::Command;

use common::graph_fixtures::{graph_inputs, graph_manifest, load_graph_fixture};
use common::{fixtures_dir, manifest, predict_fixture, read_npy_f32, within_tolerance};
use wgnn::cpu::simd::{self, Level};
use wgnn::{Backend, Model};

/// FNV-1a over the bits of every output, in order: equal digests mean equal outputs.
struct Digest(u64);

impl Digest {
    fn add(&mut self, values: &ndarray::ArrayD<f32>) {
        for v in values.iter() {
            for byte in v.to_bits().to_le_bytes() {
                self.0 = (self.0 ^ byte as u64).wrapping_mul(0x100_0000_01b3);
            }
        }
    }
}

fn assert_close(what: &str, got: &ndarray::ArrayD<f32>, want: &ndarray::ArrayD<f32>) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let bad = got
        .iter()
        .zip(want.iter())
        .filter(|(g, w)| !within_tolerance(**g, **w))
        .count();
    assert_eq!(
        bad,
        0,
        "{what}: {bad} values off Keras at {}",
        simd::level().name()
    );
}

/// A batch of 8 CIFAR-sized images with values spread over [0, 1).
fn images() -> ndarray::ArrayD<f32> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[8, 32, 32, 3]), |_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    })
}

/// Run by [`every_cpu_level_matches_keras_and_the_vector_levels_bit_for_bit`] under each
/// `WGNN_CPU`: every fixture against Keras, then the digest of all outputs on stdout.
#[test]
#[ignore = "run once per CPU level by every_cpu_level_matches_keras_and_the_vector_levels_bit_for_bit"]
fn fixtures_at_this_level() {
    let wanted = std::env::var("WGNN_CPU").expect("the driver sets WGNN_CPU");
    let level = simd::checked_level().expect("WGNN_CPU is valid");
    assert_eq!(
        Level::parse(&wanted),
        Some(level),
        "WGNN_CPU={wanted} is in use"
    );
    let mut digest = Digest(0xcbf2_9ce4_8422_2325);
    let mut outputs = 0;
    for fx in manifest().fixtures {
        let model = common::load_fixture_model(&fx).expect("fixture loads");
        let got = predict_fixture(&fx, &model, Backend::Cpu).expect("fixture runs");
        let want = read_npy_f32(&fixtures_dir().join(&fx.expected));
        assert_close(&fx.name, &got, &want);
        digest.add(&got);
        outputs += 1;
    }
    for folder in ["", "conv", "norm", "ir", "rnn", "merge"] {
        let dir = common::graph_fixtures::graph_dir().join(folder);
        // The keras.applications recipes (graph_apps.rs) are too large to run three times.
        for fx in graph_manifest(folder)
            .fixtures
            .into_iter()
            .filter(|f| f.form != "recipe")
        {
            let model = load_graph_fixture(&dir, &fx).expect("graph fixture loads");
            let inputs = graph_inputs(&dir, &fx, &model).expect("graph fixture inputs");
            let got = model
                .run_all(&inputs, Backend::Cpu)
                .expect("graph fixture runs");
            for (got, want) in got.iter().zip(&fx.outputs) {
                assert_close(&fx.name, got, &read_npy_f32(&dir.join(&want.file)));
                digest.add(got);
                outputs += 1;
            }
        }
    }
    let x = images();
    for file in ["models/cifar10_base.keras", "models/cifar10_vgg6.keras"] {
        let model = Model::load(file).expect("shipped model loads");
        let probs = model
            .predict(x.view(), Backend::Cpu)
            .expect("shipped model runs");
        // Outputs that depend on the input: the 8 images are not classified alike.
        let spread = probs.std(0.0);
        assert!(spread > 1e-3, "{file}: outputs barely vary ({spread})");
        digest.add(&probs);
        outputs += 1;
    }
    println!("LEVEL-DIGEST {} {outputs} {:016x}", level.name(), digest.0);
}

#[test]
fn every_cpu_level_matches_keras_and_the_vector_levels_bit_for_bit() {
    let host = simd::detected();
    let mut digests = Vec::new();
    for level in Level::ALL.into_iter().filter(|l| *l <= host) {
        let out = Command::new(std::env::current_exe().expect("the test binary"))
            .args([
                "fixtures_at_this_level",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env("WGNN_CPU", level.name())
            .output()
            .expect("the test binary reruns");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "WGNN_CPU={}: {}\n{stdout}",
            level.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("LEVEL-DIGEST "))
            .unwrap_or_else(|| panic!("WGNN_CPU={}: no digest in\n{stdout}", level.name()))
            .to_string();
        eprintln!("WGNN_CPU={}: {line}", level.name());
        let digest = line.rsplit(' ').next().expect("a digest").to_string();
        digests.push((level, digest));
    }
    // Every level up to the host's ran (on an AVX2 host: sse2 and avx2), each matching Keras.
    eprintln!("host level {}: ran {} level(s)", host.name(), digests.len());
    let vector: Vec<_> = digests.iter().filter(|(l, _)| *l >= Level::Avx2).collect();
    for (level, digest) in vector.iter().skip(1) {
        assert_eq!(
            digest,
            &vector[0].1,
            "{} differs from {} in some output bit",
            level.name(),
            vector[0].0.name()
        );
    }
}

#[test]
fn a_bad_or_unsupported_level_is_refused_in_one_line() {
    let wgnn = env!("CARGO_BIN_EXE_wgnn");
    let out = Command::new(wgnn)
        .args(["info", "models/cifar10_base.keras"])
        .env("WGNN_CPU", "avx9")
        .output()
        .expect("wgnn runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "WGNN_CPU=avx9 was accepted");
    assert!(stderr.contains("WGNN_CPU=\"avx9\""), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
