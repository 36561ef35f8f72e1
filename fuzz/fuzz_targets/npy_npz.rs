//! Any bytes as an `.npy` (`wgnn::npy::read`, the CLI's input reader) and as an `.npz` of
//! weights (`NpzWeights::from_bytes`, which also parses each entry as `.npy`).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wgnn::keras::weights::{NpzWeights, WeightSource};

fuzz_target!(|data: &[u8]| {
    let path = wgnn_fuzz::write_scratch("input.npy", data);
    let _ = wgnn::npy::read(&path);
    let _ = wgnn::keras::weights::read_npy_f32(data);

    if let Ok(npz) = NpzWeights::from_bytes(Path::new("fuzz.npz"), data.to_vec()) {
        // Positional: take a few arrays as the builder would, then check for leftovers.
        let mut source = WeightSource::Npz(npz);
        for count in [2, 1, 3] {
            let _ = source.take("layer", "group", &[], count);
        }
        let _ = source.finish();
    }
});
