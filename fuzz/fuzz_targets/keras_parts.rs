//! A `.keras` zip assembled from fuzzed parts, so the CRC check that stops most `keras_file`
//! mutations does not apply: input = u16 LE length L, then L bytes of config.json, then the
//! rest as the TextVectorization vocabulary asset. The weights are the fixed, valid
//! model.weights.h5 of the seed `tv_rnn.keras` (TextVectorization + Embedding + SimpleRNN +
//! Dense). Reaches the vocabulary and assets/ code only a `.keras` file carries.
#![no_main]

use std::io::{Cursor, Read, Write};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use zip::write::SimpleFileOptions;

const SEED: &[u8] = include_bytes!("../corpus/keras_file/tv_rnn.keras");

fn seed_weights() -> &'static [u8] {
    static WEIGHTS: OnceLock<Vec<u8>> = OnceLock::new();
    WEIGHTS.get_or_init(|| {
        let mut zip = match zip::ZipArchive::new(Cursor::new(SEED)) {
            Ok(z) => z,
            Err(e) => panic!("fuzz harness: seed tv_rnn.keras is not a zip: {e}"),
        };
        let mut bytes = Vec::new();
        match zip.by_name("model.weights.h5") {
            Ok(mut entry) => {
                if let Err(e) = entry.read_to_end(&mut bytes) {
                    panic!("fuzz harness: seed weights unreadable: {e}");
                }
            }
            Err(e) => panic!("fuzz harness: seed has no model.weights.h5: {e}"),
        }
        bytes
    })
}

fn keras_zip(config: &[u8], vocabulary: &[u8]) -> zip::result::ZipResult<Vec<u8>> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let stored = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("config.json", stored)?;
    zip.write_all(config)?;
    zip.start_file("model.weights.h5", stored)?;
    zip.write_all(seed_weights())?;
    for name in [
        "assets/layers/text_vectorization/vocabulary.txt",
        "assets/layers/text_vectorization/_lookup_layer/vocabulary.txt",
    ] {
        zip.start_file(name, stored)?;
        zip.write_all(vocabulary)?;
    }
    Ok(zip.finish()?.into_inner())
}

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let config_len = (u16::from_le_bytes(*len) as usize).min(rest.len());
    let (config, vocabulary) = rest.split_at(config_len);
    let bytes = match keras_zip(config, vocabulary) {
        Ok(b) => b,
        Err(e) => panic!("fuzz harness: cannot write the zip: {e}"),
    };
    let path = wgnn_fuzz::write_scratch("parts.keras", &bytes);
    if let Ok(model) = wgnn::Model::load(&path) {
        wgnn_fuzz::exercise(&model);
    }
});
