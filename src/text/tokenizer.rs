//! A port of Keras's legacy `Tokenizer` (`tf_keras.preprocessing.text.Tokenizer`) and
//! `pad_sequences`, exact to the id: same filtering, lower-casing, splitting, vocabulary order
//! (count descending, ties in first-seen order), `oov_token` and `num_words` rules, and the same
//! `to_json()` format (the count tables are JSON *strings* holding JSON).

use std::collections::HashMap;
use std::path::Path;

use ndarray::Array2;
use serde_json::Value;

use crate::error::{Error, Result};

/// Keras's default `filters`: ASCII punctuation except `'`, plus tab and newline.
pub const DEFAULT_FILTERS: &str = "!\"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n";

/// A map that remembers insertion order, with Python `dict` semantics: re-inserting a key updates
/// its value in place.
#[derive(Debug, Clone, Default, PartialEq)]
struct OrderedMap<K: std::hash::Hash + Eq + Clone, V> {
    entries: Vec<(K, V)>,
    positions: HashMap<K, usize>,
}

impl<K: std::hash::Hash + Eq + Clone, V> OrderedMap<K, V> {
    fn get(&self, key: &K) -> Option<&V> {
        self.positions
            .get(key)
            .and_then(|&i| self.entries.get(i))
            .map(|(_, v)| v)
    }

    fn insert(&mut self, key: K, value: V) {
        match self.positions.get(&key) {
            Some(&i) => {
                if let Some(entry) = self.entries.get_mut(i) {
                    entry.1 = value;
                }
            }
            None => {
                self.positions.insert(key.clone(), self.entries.len());
                self.entries.push((key, value));
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

impl<K: std::hash::Hash + Eq + Clone> OrderedMap<K, u64> {
    fn increment(&mut self, key: &K) {
        match self.positions.get(key) {
            Some(&i) => {
                if let Some(entry) = self.entries.get_mut(i) {
                    entry.1 += 1;
                }
            }
            None => self.insert(key.clone(), 1),
        }
    }
}

/// The settings a `Tokenizer` is built with (Keras's constructor arguments).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TokenizerOptions {
    /// Only ids below this are kept by `texts_to_sequences` (`None` or 0: no limit).
    pub num_words: Option<usize>,
    /// Characters replaced by `split` before splitting.
    pub filters: String,
    /// Lower-case texts first.
    pub lower: bool,
    /// The separator words are split on (a plain string, not a pattern).
    pub split: String,
    /// Every character is a token; filters are then not applied (as in Keras).
    pub char_level: bool,
    /// Id 1 when set; unknown (and beyond-`num_words`) words map to it instead of being dropped.
    pub oov_token: Option<String>,
}

impl Default for TokenizerOptions {
    fn default() -> Self {
        TokenizerOptions {
            num_words: None,
            filters: DEFAULT_FILTERS.to_string(),
            lower: true,
            split: " ".to_string(),
            char_level: false,
            oov_token: None,
        }
    }
}

/// Keras's `text_to_word_sequence`: optionally lower-case, replace each filter character with
/// `split`, split on `split`, drop empty tokens.
pub fn text_to_word_sequence(text: &str, filters: &str, lower: bool, split: &str) -> Vec<String> {
    let lowered;
    let text = if lower {
        lowered = text.to_lowercase();
        lowered.as_str()
    } else {
        text
    };
    let mut translated = String::with_capacity(text.len());
    for c in text.chars() {
        if filters.contains(c) {
            translated.push_str(split);
        } else {
            translated.push(c);
        }
    }
    if split.is_empty() {
        // Python's str.split("") raises; treat the whole text as one token rather than panic.
        return if translated.is_empty() {
            Vec::new()
        } else {
            vec![translated]
        };
    }
    translated
        .split(split)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// Which end `pad_sequences` pads or truncates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// At the start (Keras's default).
    #[default]
    Pre,
    /// At the end.
    Post,
}

impl std::str::FromStr for Side {
    type Err = Error;
    fn from_str(s: &str) -> Result<Side> {
        match s {
            "pre" => Ok(Side::Pre),
            "post" => Ok(Side::Post),
            other => Err(Error::Usage(format!(
                "padding/truncating must be 'pre' or 'post', not '{other}'"
            ))),
        }
    }
}

/// Keras's `pad_sequences`: an (N, maxlen) array; `maxlen` `None` means the longest sequence.
/// Sequences longer than `maxlen` lose values at the `truncating` side; shorter ones are filled
/// with `value` at the `padding` side.
pub fn pad_sequences<S: AsRef<[i64]>>(
    sequences: &[S],
    maxlen: Option<usize>,
    padding: Side,
    truncating: Side,
    value: i64,
) -> Array2<i64> {
    let maxlen = maxlen.unwrap_or_else(|| {
        sequences
            .iter()
            .map(|s| s.as_ref().len())
            .max()
            .unwrap_or(0)
    });
    let mut out = Array2::from_elem((sequences.len(), maxlen), value);
    for (mut row, seq) in out.rows_mut().into_iter().zip(sequences) {
        let seq = seq.as_ref();
        let kept = if seq.len() > maxlen {
            match truncating {
                Side::Pre => &seq[seq.len() - maxlen..],
                Side::Post => &seq[..maxlen],
            }
        } else {
            seq
        };
        let start = match padding {
            Side::Pre => maxlen - kept.len(),
            Side::Post => 0,
        };
        for (dst, &id) in row.iter_mut().skip(start).zip(kept) {
            *dst = id;
        }
    }
    out
}

/// Keras's legacy text `Tokenizer`: fit on texts, turn texts into id sequences, save and load
/// the `to_json()` format.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenizer {
    options: TokenizerOptions,
    document_count: u64,
    word_counts: OrderedMap<String, u64>,
    word_docs: OrderedMap<String, u64>,
    word_index: OrderedMap<String, usize>,
    index_word: OrderedMap<usize, String>,
    index_docs: OrderedMap<usize, u64>,
}

impl Default for Tokenizer {
    fn default() -> Self {
        Tokenizer::new(TokenizerOptions::default())
    }
}

impl Tokenizer {
    /// An empty tokenizer with these settings.
    pub fn new(options: TokenizerOptions) -> Tokenizer {
        Tokenizer {
            options,
            document_count: 0,
            word_counts: OrderedMap::default(),
            word_docs: OrderedMap::default(),
            word_index: OrderedMap::default(),
            index_word: OrderedMap::default(),
            index_docs: OrderedMap::default(),
        }
    }

    /// The settings this tokenizer was built with.
    pub fn options(&self) -> &TokenizerOptions {
        &self.options
    }

    /// Number of texts fitted so far.
    pub fn document_count(&self) -> u64 {
        self.document_count
    }

    /// The id of `word` (ids start at 1; the `oov_token`, when set, is 1).
    pub fn index_of(&self, word: &str) -> Option<usize> {
        self.word_index.get(&word.to_string()).copied()
    }

    /// The word with id `index`.
    pub fn word_of(&self, index: usize) -> Option<&str> {
        self.index_word.get(&index).map(String::as_str)
    }

    /// `word_index` in Keras's order: (word, id).
    pub fn word_index(&self) -> impl Iterator<Item = (&str, usize)> {
        self.word_index.iter().map(|(w, &i)| (w.as_str(), i))
    }

    /// `word_counts` in first-seen order: (word, occurrences).
    pub fn word_counts(&self) -> impl Iterator<Item = (&str, u64)> {
        self.word_counts.iter().map(|(w, &c)| (w.as_str(), c))
    }

    /// `word_docs`: (word, number of texts holding it).
    pub fn word_docs(&self) -> impl Iterator<Item = (&str, u64)> {
        self.word_docs.iter().map(|(w, &c)| (w.as_str(), c))
    }

    /// Number of entries in `word_index` (with the `oov_token`); an Embedding over these ids
    /// needs `input_dim = vocabulary_size() + 1`.
    pub fn vocabulary_size(&self) -> usize {
        self.word_index.len()
    }

    fn tokens(&self, text: &str) -> Vec<String> {
        let o = &self.options;
        if o.char_level {
            let text = if o.lower {
                text.to_lowercase()
            } else {
                text.to_string()
            };
            text.chars().map(String::from).collect()
        } else {
            text_to_word_sequence(text, &o.filters, o.lower, &o.split)
        }
    }

    /// Keras's `fit_on_texts`: counts words, then renumbers the whole vocabulary by count
    /// (descending; ties keep first-seen order, as Python's stable sort), ids from 1, the
    /// `oov_token` first.
    pub fn fit_on_texts<S: AsRef<str>>(&mut self, texts: &[S]) {
        for text in texts {
            self.document_count += 1;
            let seq = self.tokens(text.as_ref());
            for w in &seq {
                self.word_counts.increment(w);
            }
            // Keras iterates set(seq), whose order is Python's hash order; first-seen order is
            // the deterministic stand-in (only the order of word_docs in to_json() differs).
            let mut seen = std::collections::HashSet::new();
            for w in &seq {
                if seen.insert(w.as_str()) {
                    self.word_docs.increment(w);
                }
            }
        }
        let mut counts: Vec<(&String, u64)> =
            self.word_counts.iter().map(|(w, &c)| (w, c)).collect();
        counts.sort_by_key(|&(_, c)| std::cmp::Reverse(c));
        let sorted_vocabulary: Vec<String> = self
            .options
            .oov_token
            .iter()
            .cloned()
            .chain(counts.into_iter().map(|(w, _)| w.clone()))
            .collect();
        self.word_index = OrderedMap::default();
        for (i, w) in sorted_vocabulary.into_iter().enumerate() {
            self.word_index.insert(w, i + 1);
        }
        self.index_word = OrderedMap::default();
        for (w, &i) in self.word_index.iter() {
            self.index_word.insert(i, w.clone());
        }
        for (w, &c) in self.word_docs.iter() {
            if let Some(&i) = self.word_index.get(w) {
                self.index_docs.insert(i, c);
            }
        }
    }

    /// Keras's `texts_to_sequences`: unknown words are dropped, or mapped to the `oov_token`'s
    /// id when one is set; with `num_words`, ids >= `num_words` are treated the same way.
    pub fn texts_to_sequences<S: AsRef<str>>(&self, texts: &[S]) -> Vec<Vec<i64>> {
        texts
            .iter()
            .map(|t| self.text_to_sequence(t.as_ref()))
            .collect()
    }

    /// One text to ids (see [`Tokenizer::texts_to_sequences`]).
    pub fn text_to_sequence(&self, text: &str) -> Vec<i64> {
        let num_words = self.options.num_words.filter(|&n| n > 0);
        let oov = self
            .options
            .oov_token
            .as_ref()
            .and_then(|t| self.word_index.get(t))
            .copied();
        let mut ids = Vec::new();
        for w in self.tokens(text) {
            match self.word_index.get(&w) {
                Some(&i) if num_words.is_some_and(|n| i >= n) => {
                    if let Some(oov) = oov {
                        ids.push(oov as i64);
                    }
                }
                Some(&i) => ids.push(i as i64),
                None => {
                    if let Some(oov) = oov {
                        ids.push(oov as i64);
                    }
                }
            }
        }
        ids
    }

    /// Texts to an (N, maxlen) id array: `texts_to_sequences` then `pad_sequences` with 0.
    pub fn texts_to_padded<S: AsRef<str>>(
        &self,
        texts: &[S],
        maxlen: usize,
        padding: Side,
        truncating: Side,
    ) -> Array2<i64> {
        pad_sequences(
            &self.texts_to_sequences(texts),
            Some(maxlen),
            padding,
            truncating,
            0,
        )
    }

    /// Reads a `Tokenizer.to_json()` file.
    pub fn load(path: &Path) -> Result<Tokenizer> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Tokenizer::from_json_str(&text, path)
    }

    /// Parses `Tokenizer.to_json()` text; `path` names the source in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Tokenizer> {
        let root: Value = serde_json::from_str(text)
            .map_err(|e| Error::format(path, format!("tokenizer JSON: {e}")))?;
        let config = root.get("config").unwrap_or(&root);
        let field_error = |field: &str, message: &str| {
            Error::format(path, format!("tokenizer {field}: {message}"))
        };
        if let Some(class) = root.get("class_name").and_then(Value::as_str) {
            if class != "Tokenizer" {
                return Err(field_error(
                    "class_name",
                    &format!("expected 'Tokenizer', found '{class}'"),
                ));
            }
        }
        let string_field = |field: &str, default: &str| -> Result<String> {
            match config.get(field) {
                None | Some(Value::Null) => Ok(default.to_string()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(field_error(
                    field,
                    &format!("expected a string, found {other}"),
                )),
            }
        };
        let bool_field = |field: &str, default: bool| -> Result<bool> {
            match config.get(field) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(other) => Err(field_error(
                    field,
                    &format!("expected true or false, found {other}"),
                )),
            }
        };
        let count_field = |field: &str| -> Result<Option<u64>> {
            match config.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                    field_error(
                        field,
                        &format!("expected a non-negative integer, found {v}"),
                    )
                }),
            }
        };
        let oov_token = match config.get("oov_token") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(field_error(
                    "oov_token",
                    &format!("expected a string or null, found {other}"),
                ))
            }
        };
        let options = TokenizerOptions {
            num_words: count_field("num_words")?.map(|n| n as usize),
            filters: string_field("filters", DEFAULT_FILTERS)?,
            lower: bool_field("lower", true)?,
            split: string_field("split", " ")?,
            char_level: bool_field("char_level", false)?,
            oov_token,
        };
        let mut tokenizer = Tokenizer::new(options);
        tokenizer.document_count = count_field("document_count")?.unwrap_or(0);

        let table = |field: &str| -> Result<Vec<(String, Value)>> {
            let value = match config.get(field) {
                None | Some(Value::Null) => return Ok(Vec::new()),
                Some(Value::String(s)) => parse_ordered_object(s)
                    .map_err(|e| field_error(field, &format!("not a JSON object: {e}")))?,
                Some(Value::Object(_)) => {
                    // Already parsed by someone else: key order is serde_json's, not the file's.
                    let v = config.get(field).cloned().unwrap_or(Value::Null);
                    match v {
                        Value::Object(map) => map.into_iter().collect(),
                        _ => Vec::new(),
                    }
                }
                Some(other) => {
                    return Err(field_error(
                        field,
                        &format!("expected a JSON string holding an object, found {other}"),
                    ))
                }
            };
            Ok(value)
        };
        let as_count = |field: &str, key: &str, v: &Value| -> Result<u64> {
            v.as_u64().ok_or_else(|| {
                field_error(
                    field,
                    &format!("entry '{key}': expected a non-negative integer, found {v}"),
                )
            })
        };
        let as_index_key = |field: &str, key: &str| -> Result<usize> {
            key.parse::<usize>()
                .map_err(|_| field_error(field, &format!("key '{key}' is not an integer id")))
        };
        for (w, v) in table("word_counts")? {
            let c = as_count("word_counts", &w, &v)?;
            tokenizer.word_counts.insert(w, c);
        }
        for (w, v) in table("word_docs")? {
            let c = as_count("word_docs", &w, &v)?;
            tokenizer.word_docs.insert(w, c);
        }
        for (w, v) in table("word_index")? {
            let i = as_count("word_index", &w, &v)? as usize;
            if i == 0 {
                return Err(field_error(
                    "word_index",
                    &format!("word '{w}' has id 0, which is reserved for padding"),
                ));
            }
            tokenizer.word_index.insert(w, i);
        }
        for (k, v) in table("index_word")? {
            let i = as_index_key("index_word", &k)?;
            let w = v.as_str().ok_or_else(|| {
                field_error(
                    "index_word",
                    &format!("entry '{k}': expected a word, found {v}"),
                )
            })?;
            tokenizer.index_word.insert(i, w.to_string());
        }
        for (k, v) in table("index_docs")? {
            let i = as_index_key("index_docs", &k)?;
            let c = as_count("index_docs", &k, &v)?;
            tokenizer.index_docs.insert(i, c);
        }
        Ok(tokenizer)
    }

    /// Writes `to_json()` to a file.
    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_json()).map_err(|e| Error::io(path, e))
    }

    /// Keras's `Tokenizer.to_json()`, byte for byte as Python's `json.dumps` writes it
    /// (ASCII-escaped, `", "` and `": "` separators); `tokenizer_from_json` loads it.
    pub fn to_json(&self) -> String {
        let o = &self.options;
        let mut out = String::from("{\"class_name\": \"Tokenizer\", \"config\": {");
        out.push_str("\"num_words\": ");
        match o.num_words {
            Some(n) => out.push_str(&n.to_string()),
            None => out.push_str("null"),
        }
        out.push_str(", \"filters\": ");
        py_json_string(&o.filters, &mut out);
        out.push_str(&format!(", \"lower\": {}", py_bool(o.lower)));
        out.push_str(", \"split\": ");
        py_json_string(&o.split, &mut out);
        out.push_str(&format!(", \"char_level\": {}", py_bool(o.char_level)));
        out.push_str(", \"oov_token\": ");
        match &o.oov_token {
            Some(t) => py_json_string(t, &mut out),
            None => out.push_str("null"),
        }
        out.push_str(&format!(", \"document_count\": {}", self.document_count));
        let tables = [
            (
                "word_counts",
                py_json_object(self.word_counts.iter(), |v| v.to_string()),
            ),
            (
                "word_docs",
                py_json_object(self.word_docs.iter(), |v| v.to_string()),
            ),
            (
                "index_docs",
                py_json_object(self.index_docs.iter(), |v| v.to_string()),
            ),
            (
                "index_word",
                py_json_object(self.index_word.iter(), |w| {
                    let mut s = String::new();
                    py_json_string(w, &mut s);
                    s
                }),
            ),
            (
                "word_index",
                py_json_object(self.word_index.iter(), |v| v.to_string()),
            ),
        ];
        for (field, table) in tables {
            out.push_str(&format!(", \"{field}\": "));
            py_json_string(&table, &mut out);
        }
        out.push_str("}}");
        out
    }
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// `json.dumps(dict)` of a map whose keys print as strings.
fn py_json_object<'a, K: std::fmt::Display + 'a, V: 'a>(
    entries: impl Iterator<Item = (&'a K, &'a V)>,
    value: impl Fn(&V) -> String,
) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in entries.enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        py_json_string(&k.to_string(), &mut out);
        out.push_str(": ");
        out.push_str(&value(v));
    }
    out.push('}');
    out
}

/// A JSON string literal as Python's `json.dumps` writes it with `ensure_ascii=True`.
fn py_json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// Parses a JSON object keeping its keys in file order (serde_json's `Map` sorts them).
fn parse_ordered_object(
    text: &str,
) -> std::result::Result<Vec<(String, Value)>, serde_json::Error> {
    struct Ordered(Vec<(String, Value)>);
    impl<'de> serde::Deserialize<'de> for Ordered {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = Ordered;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> std::result::Result<Ordered, A::Error> {
                    let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                    while let Some((k, v)) = map.next_entry::<String, Value>()? {
                        entries.push((k, v));
                    }
                    Ok(Ordered(entries))
                }
            }
            d.deserialize_map(Visitor)
        }
    }
    serde_json::from_str::<Ordered>(text).map(|o| o.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_separators_and_empty_tokens_drop() {
        assert_eq!(
            text_to_word_sequence("Enak,banget!!  Ya\tkan", DEFAULT_FILTERS, true, " "),
            vec!["enak", "banget", "ya", "kan"]
        );
    }

    #[test]
    fn python_json_escapes_non_ascii_as_utf16() {
        let mut s = String::new();
        py_json_string("é\"\u{1F600}\n\u{7f}", &mut s);
        assert_eq!(s, "\"\\u00e9\\\"\\ud83d\\ude00\\n\\u007f\"");
    }

    #[test]
    fn ordered_object_keeps_file_order() {
        let entries = parse_ordered_object(r#"{"b": 1, "a": 2}"#).unwrap();
        let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["b", "a"]);
    }
}
