//! Any bytes as a `.keras` file through `Model::load`: zip, config.json, model.weights.h5 and
//! assets/. Note the zip's CRC check rejects most mutations inside an entry; config_json and
//! weights_h5 reach those parsers directly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = wgnn_fuzz::write_scratch("model.keras", data);
    if let Ok(model) = wgnn::Model::load(&path) {
        wgnn_fuzz::exercise(&model);
    }
});
