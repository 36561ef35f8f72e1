//! Keras 3's `TextVectorization` layer at inference, `output_mode="int"`: read its vocabulary from
//! a `.keras` file and turn raw strings into token ids exactly as TensorFlow does.
//!
//! How Keras 3.15 saves the vocabulary: a vocabulary given to the constructor stays inline in the
//! layer's config (`"vocabulary": [...]`); an adapted one is written to the zip as
//! `assets/<object path>/vocabulary.txt` (and again under `_lookup_layer/`), one token a line,
//! joined by `"\n"`, starting with `""` (padding, id 0) and `"[UNK]"` (id 1). The object path is
//! the snake-cased class name, numbered per container (`layers/text_vectorization`,
//! `layers/text_vectorization_1`, ...), not the layer's name.

use std::collections::HashMap;
use std::path::Path;

use ndarray::Array2;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::graph::TextVectorizationSpec;

/// The padding token, id 0.
pub const MASK_TOKEN: &str = "";
/// The out-of-vocabulary token, id 1.
pub const OOV_TOKEN: &str = "[UNK]";

const CLASS: &str = "TextVectorization";

/// Builds the spec of the `TextVectorization` layer `layer_name` from its Keras config (the
/// layer's `config` object, or the whole layer entry holding it) and the `.keras` zip's entries
/// under `assets/` (full zip path, bytes). `path` names the model file in errors.
pub fn text_vectorization_from_keras(
    path: &Path,
    layer_name: &str,
    config: &Value,
    assets: &[(String, Vec<u8>)],
) -> Result<TextVectorizationSpec> {
    let config = match config.get("config") {
        Some(inner) if config.get("class_name").is_some() => inner,
        _ => config,
    };
    let layer_error = |field: &str, message: String| Error::Layer {
        path: path.to_path_buf(),
        layer: layer_name.to_string(),
        class: CLASS.to_string(),
        field: field.to_string(),
        message,
    };
    let get = |field: &str| config.get(field).filter(|v| !v.is_null());

    match get("output_mode") {
        None => {}
        Some(Value::String(mode)) if mode == "int" => {}
        Some(other) => {
            return Err(layer_error(
                "output_mode",
                format!("{other} is not supported (only \"int\")"),
            ))
        }
    }
    let standardize = match get("standardize") {
        None => None,
        Some(Value::String(s))
            if ["lower_and_strip_punctuation", "lower", "strip_punctuation"]
                .contains(&s.as_str()) =>
        {
            Some(s.clone())
        }
        Some(Value::String(s)) => {
            return Err(layer_error(
                "standardize",
                format!("'{s}' is not supported (expected lower_and_strip_punctuation, lower, strip_punctuation or null)"),
            ))
        }
        Some(_) => {
            return Err(layer_error(
                "standardize",
                "custom standardize callables are not supported".into(),
            ))
        }
    };
    let split = match get("split") {
        None => None,
        Some(Value::String(s)) if s == "whitespace" || s == "character" => Some(s.clone()),
        Some(Value::String(s)) => {
            return Err(layer_error(
                "split",
                format!("'{s}' is not supported (expected whitespace, character or null)"),
            ))
        }
        Some(_) => {
            return Err(layer_error(
                "split",
                "custom split callables are not supported".into(),
            ))
        }
    };
    if let Some(ngrams) = get("ngrams") {
        return Err(layer_error(
            "ngrams",
            format!("{ngrams} is not supported (only null)"),
        ));
    }
    if get("ragged").and_then(Value::as_bool).unwrap_or(false) {
        return Err(layer_error(
            "ragged",
            "ragged output is not supported (only dense, padded ids)".into(),
        ));
    }
    if let Some(encoding) = get("encoding") {
        let utf8 = encoding
            .as_str()
            .is_some_and(|e| e.eq_ignore_ascii_case("utf-8") || e.eq_ignore_ascii_case("utf8"));
        if !utf8 {
            return Err(layer_error(
                "encoding",
                format!("{encoding} is not supported (only utf-8)"),
            ));
        }
    }
    let output_sequence_length = match get("output_sequence_length") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or_else(|| {
            layer_error(
                "output_sequence_length",
                format!("expected a non-negative integer or null, found {v}"),
            )
        })? as usize),
    };

    let vocabulary = match get("vocabulary") {
        Some(Value::Array(items)) => {
            let tokens = items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        layer_error("vocabulary", format!("entry {i} is {v}, not a string"))
                    })
                })
                .collect::<Result<Vec<String>>>()?;
            with_special_tokens(tokens).map_err(|m| layer_error("vocabulary", m))?
        }
        Some(Value::String(file)) => {
            return Err(layer_error(
                "vocabulary",
                format!("a vocabulary file path ('{file}') is not supported; save the model after setting the vocabulary"),
            ))
        }
        Some(other) => {
            return Err(layer_error(
                "vocabulary",
                format!("expected a list of strings, found {other}"),
            ))
        }
        None => {
            let expected_size = get("vocabulary_size").and_then(Value::as_u64);
            let text = find_vocabulary_asset(assets, expected_size)
                .map_err(|m| layer_error("vocabulary", m))?;
            let mut lines = python_splitlines(&text);
            while lines.last().is_some_and(|l| l.is_empty()) {
                lines.pop();
            }
            with_special_tokens(lines).map_err(|m| layer_error("vocabulary", m))?
        }
    };
    if let Some(expected) = get("vocabulary_size").and_then(Value::as_u64) {
        if expected as usize != vocabulary.len() {
            return Err(layer_error(
                "vocabulary_size",
                format!(
                    "config says {expected} but the saved vocabulary holds {} tokens",
                    vocabulary.len()
                ),
            ));
        }
    }

    Ok(TextVectorizationSpec {
        name: layer_name.to_string(),
        vocabulary,
        output_sequence_length,
        standardize,
        split,
    })
}

/// Keras's `set_vocabulary`: a list that already starts with `""`, `"[UNK]"` is taken as is;
/// otherwise they are put in front. Repeated tokens and a misplaced `""` are errors, as in Keras.
fn with_special_tokens(tokens: Vec<String>) -> std::result::Result<Vec<String>, String> {
    if tokens.is_empty() {
        return Err("the vocabulary is empty".into());
    }
    let has_specials = tokens.len() >= 2 && tokens[0] == MASK_TOKEN && tokens[1] == OOV_TOKEN;
    let mut vocabulary = if has_specials {
        tokens
    } else {
        let mut v = vec![MASK_TOKEN.to_string(), OOV_TOKEN.to_string()];
        v.extend(tokens);
        v
    };
    let mut seen = std::collections::HashSet::new();
    for (i, token) in vocabulary.iter().enumerate().skip(2) {
        if token == MASK_TOKEN {
            return Err(format!("the padding token \"\" appears again at index {i}"));
        }
        if !seen.insert(token.as_str()) {
            return Err(format!("token '{token}' is repeated (index {i})"));
        }
    }
    vocabulary.shrink_to_fit();
    Ok(vocabulary)
}

/// Picks this layer's `vocabulary.txt` among the assets. With several TextVectorization layers
/// the zip paths do not name the layer, so the config's `vocabulary_size` decides.
fn find_vocabulary_asset(
    assets: &[(String, Vec<u8>)],
    expected_size: Option<u64>,
) -> std::result::Result<String, String> {
    // Folder of a TextVectorization object -> its vocabulary bytes (own file preferred over the
    // identical copy under _lookup_layer/).
    let mut candidates: Vec<(String, &[u8], bool)> = Vec::new();
    for (name, bytes) in assets {
        let Some(dir) = name.strip_suffix("/vocabulary.txt") else {
            continue;
        };
        let (dir, own) = match dir.strip_suffix("/_lookup_layer") {
            Some(parent) => (parent, false),
            None => (dir, true),
        };
        let object = dir.rsplit('/').next().unwrap_or(dir);
        let is_text_vectorization = object == "text_vectorization"
            || object
                .strip_prefix("text_vectorization_")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_text_vectorization {
            continue;
        }
        match candidates.iter_mut().find(|(d, _, _)| d == dir) {
            Some(existing) if own && !existing.2 => *existing = (dir.to_string(), bytes, own),
            Some(_) => {}
            None => candidates.push((dir.to_string(), bytes, own)),
        }
    }
    let decode = |dir: &str, bytes: &[u8]| -> std::result::Result<String, String> {
        String::from_utf8(bytes.to_vec())
            .map_err(|e| format!("{dir}/vocabulary.txt is not UTF-8: {e}"))
    };
    match candidates.as_slice() {
        [] => Err("no vocabulary in the config and no assets/.../text_vectorization*/vocabulary.txt in the file".into()),
        [(dir, bytes, _)] => decode(dir, bytes),
        _ => {
            let mut matching = Vec::new();
            for (dir, bytes, _) in &candidates {
                let text = decode(dir, bytes)?;
                let mut lines = python_splitlines(&text);
                while lines.last().is_some_and(|l| l.is_empty()) {
                    lines.pop();
                }
                let size = with_special_tokens(lines).map(|v| v.len() as u64).ok();
                if expected_size.is_some() && size == expected_size {
                    matching.push((dir.as_str(), text));
                }
            }
            match matching.as_slice() {
                [(_, text)] => Ok(text.clone()),
                [(_, first), rest @ ..] if rest.iter().all(|(_, t)| t == first) => Ok(first.clone()),
                _ => Err(format!(
                    "cannot tell which saved vocabulary is this layer's: {} candidates ({}) {}",
                    candidates.len(),
                    candidates.iter().map(|(d, _, _)| d.as_str()).collect::<Vec<_>>().join(", "),
                    match expected_size {
                        Some(n) => format!("and {} of them hold vocabulary_size = {n} tokens", matching.len()),
                        None => "and the config has no vocabulary_size".to_string(),
                    }
                )),
            }
        }
    }
}

/// Python's `str.splitlines()` (Keras reads `vocabulary.txt` with it): splits on `\n`, `\r`,
/// `\r\n`, `\x0b`, `\x0c`, `\x1c`-`\x1e`, `\x85`, U+2028 and U+2029.
fn python_splitlines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                lines.push(std::mem::take(&mut current));
            }
            '\n' | '\u{b}' | '\u{c}' | '\u{1c}' | '\u{1d}' | '\u{1e}' | '\u{85}' | '\u{2028}'
            | '\u{2029}' => lines.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}

/// TensorFlow's `tf.strings.lower` without an encoding: ASCII letters only ("É" stays).
fn ascii_lower(text: &str) -> String {
    text.to_ascii_lowercase()
}

/// Keras's punctuation regex `[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']` is exactly the 32
/// ASCII punctuation characters; non-ASCII punctuation stays.
fn strip_ascii_punctuation(text: &str) -> String {
    text.chars().filter(|c| !c.is_ascii_punctuation()).collect()
}

/// Standardizes and splits one text as the layer does, before the vocabulary lookup.
pub fn tokenize(spec: &TextVectorizationSpec, text: &str) -> Vec<String> {
    let lowered = match spec.standardize.as_deref() {
        Some("lower") | Some("lower_and_strip_punctuation") => ascii_lower(text),
        _ => text.to_string(),
    };
    let standardized = match spec.standardize.as_deref() {
        Some("strip_punctuation") | Some("lower_and_strip_punctuation") => {
            strip_ascii_punctuation(&lowered)
        }
        _ => lowered,
    };
    match spec.split.as_deref() {
        // tf.strings.split with no separator: runs of ASCII whitespace (space, \t, \n, \v, \f,
        // \r) separate tokens; a no-break space does not.
        Some("whitespace") => standardized
            .split([' ', '\t', '\n', '\u{b}', '\u{c}', '\r'])
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        Some("character") => standardized.chars().map(String::from).collect(),
        // No split: the whole standardized text is one token ("" is the padding token, id 0).
        _ => vec![standardized],
    }
}

impl TextVectorizationSpec {
    /// Token ids (N, T) for raw texts, as the Keras layer returns them: unknown tokens are 1,
    /// padding is 0 at the end; T is `output_sequence_length` (longer texts are cut at the end),
    /// else the longest text in this batch.
    pub fn vectorize(&self, texts: &[&str]) -> Array2<i64> {
        let lookup: HashMap<&str, i64> = self
            .vocabulary
            .iter()
            .enumerate()
            .skip(2)
            .map(|(i, token)| (token.as_str(), i as i64))
            .collect();
        let ids: Vec<Vec<i64>> = texts
            .iter()
            .map(|text| {
                tokenize(self, text)
                    .iter()
                    .map(|token| {
                        if token.is_empty() {
                            0
                        } else {
                            lookup.get(token.as_str()).copied().unwrap_or(1)
                        }
                    })
                    .collect()
            })
            .collect();
        let width = self
            .output_sequence_length
            .unwrap_or_else(|| ids.iter().map(Vec::len).max().unwrap_or(0));
        let mut out = Array2::<i64>::zeros((texts.len(), width));
        for (mut row, seq) in out.rows_mut().into_iter().zip(&ids) {
            for (dst, &id) in row.iter_mut().zip(seq) {
                *dst = id;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitlines_matches_python() {
        assert_eq!(
            python_splitlines("\n[UNK]\na\r\nb\u{85}c\n\n"),
            vec!["", "[UNK]", "a", "b", "c", ""]
        );
    }

    #[test]
    fn special_tokens_are_added_once() {
        assert_eq!(
            with_special_tokens(vec!["a".into()]).unwrap(),
            vec!["", "[UNK]", "a"]
        );
        assert_eq!(
            with_special_tokens(vec!["".into(), "[UNK]".into(), "a".into()]).unwrap(),
            vec!["", "[UNK]", "a"]
        );
        assert!(with_special_tokens(vec!["a".into(), "a".into()]).is_err());
    }
}
