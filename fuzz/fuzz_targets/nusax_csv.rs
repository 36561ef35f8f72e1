//! Any bytes as a NusaX `id,text,label` CSV through `wgnn::data::nusax::read_csv`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wgnn::data::nusax;

fuzz_target!(|data: &[u8]| {
    let labels: Vec<String> = nusax::DEFAULT_LABELS
        .iter()
        .map(|s| s.to_string())
        .collect();
    let path = wgnn_fuzz::write_scratch("train.csv", data);
    if let Ok(examples) = nusax::read_csv(&path, &labels) {
        let _ = examples.text_refs();
    }
});
