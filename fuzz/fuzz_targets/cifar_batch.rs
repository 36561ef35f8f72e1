//! Any bytes as a CIFAR-10 binary batch: the in-memory decoder, and the file reader the
//! dataset uses (which checks the length first).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wgnn::data::cifar10;

fuzz_target!(|data: &[u8]| {
    let _ = cifar10::decode_records(data, Path::new("data_batch_1.bin"), 0);
    let path = wgnn_fuzz::write_scratch("data_batch_1.bin", data);
    let _ = cifar10::read_batch_file(&path);
});
