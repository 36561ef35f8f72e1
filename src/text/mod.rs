//! Text to token ids: a port of Keras's legacy `Tokenizer` (+ `pad_sequences`) and Keras 3's
//! `TextVectorization` layer (`output_mode="int"`).

pub mod tokenizer;
pub mod vectorization;

pub use tokenizer::{pad_sequences, text_to_word_sequence, Side, Tokenizer, TokenizerOptions};
pub use vectorization::text_vectorization_from_keras;
