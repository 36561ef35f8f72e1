//! Any bytes as a Keras `Tokenizer.to_json()` file, then the loaded tokenizer turns a few texts
//! into ids and is written back out.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

const TEXTS: [&str; 5] = [
    "",
    "Enak enak ENAK sekali, harganya murah!",
    "Murah meriah\ttapi\nenak",
    "ÉCOLE naïve — ünïcödé 🙂",
    "   ",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(tokenizer) = wgnn::text::Tokenizer::from_json_str(text, Path::new("tokenizer.json"))
    else {
        return;
    };
    let _ = tokenizer.texts_to_sequences(&TEXTS);
    let _ = tokenizer.texts_to_padded(&TEXTS, 8, wgnn::text::Side::Pre, wgnn::text::Side::Post);
    let _ = tokenizer.vocabulary_size();
    let _ = tokenizer.to_json();
});
