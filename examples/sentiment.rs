//! Label Indonesian sentences with a NusaX sentiment model (Keras Tokenizer + SimpleRNN/LSTM).
//!
//! cargo run --release --example sentiment -- MODEL.keras TOKENIZER.json "kalimat ..." ...

use wgnn::text::Tokenizer;
use wgnn::{Backend, Model};

fn main() -> wgnn::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_path, tokenizer_path, sentences @ ..] = args.as_slice() else {
        eprintln!("usage: sentiment MODEL.keras TOKENIZER.json SENTENCE...");
        std::process::exit(2);
    };
    let model = Model::load(model_path)?;
    let tokenizer = Tokenizer::load(std::path::Path::new(tokenizer_path))?;
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();

    // Token ids exactly as Keras made them: texts_to_sequences + post padding to the model's length.
    let input = wgnn::eval::texts_to_input(&model, Some(&tokenizer), &texts)?;
    let probs = model.run(&input, Backend::Auto)?;
    let labels = wgnn::data::nusax::DEFAULT_LABELS;
    for (text, row) in texts.iter().zip(probs.outer_iter()) {
        let best = row
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        println!(
            "{:<8} {:?}  {text}",
            labels[best],
            row.iter().collect::<Vec<_>>()
        );
    }
    Ok(())
}
