//! The group tree Keras 3 writes to a `model.weights.h5` (keras.src.saving.saving_lib:
//! `_save_state` walks the model's saveables and `H5IOStore.make` gives each one a `vars` group
//! carrying its `name`, datasets or not): the model's own `vars`, `layers/<group>` for each layer
//! of a container (`<group>` as `build::h5_groups` numbers them), and below a layer its
//! sub-objects — an RNN's `cell`, Bidirectional's `forward_layer` / `backward_layer`,
//! TimeDistributed's `layer`, TextVectorization's `_lookup_layer`, a nested model's own `layers`.
//! The datasets are placed afterwards, at the paths the loader recorded on each parameter.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::keras::build::{h5_groups, is_operator, layer_name, snake_case};

/// One HDF5 group: the `name` attribute Keras sets on `vars` groups, sub-groups, datasets.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct H5Group {
    pub name_attr: Option<String>,
    pub groups: BTreeMap<String, H5Group>,
    pub datasets: BTreeMap<String, H5Dataset>,
}

#[derive(Debug, PartialEq)]
pub(crate) struct H5Dataset {
    pub shape: Vec<usize>,
    pub data: H5Data,
}

#[derive(Debug, PartialEq)]
pub(crate) enum H5Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl H5Group {
    /// The group at `path` (components joined by `/`), created with its parents as needed.
    pub fn group_mut(&mut self, path: &str) -> &mut H5Group {
        let mut g = self;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            g = g.groups.entry(part.to_string()).or_default();
        }
        g
    }

    /// The group at `path` if it exists.
    pub fn find_mut(&mut self, path: &str) -> Option<&mut H5Group> {
        let mut g = self;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            g = g.groups.get_mut(part)?;
        }
        Some(g)
    }

    /// `prefix/vars` with the saveable's name, as `H5IOStore.make(prefix, {"name": name})`.
    pub fn add_vars(&mut self, prefix: &str, name: &str) {
        let vars = if prefix.is_empty() {
            "vars".to_string()
        } else {
            format!("{prefix}/vars")
        };
        self.group_mut(&vars).name_attr = Some(name.to_string());
    }
}

fn join(prefix: &str, part: &str) -> String {
    if prefix.is_empty() {
        part.to_string()
    } else {
        format!("{prefix}/{part}")
    }
}

/// The groups (no datasets yet) Keras writes for the model `config` (a serialized model:
/// `{"class_name": "Sequential" | "Functional", "config": {...}}`).
pub(crate) fn model_groups(config: &Value) -> H5Group {
    let mut walker = Walker::default();
    let class = config
        .get("class_name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let inner = config.get("config").unwrap_or(&Value::Null);
    walker.container("", class, inner);
    walker.root
}

#[derive(Default)]
struct Walker {
    root: H5Group,
    /// TextVectorization's StringLookup takes Keras's automatic name, numbered per process:
    /// `string_lookup`, `string_lookup_1` ... in the order a fresh load creates them.
    string_lookups: usize,
}

impl Walker {
    /// A Sequential or Functional model at `prefix`: its own `vars`, then its layers.
    fn container(&mut self, prefix: &str, class: &str, inner: &Value) {
        let name = inner.get("name").and_then(Value::as_str).unwrap_or("model");
        self.root.add_vars(prefix, name);
        let layers: &[Value] = inner
            .get("layers")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        // `Sequential.layers` leaves out its InputLayer; `Functional.layers` keeps them.
        let entries = match layers.first() {
            Some(first)
                if class == "Sequential"
                    && first.get("class_name").and_then(Value::as_str) == Some("InputLayer") =>
            {
                &layers[1..]
            }
            _ => layers,
        };
        let groups = h5_groups(entries);
        let layers_prefix = join(prefix, "layers");
        for entry in entries.iter().filter(|e| !is_operator(e)) {
            if let Some(group) = groups.get(&layer_name(entry)) {
                self.layer(&join(&layers_prefix, group), entry, None);
            }
        }
    }

    /// One layer at `prefix` (named `name` when its owner renames it, as Bidirectional does).
    fn layer(&mut self, prefix: &str, entry: &Value, name: Option<String>) {
        let class = entry
            .get("class_name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let cfg = entry.get("config").unwrap_or(&Value::Null);
        if matches!(class, "Sequential" | "Functional" | "Model") {
            self.container(prefix, class, cfg);
            return;
        }
        let name = name.unwrap_or_else(|| layer_name(entry));
        self.root.add_vars(prefix, &name);
        match class {
            "SimpleRNN" | "LSTM" | "GRU" | "ConvLSTM1D" | "ConvLSTM2D" | "ConvLSTM3D" => {
                let cell = match class {
                    "SimpleRNN" => "simple_rnn_cell",
                    "LSTM" => "lstm_cell",
                    "GRU" => "gru_cell",
                    _ => "conv_lstm_cell",
                };
                self.root.add_vars(&join(prefix, "cell"), cell);
            }
            // keras.layers.Bidirectional renames the layer it wraps `forward_<name>` and, when
            // the config has no backward layer, its copy `backward_<name>`.
            "Bidirectional" => {
                let Some(forward) = cfg.get("layer") else {
                    return;
                };
                let inner_name = layer_name(forward);
                let forward_name = format!(
                    "forward_{}",
                    inner_name.strip_prefix("forward_").unwrap_or(&inner_name)
                );
                self.layer(&join(prefix, "forward_layer"), forward, Some(forward_name));
                match cfg.get("backward_layer").filter(|b| !b.is_null()) {
                    Some(backward) => self.layer(&join(prefix, "backward_layer"), backward, None),
                    None => {
                        let backward_name = format!(
                            "backward_{}",
                            inner_name.strip_prefix("backward_").unwrap_or(&inner_name)
                        );
                        self.layer(
                            &join(prefix, "backward_layer"),
                            forward,
                            Some(backward_name),
                        );
                    }
                }
            }
            "TimeDistributed" => {
                if let Some(inner) = cfg.get("layer") {
                    self.layer(&join(prefix, "layer"), inner, None);
                }
            }
            "TextVectorization" => {
                let lookup = match self.string_lookups {
                    0 => "string_lookup".to_string(),
                    n => format!("string_lookup_{n}"),
                };
                self.string_lookups += 1;
                self.root.add_vars(&join(prefix, "_lookup_layer"), &lookup);
            }
            _ => {}
        }
    }
}

/// The optimizer classes `keras.optimizers.get` gives for its string names.
const OPTIMIZER_STRINGS: &[(&str, &str)] = &[
    ("adadelta", "Adadelta"),
    ("adafactor", "Adafactor"),
    ("adagrad", "Adagrad"),
    ("adam", "Adam"),
    ("adamw", "AdamW"),
    ("adamax", "Adamax"),
    ("ftrl", "Ftrl"),
    ("lamb", "Lamb"),
    ("lion", "Lion"),
    ("nadam", "Nadam"),
    ("rmsprop", "RMSprop"),
    ("sgd", "SGD"),
];

/// The `name` Keras gives an optimizer from its entry in `compile_config`: a serialized
/// optimizer's config names it; one given by a string (`"adam"`) takes its class's automatic
/// name (`keras.optimizers.get("rmsprop").name` is `rm_sprop`).
pub(crate) fn optimizer_name(optimizer: &Value) -> Option<String> {
    match optimizer {
        Value::String(s) => {
            let lower = s.to_lowercase();
            let class = OPTIMIZER_STRINGS
                .iter()
                .find(|(name, _)| *name == lower)
                .map(|(_, class)| *class);
            Some(class.map(snake_case).unwrap_or(lower))
        }
        Value::Object(o) => o
            .get("config")
            .and_then(|c| c.get("name"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| o.get("class_name").and_then(Value::as_str).map(snake_case)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars_names(g: &H5Group, prefix: &str, out: &mut Vec<(String, String)>) {
        if let Some(n) = &g.name_attr {
            out.push((prefix.to_string(), n.clone()));
        }
        for (k, sub) in &g.groups {
            vars_names(sub, &join(prefix, k), out);
        }
    }

    #[test]
    fn sequential_bidirectional_lstm_gets_kerass_groups() {
        // As Keras 3.15 writes bi.keras: Sequential([Input, Bidirectional(LSTM(2)), Dense(1)]).
        let config = json!({"class_name": "Sequential", "config": {"name": "sequential", "layers": [
            {"module": "keras.layers", "class_name": "InputLayer",
                "config": {"name": "input_layer_1", "batch_shape": [null, 6, 3]}},
            {"module": "keras.layers", "class_name": "Bidirectional",
                "config": {"name": "bidirectional", "merge_mode": "concat",
                "layer": {"class_name": "LSTM", "config": {"name": "forward_lstm", "units": 2}},
                "backward_layer": {"class_name": "LSTM",
                    "config": {"name": "backward_lstm", "units": 2}}}},
            {"module": "keras.layers", "class_name": "Dense",
                "config": {"name": "dense_2", "units": 1}}]}});
        let mut got = Vec::new();
        vars_names(&model_groups(&config), "", &mut got);
        let want: Vec<(String, String)> = [
            ("layers/bidirectional/backward_layer/cell/vars", "lstm_cell"),
            ("layers/bidirectional/backward_layer/vars", "backward_lstm"),
            ("layers/bidirectional/forward_layer/cell/vars", "lstm_cell"),
            ("layers/bidirectional/forward_layer/vars", "forward_lstm"),
            ("layers/bidirectional/vars", "bidirectional"),
            ("layers/dense/vars", "dense_2"),
            ("vars", "sequential"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn optimizer_names_follow_keras() {
        // As keras.optimizers.get(name).name in Keras 3.15.
        assert_eq!(optimizer_name(&json!("adam")).as_deref(), Some("adam"));
        assert_eq!(
            optimizer_name(&json!("rmsprop")).as_deref(),
            Some("rm_sprop")
        );
        assert_eq!(optimizer_name(&json!("adamw")).as_deref(), Some("adam_w"));
        assert_eq!(
            optimizer_name(&json!({"class_name": "SGD", "config": {"name": "sgd"}})).as_deref(),
            Some("sgd")
        );
        assert_eq!(optimizer_name(&json!(null)), None);
    }
}
