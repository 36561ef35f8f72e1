//! The Keras config a graph was built from, kept as read so that saving writes the model's
//! architecture back exactly as Keras serialized it (wgnn never re-serializes a config).

/// A model's config as read from its file.
#[derive(Clone, PartialEq)]
pub struct SourceConfig {
    /// The config JSON text exactly as read: a `.keras` file's `config.json`, a model JSON (the
    /// inner text when `to_json()` was saved as a JSON string), or a legacy `.h5`'s
    /// `model_config` attribute.
    pub json: String,
    pub origin: ConfigOrigin,
    /// A `.keras` file's `assets/` entries (TextVectorization vocabularies): (zip path, bytes).
    pub assets: Vec<(String, Vec<u8>)>,
}

/// Where a config came from, which decides how Keras 3 can read it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOrigin {
    /// A `.keras` file's `config.json`, or a model JSON (`model.to_json()`).
    Json,
    /// A legacy `model.save("m.h5")` file's `model_config`, with the file's `keras_version`
    /// attribute (Keras 3 writes its own `get_config()` there, Keras 2 its own format).
    LegacyH5 { keras_version: Option<String> },
}

impl std::fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The JSON of a large model runs to megabytes: show its size, not its text.
        f.debug_struct("SourceConfig")
            .field("json_bytes", &self.json.len())
            .field("origin", &self.origin)
            .field(
                "assets",
                &self.assets.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}
