//! Keras config + weights -> `Graph`: Sequential models as chains, Functional models as graphs
//! of any shape (several inputs and outputs, shared layers, Keras 2 and Keras 3 inbound-node
//! forms, Keras 3's operator nodes). Layers become ops in `layers/`; their shapes come from the
//! ops' own shape rules as each node is added.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::fields::{as_usize, LayerConfig};
use super::weights::{WeightRequest, WeightSource};
use crate::error::{Error, Result};
use crate::graph::*;

/// Builds the graph. An input whose time axis (its first axis after the batch) is `None` in the
/// config gets the length `time_lengths[input index]`, else `FREE_TIME_PLACEHOLDER`; the
/// indices of such inputs come back with the graph.
pub fn build_model(
    path: &Path,
    weights_path: &Path,
    config: &Value,
    mut weights: WeightSource,
    assets: &[(String, Vec<u8>)],
    time_lengths: &[usize],
) -> Result<(Graph, Vec<usize>)> {
    let class = config
        .get("class_name")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Error::format(
                path,
                "model config has no 'class_name' (is this a Keras model JSON?)",
            )
        })?;
    let inner = config
        .get("config")
        .ok_or_else(|| Error::format(path, "model config has no 'config' object"))?;
    let name = inner
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("model")
        .to_string();
    let mut builder = Builder {
        path,
        weights_path,
        weights: &mut weights,
        assets,
        graph: Graph::new(name),
        taken: HashMap::new(),
        masks: HashMap::new(),
        mask_exprs: HashMap::new(),
        group: String::new(),
        group_prefix: String::new(),
        time_lengths,
        free_inputs: Vec::new(),
        weights_owner: None,
        // A model saved with `trainable: false` freezes every layer in it.
        frozen: inner.get("trainable").and_then(Value::as_bool) == Some(false),
    };
    let outputs = match class {
        "Sequential" => builder.sequential(inner, None)?,
        "Functional" | "Model" => builder.functional(inner, None)?,
        other => {
            return Err(Error::format(
                path,
                format!("unsupported model class '{other}' (expected Sequential or Functional)"),
            ))
        }
    };
    let free_inputs = std::mem::take(&mut builder.free_inputs);
    let masks = std::mem::take(&mut builder.masks);
    let mut graph = builder.graph;
    for (i, (name, v)) in outputs.into_iter().enumerate() {
        // Keras names outputs after their layers; a layer giving two of them gets a suffix.
        let name = if graph.outputs.iter().any(|p| p.name == name) {
            format!("{name}_{i}")
        } else {
            name
        };
        graph.add_output(name, v);
        graph.output_masks.push(masks.get(&v).copied());
    }
    weights.finish()?;
    super::train_config::finish(&mut graph, config);
    graph.verify()?;
    Ok((graph, free_inputs))
}

/// The length a free time axis gets when the model is loaded before any input is seen (the
/// graph is rebuilt for each length actually given).
pub const FREE_TIME_PLACEHOLDER: usize = 16;

/// Input shape without the batch axis, from `batch_shape` (Keras 3) or `batch_input_shape`
/// (Keras 2), with a `None` time axis set to `time` (and `true` when it was `None`).
fn batch_shape_of(path: &Path, cfg: &Value, time: usize) -> Result<Option<(Vec<usize>, bool)>> {
    let Some(shape) = cfg
        .get("batch_shape")
        .or_else(|| cfg.get("batch_input_shape"))
        .filter(|v| !v.is_null())
    else {
        return Ok(None);
    };
    shape_from_json(path, shape, time).map(Some)
}

/// A `None` right after the batch axis is a free time axis: it becomes `time`. Any other free
/// dimension is an error.
fn shape_from_json(path: &Path, shape: &Value, time: usize) -> Result<(Vec<usize>, bool)> {
    let items = shape
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| Error::format(path, format!("bad input shape {shape}")))?;
    let mut free = false;
    let dims = items[1..]
        .iter()
        .enumerate()
        .map(|(k, d)| {
            if k == 0 && d.is_null() {
                free = true;
                return Ok(time);
            }
            as_usize(d).filter(|&n| n > 0).ok_or_else(|| {
                Error::format(
                    path,
                    format!("input shape {shape} has a free dimension: wgnn needs static shapes (besides the batch and the time axis of a sequence)"),
                )
            })
        })
        .collect::<Result<Vec<usize>>>()?;
    Ok((dims, free))
}

/// What an InputLayer's dtype makes of its values.
fn input_dtype(cfg: &Value) -> DType {
    match cfg.get("dtype").and_then(Value::as_str) {
        // A boolean input (a mask given to `mask=`) holds 0/1 like ids.
        Some(d) if d.starts_with("int") || d.starts_with("uint") || d == "bool" => DType::Ids,
        _ => DType::F32,
    }
}

/// A reference to one output of one call of a layer: Keras's `keras_history`
/// (layer name, node index, tensor index).
type TensorRef = (String, usize, usize);

/// The tensors in one inbound node's arguments, in order: Keras 3 `keras_history` objects or
/// Keras 2 `[name, node_index, tensor_index, kwargs]` lists.
fn tensor_refs(node: &Value, out: &mut Vec<TensorRef>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Array(h)) = map.get("keras_history") {
                if let (Some(name), Some(n), Some(t)) = (
                    h.first().and_then(Value::as_str),
                    h.get(1).and_then(as_usize),
                    h.get(2).and_then(as_usize),
                ) {
                    out.push((name.to_string(), n, t));
                    return;
                }
            }
            for v in map.values() {
                tensor_refs(v, out);
            }
        }
        Value::Array(items) => {
            if let Some(r) = keras2_ref(items) {
                out.push(r);
                return;
            }
            for v in items {
                tensor_refs(v, out);
            }
        }
        _ => {}
    }
}

/// Keras 2's `[name, node_index, tensor_index(, kwargs)]`.
fn keras2_ref(items: &[Value]) -> Option<TensorRef> {
    if items.len() >= 3 && items.len() <= 4 {
        if let (Some(name), Some(n), Some(t)) = (
            items[0].as_str(),
            items[1].as_u64().filter(|_| items[1].is_u64()),
            items[2].as_u64().filter(|_| items[2].is_u64()),
        ) {
            return Some((name.to_string(), n as usize, t as usize));
        }
    }
    None
}

/// One call of a layer as the config records it: the tensors it reads, the mask it is given
/// explicitly (`mask=` in Keras 3 kwargs), the non-tensor positional arguments, and the
/// other keyword arguments.
struct Call {
    inputs: Vec<TensorRef>,
    mask: Vec<TensorRef>,
    /// Keras 3's `args` verbatim (operator nodes read constants from them).
    args: Value,
    kwargs: Value,
    /// Keras 2: the keyword arguments recorded with the call's first tensor (a TFOpLambda's
    /// constant operand `y`); Null for Keras 3.
    keras2_kwargs: Value,
}

fn parse_calls(layer: &Value) -> Vec<Call> {
    let Some(nodes) = layer.get("inbound_nodes").and_then(Value::as_array) else {
        return Vec::new();
    };
    nodes
        .iter()
        .map(|n| match (n.get("args"), n.get("kwargs")) {
            (Some(args), kwargs) => {
                let mut inputs = Vec::new();
                tensor_refs(args, &mut inputs);
                let mut mask = Vec::new();
                let mut rest = kwargs.cloned().unwrap_or(Value::Null);
                if let Some(m) = rest.as_object_mut().and_then(|k| k.remove("mask")) {
                    tensor_refs(&m, &mut mask);
                }
                // A recurrent layer's `initial_state=` tensors follow its sequence input.
                if let Some(s) = rest.as_object_mut().and_then(|k| k.remove("initial_state")) {
                    tensor_refs(&s, &mut inputs);
                }
                Call {
                    inputs,
                    mask,
                    args: args.clone(),
                    kwargs: rest,
                    keras2_kwargs: Value::Null,
                }
            }
            _ => {
                // Keras 2: a list of [name, node_index, tensor_index, kwargs]; a `mask=`
                // argument sits in the kwargs of the call's first tensor.
                let mut inputs = Vec::new();
                tensor_refs(n, &mut inputs);
                // A node is a list of refs, or (a TFOpLambda's) one ref on its own.
                let first_ref = match n.as_array() {
                    Some(items) if keras2_ref(items).is_some() => Some(n),
                    Some(items) => items.first(),
                    None => None,
                };
                let keras2_kwargs = first_ref
                    .and_then(|r| r.get(3))
                    .cloned()
                    .unwrap_or(Value::Null);
                let mut mask = Vec::new();
                if let Some(m) = keras2_kwargs.get("mask") {
                    tensor_refs(m, &mut mask);
                }
                // A TFOpLambda's second operand, when it is a tensor.
                if let Some(y) = keras2_kwargs.get("y").filter(|y| y.is_array()) {
                    tensor_refs(y, &mut inputs);
                }
                Call {
                    inputs,
                    mask,
                    args: Value::Null,
                    kwargs: Value::Null,
                    keras2_kwargs,
                }
            }
        })
        .collect()
}

/// `input_layers` / `output_layers`: one `[name, node, tensor]` triple or a list of them.
fn port_refs(path: &Path, v: Option<&Value>, what: &str) -> Result<Vec<TensorRef>> {
    let bad = || Error::format(path, format!("Functional config has a malformed '{what}'"));
    let items = v.and_then(Value::as_array).ok_or_else(bad)?;
    if let Some(r) = keras2_ref(items) {
        return Ok(vec![r]);
    }
    items
        .iter()
        .map(|i| i.as_array().and_then(|a| keras2_ref(a)).ok_or_else(bad))
        .collect()
}

pub(crate) struct Builder<'a> {
    pub(crate) path: &'a Path,
    pub(crate) weights_path: &'a Path,
    weights: &'a mut WeightSource,
    pub(crate) assets: &'a [(String, Vec<u8>)],
    pub(crate) graph: Graph,
    /// Parameters already taken, by (layer name, sub-object path): a shared layer called again
    /// reuses its weights.
    taken: HashMap<(String, String), Vec<ParamId>>,
    /// Each value's Keras mask, where one reaches it.
    pub(crate) masks: HashMap<ValueId, ValueId>,
    /// Mask tensors of Keras 3 mask-arithmetic operator nodes (ExpandDims, ZerosLike, LogicalOr,
    /// Concatenate, Any) that stand for a mask without being computed.
    pub(crate) mask_exprs: HashMap<ValueId, super::layers::MaskExpr>,
    /// The h5 group of the layer being built.
    group: String,
    /// Where the current container's layer groups live: empty at the top, `sequential/layers/`
    /// inside a nested model (keras.src.saving.saving_lib nests containers this way).
    group_prefix: String,
    /// Lengths for free time axes, by graph input index (missing: FREE_TIME_PLACEHOLDER).
    time_lengths: &'a [usize],
    /// Graph inputs whose time axis was free in the config.
    free_inputs: Vec<usize>,
    /// While a wrapper builds its inner layer: the wrapper's name and the sub-object path its
    /// weights are under (TimeDistributed: `layer`).
    pub(crate) weights_owner: Option<(String, Vec<String>)>,
    /// Inside a layer (or nested model) whose config says `trainable: false`.
    pub(crate) frozen: bool,
}

/// Keras's h5 group for each layer of one container, in its layer order: snake_case class
/// name, then `_1`, `_2` for later layers of the same class (keras.src.saving.saving_lib).
pub(crate) fn h5_groups(layers: &[Value]) -> HashMap<String, String> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut groups = HashMap::new();
    for l in layers {
        let class = l.get("class_name").and_then(Value::as_str).unwrap_or("");
        // Keras operators (NotEqual ...) are not layers and have no group.
        if is_operator(l) {
            continue;
        }
        let stem = snake_case(class);
        let count = counts.entry(stem.clone()).or_insert(0);
        let group = if *count == 0 {
            stem.clone()
        } else {
            format!("{stem}_{count}")
        };
        *count += 1;
        groups.insert(layer_name(l), group);
    }
    groups
}

/// A Keras 3 operator node (`keras.ops.not_equal`, `a + b` ...) rather than a layer: its module
/// is `keras.src.ops.*`, or, in files that record no module (legacy `.h5`), its config holds
/// nothing but a name.
pub(crate) fn is_operator(entry: &Value) -> bool {
    match entry.get("module").and_then(Value::as_str) {
        Some(m) => m.starts_with("keras.src.ops"),
        None => entry
            .get("config")
            .and_then(Value::as_object)
            .is_some_and(|c| c.keys().all(|k| k == "name")),
    }
}

pub(crate) fn layer_name(l: &Value) -> String {
    l.get("name")
        .or_else(|| l.get("config").and_then(|c| c.get("name")))
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string()
}

impl<'a> Builder<'a> {
    /// The length of graph input `index`'s time axis, if the config leaves it free.
    fn time_length(&self, index: usize) -> usize {
        self.time_lengths
            .get(index)
            .copied()
            .unwrap_or(FREE_TIME_PLACEHOLDER)
    }

    pub(crate) fn info(&self, v: ValueId) -> &ValueInfo {
        self.graph.value(v)
    }

    /// Adds a node for `cfg`'s layer; shape-rule failures become errors naming the layer.
    pub(crate) fn add(
        &mut self,
        cfg: &LayerConfig,
        op: Op,
        inputs: &[ValueId],
        mask: Option<ValueId>,
    ) -> Result<Vec<ValueId>> {
        self.graph
            .add_node(&cfg.name, &cfg.class, op, inputs, mask)
            .map_err(|m| cfg.error("input_shape", m))
    }

    /// Adds a node with one output.
    pub(crate) fn add1(
        &mut self,
        cfg: &LayerConfig,
        op: Op,
        inputs: &[ValueId],
        mask: Option<ValueId>,
    ) -> Result<ValueId> {
        let outs = self.add(cfg, op, inputs, mask)?;
        outs.first()
            .copied()
            .ok_or_else(|| Error::Internal(format!("op of layer '{}' has no output", cfg.name)))
    }

    /// The weights of `cfg`'s layer (or of its sub-object `sub`, e.g. `["forward_layer",
    /// "cell"]`), checked against the shapes the config implies, as parameters named
    /// `layer/sub/name`. A layer called again gets the same parameters back.
    pub(crate) fn params(
        &mut self,
        cfg: &LayerConfig,
        sub: &[&str],
        specs: &[(&str, Vec<usize>)],
    ) -> Result<Vec<ParamId>> {
        let caller_sub = sub;
        // A wrapped layer's weights belong to its wrapper, under the wrapper's sub-object.
        let (owner, full_sub): (String, Vec<&str>) = match &self.weights_owner {
            Some((name, prefix)) => (
                name.clone(),
                prefix
                    .iter()
                    .map(String::as_str)
                    .chain(sub.iter().copied())
                    .collect(),
            ),
            None => (cfg.name.clone(), sub.to_vec()),
        };
        let sub = full_sub.as_slice();
        let key = (owner.clone(), sub.join("/"));
        if let Some(ids) = self.taken.get(&key) {
            for (&id, (what, shape)) in ids.iter().zip(specs) {
                if self.graph.params.get(id).shape() != shape.as_slice() {
                    return Err(self.weight_error(
                        cfg,
                        format!(
                            "{what}: a second call needs shape {shape:?}, the layer's weights are {:?}",
                            self.graph.params.get(id).shape()
                        ),
                    ));
                }
            }
            return Ok(ids.clone());
        }
        let inner = super::weight_fields::fields_config(cfg, caller_sub)?;
        let fields = inner.as_ref().unwrap_or(cfg);
        let raw = self.weights.take_request(&WeightRequest {
            owner: &owner,
            group: &self.group,
            sub,
            specs,
            fields,
        })?;
        // Where Keras 3 keeps these, whichever file they came from.
        let mut vars_path = format!("layers/{}", self.group);
        for s in sub {
            vars_path.push('/');
            vars_path.push_str(s);
        }
        vars_path.push_str("/vars");
        let mut ids = Vec::with_capacity(specs.len());
        for (index, (w, (what, shape))) in raw.into_iter().zip(specs).enumerate() {
            let label = match sub.first() {
                Some(first) if sub.len() > 1 => format!("{first}/{what}"),
                _ => what.to_string(),
            };
            if w.shape != *shape {
                return Err(self.weight_error(
                    cfg,
                    format!("{label}: expected shape {shape:?}, found {:?}", w.shape),
                ));
            }
            let array = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), w.values)
                .map_err(|e| self.weight_error(cfg, format!("{label}: {e}")))?;
            let name = format!("{}/{label}", cfg.name);
            let id = self.graph.params.add(name, array, true);
            self.graph.params.set_keras(
                id,
                KerasVar {
                    path: format!("{vars_path}/{index}"),
                    shape: shape.clone(),
                    dtype: KerasDType::Float32,
                },
            );
            ids.push(id);
        }
        self.record_weight_config(cfg, fields, specs, &ids)?;
        self.taken.insert(key, ids.clone());
        Ok(ids)
    }

    /// A layer's `kernel` of `kernel_shape` and, with `use_bias`, its `bias` of `bias_len`
    /// values (Dense and the convolutions store exactly these, in this order).
    pub(crate) fn kernel_and_bias(
        &mut self,
        cfg: &LayerConfig,
        kernel_shape: Vec<usize>,
        bias_len: usize,
        use_bias: bool,
    ) -> Result<(ParamId, Option<ParamId>)> {
        let mut specs = vec![("kernel", kernel_shape)];
        if use_bias {
            specs.push(("bias", vec![bias_len]));
        }
        let p = self.params(cfg, &[], &specs)?;
        Ok((p[0], p.get(1).copied()))
    }

    pub(crate) fn weight_error(&self, cfg: &LayerConfig, message: String) -> Error {
        Error::Weights {
            path: self.weights_path.to_path_buf(),
            layer: cfg.name.clone(),
            message,
        }
    }

    /// A Sequential model's layers as a chain. `feeds` is the input when the model is nested in
    /// another; else the model's own input shape makes the graph input.
    fn sequential(
        &mut self,
        inner: &Value,
        feeds: Option<&[ValueId]>,
    ) -> Result<Vec<(String, ValueId)>> {
        let path = self.path;
        let layers = inner
            .get("layers")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::format(path, "Sequential config has no 'layers' list"))?;
        let mut entries: &[Value] = layers;
        let mut input_shape = None;
        let mut dtype = DType::F32;
        let mut input_name = "input".to_string();
        let time = self.time_length(0);
        if let Some(first) = entries.first() {
            let cfg = first.get("config").unwrap_or(&Value::Null);
            input_shape = batch_shape_of(path, cfg, time)?;
            if first.get("class_name").and_then(Value::as_str) == Some("InputLayer") {
                dtype = input_dtype(cfg);
                input_name = layer_name(first);
                entries = &entries[1..];
            }
        }
        if input_shape.is_none() {
            if let Some(shape) = inner.get("build_input_shape").filter(|v| !v.is_null()) {
                input_shape = Some(shape_from_json(path, shape, time)?);
            }
        }
        let mut x = match feeds {
            Some([x]) => *x,
            Some(other) => {
                return Err(Error::format(
                    path,
                    format!(
                        "a nested Sequential model is called on {} inputs",
                        other.len()
                    ),
                ))
            }
            None => {
                let shape = match (input_shape, entries.first()) {
                    (Some((shape, free)), _) => {
                        if free {
                            self.free_inputs.push(0);
                        }
                        shape
                    }
                    // TextVectorization sets the input itself.
                    (None, Some(l)) if l.get("class_name").and_then(Value::as_str) == Some("TextVectorization") => Vec::new(),
                    _ => {
                        return Err(Error::format(
                            path,
                            "Sequential model has no input shape (no InputLayer, batch_shape or build_input_shape)",
                        ))
                    }
                };
                self.graph.add_input(input_name, shape, dtype)
            }
        };
        let groups = h5_groups(entries);
        let mut last_name = self.graph.value_name(x);
        for entry in entries {
            let cfg = LayerConfig::new(path, entry)?;
            self.group = self.group_of(&groups, &cfg.name);
            last_name = cfg.name.clone();
            let outs = self.call_layer(&cfg, &[x], None, &Value::Null)?;
            x = match outs.as_slice() {
                [y] => *y,
                _ => {
                    return Err(cfg.error(
                        "class_name",
                        format!("gives {} outputs; a Sequential model needs one", outs.len()),
                    ))
                }
            };
        }
        Ok(vec![(last_name, x)])
    }

    fn group_of(&self, groups: &HashMap<String, String>, layer: &str) -> String {
        format!(
            "{}{}",
            self.group_prefix,
            groups.get(layer).map(String::as_str).unwrap_or_default()
        )
    }

    /// A model used as a layer: its graph is inlined on `inputs`; its layers' weights live in
    /// its own h5 group.
    fn nested_model(&mut self, cfg: &LayerConfig, inputs: &[ValueId]) -> Result<Vec<ValueId>> {
        let saved = std::mem::replace(&mut self.group_prefix, format!("{}/layers/", self.group));
        let outs = match cfg.class.as_str() {
            "Sequential" => self.sequential(cfg.config, Some(inputs)),
            _ => self.functional(cfg.config, Some(inputs)),
        };
        self.group_prefix = saved;
        Ok(outs?.into_iter().map(|(_, v)| v).collect())
    }

    /// A Functional model: every call of every layer, in an order where each call's inputs are
    /// ready. `feeds` bind the input layers when the model is nested in another.
    fn functional(
        &mut self,
        inner: &Value,
        feeds: Option<&[ValueId]>,
    ) -> Result<Vec<(String, ValueId)>> {
        let path = self.path;
        let layers = inner
            .get("layers")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::format(path, "Functional config has no 'layers' list"))?;
        let input_refs = port_refs(path, inner.get("input_layers"), "input_layers")?;
        let output_refs = port_refs(path, inner.get("output_layers"), "output_layers")?;
        if let Some(f) = feeds {
            if f.len() != input_refs.len() {
                return Err(Error::format(
                    path,
                    format!(
                        "nested model '{}' takes {} inputs, called with {}",
                        inner.get("name").and_then(Value::as_str).unwrap_or("?"),
                        input_refs.len(),
                        f.len()
                    ),
                ));
            }
        }
        let groups = h5_groups(layers);
        let mut tensors: HashMap<TensorRef, ValueId> = HashMap::new();
        // Input layers first, in the model's input order.
        for (i, r) in input_refs.iter().enumerate() {
            let layer = layers
                .iter()
                .find(|l| layer_name(l) == r.0)
                .ok_or_else(|| {
                    Error::format(
                        path,
                        format!("input layer '{}' is not among the layers", r.0),
                    )
                })?;
            let cfg = layer.get("config").unwrap_or(&Value::Null);
            let v = match feeds {
                Some(f) => f[i],
                None => {
                    let (shape, free) = batch_shape_of(path, cfg, self.time_length(i))?
                        .ok_or_else(|| {
                            Error::format(path, format!("input layer '{}' has no batch_shape", r.0))
                        })?;
                    if free {
                        self.free_inputs.push(i);
                    }
                    self.graph.add_input(r.0.clone(), shape, input_dtype(cfg))
                }
            };
            tensors.insert(r.clone(), v);
        }
        let mut calls: Vec<Vec<Call>> = layers.iter().map(parse_calls).collect();
        // A nested Functional model's calls are registered from node 1 (below). Keras 2 counts
        // them so everywhere, Keras 3 only in `output_layers`: its `keras_history` in call
        // arguments counts from 0, so those references move up by one.
        let nested: Vec<String> = layers
            .iter()
            .filter(|l| {
                matches!(
                    l.get("class_name").and_then(Value::as_str),
                    Some("Functional" | "Model")
                )
            })
            .map(layer_name)
            .collect();
        for call in calls.iter_mut().flatten().filter(|c| !c.args.is_null()) {
            for r in call.inputs.iter_mut().chain(call.mask.iter_mut()) {
                if nested.contains(&r.0) {
                    r.1 += 1;
                }
            }
        }
        let mut done: Vec<Vec<bool>> = calls.iter().map(|c| vec![false; c.len()]).collect();
        loop {
            let mut progressed = false;
            let mut pending = None;
            for (li, layer) in layers.iter().enumerate() {
                let name = layer_name(layer);
                for (ni, call) in calls[li].iter().enumerate() {
                    if done[li][ni] {
                        continue;
                    }
                    let ready = call
                        .inputs
                        .iter()
                        .chain(&call.mask)
                        .all(|r| tensors.contains_key(r));
                    if !ready {
                        pending.get_or_insert((li, ni));
                        continue;
                    }
                    let inputs: Vec<ValueId> = call.inputs.iter().map(|r| tensors[r]).collect();
                    let cfg = LayerConfig::new(path, layer)?;
                    let mask = match call.mask.first().map(|r| tensors[r]) {
                        Some(m) if self.graph.value(m).dtype != DType::Mask => {
                            Some(self.mask_from_input(&cfg, m)?)
                        }
                        other => other,
                    };
                    self.group = self.group_of(&groups, &name);
                    let outs = if cfg.class == "InputLayer" {
                        inputs.clone()
                    } else {
                        self.call_layer_in(&cfg, layer, &inputs, mask, call)?
                    };
                    // A nested Functional model's calls are numbered from 1: Keras counts the
                    // node linking its own inputs to its outputs as node 0 (models/functional.py).
                    let first = usize::from(matches!(cfg.class.as_str(), "Functional" | "Model"));
                    for (ti, v) in outs.into_iter().enumerate() {
                        tensors.insert((name.clone(), ni + first, ti), v);
                    }
                    done[li][ni] = true;
                    progressed = true;
                }
            }
            match pending {
                None => break,
                Some((li, ni)) if !progressed => {
                    let missing: Vec<String> = calls[li][ni]
                        .inputs
                        .iter()
                        .chain(&calls[li][ni].mask)
                        .filter(|r| !tensors.contains_key(*r))
                        .map(|r| r.0.clone())
                        .collect();
                    let layer = &layers[li];
                    return Err(Error::Layer {
                        path: path.to_path_buf(),
                        layer: layer_name(layer),
                        class: layer
                            .get("class_name")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                            .to_string(),
                        field: "inbound_nodes".into(),
                        message: format!(
                            "reads {} which no layer of the model computes (or the graph has a cycle)",
                            missing.join(", ")
                        ),
                    });
                }
                Some(_) => {}
            }
        }
        output_refs
            .iter()
            .map(|r| {
                tensors.get(r).map(|&v| (r.0.clone(), v)).ok_or_else(|| {
                    Error::format(
                        path,
                        format!(
                            "output '{}' (node {}, tensor {}) is never computed",
                            r.0, r.1, r.2
                        ),
                    )
                })
            })
            .collect()
    }

    /// One call of a layer in a Functional graph: nested models are inlined, operators
    /// (`keras.src.ops.*`) read their constant arguments, everything else is a layer.
    fn call_layer_in(
        &mut self,
        cfg: &LayerConfig,
        entry: &Value,
        inputs: &[ValueId],
        mask: Option<ValueId>,
        call: &Call,
    ) -> Result<Vec<ValueId>> {
        if is_operator(entry) {
            return self.operator(cfg, inputs, &call.args);
        }
        if cfg.class == "TFOpLambda" {
            return self.tf_op_lambda(cfg, inputs, &call.keras2_kwargs);
        }
        self.call_layer(cfg, inputs, mask, &call.kwargs)
    }

    /// Keras 2's TFOpLambda (`x + 3.0`, `tf.math.multiply(x, y)`, `tf.nn.relu6(x)` in a
    /// tf.keras Functional model): run as the Keras 3 operator of the same meaning. The
    /// second operand is a constant `y` in the call's kwargs, or a second tensor.
    fn tf_op_lambda(
        &mut self,
        cfg: &LayerConfig,
        inputs: &[ValueId],
        kwargs: &Value,
    ) -> Result<Vec<ValueId>> {
        let function = cfg.str_or("function", "")?;
        let class = match function {
            "__operators__.add" | "math.add" => "Add",
            "math.subtract" | "__operators__.sub" => "Subtract",
            "math.multiply" | "__operators__.mul" => "Multiply",
            "math.truediv" | "math.divide" | "__operators__.truediv" => "Divide",
            "math.maximum" => "Maximum",
            "math.minimum" => "Minimum",
            "nn.relu" => "Relu",
            "nn.relu6" => "Relu6",
            "math.sigmoid" | "nn.sigmoid" => "Sigmoid",
            "math.tanh" | "nn.tanh" => "Tanh",
            "nn.silu" | "nn.swish" => "Silu",
            "math.softplus" | "nn.softplus" => "Softplus",
            other => {
                return Err(cfg.unsupported(
                    "function",
                    &Value::from(other),
                    "TFOpLambda functions: + - * / (tf.math add, subtract, multiply, truediv), maximum, minimum, relu, relu6, sigmoid, tanh, silu, softplus",
                ))
            }
        };
        let entry = serde_json::json!({ "class_name": class, "config": { "name": cfg.name } });
        let op_cfg = LayerConfig::new(cfg.path, &entry)?;
        // Operator args: a tensor stands as an object, a constant as itself.
        let tensor = serde_json::json!({});
        let args = match kwargs.get("y") {
            Some(Value::Number(c)) => Value::Array(vec![tensor, Value::Number(c.clone())]),
            Some(y) if y.is_array() => Value::Array(vec![tensor.clone(), tensor]),
            Some(other) => {
                return Err(cfg.error("inbound_nodes", format!("unsupported operand y = {other}")))
            }
            None => Value::Array(vec![tensor]),
        };
        self.operator(&op_cfg, inputs, &args)
    }

    /// Keras 3 operator nodes in a Functional config.
    fn operator(
        &mut self,
        cfg: &LayerConfig,
        inputs: &[ValueId],
        args: &Value,
    ) -> Result<Vec<ValueId>> {
        if let Some(outs) = self.activation_operator(cfg, inputs) {
            return outs;
        }
        if let Some(outs) = self.arithmetic_operator(cfg, inputs, args)? {
            return Ok(outs);
        }
        match cfg.class.as_str() {
            // keras.ops.mean over every axis of an item but the channels is global average
            // pooling; other axis sets are not supported.
            "Mean" => {
                let [x] = inputs else {
                    return Err(cfg.error("args", "mean takes one tensor"));
                };
                let rank = self.info(*x).shape.len();
                let axes: Vec<i64> = match cfg.get("axis") {
                    Some(Value::Array(a)) => a.iter().filter_map(Value::as_i64).collect(),
                    Some(v) => v.as_i64().into_iter().collect(),
                    None => Vec::new(),
                };
                // Keras axes count the batch as 0; negative ones count from the end.
                let mut item_axes: Vec<i64> = axes
                    .iter()
                    .map(|&a| if a < 0 { a + rank as i64 + 1 } else { a } - 1)
                    .collect();
                item_axes.sort_unstable();
                let spatial: Vec<i64> = (0..rank.saturating_sub(1) as i64).collect();
                if rank < 2 || item_axes != spatial {
                    return Err(cfg.unsupported(
                        "axis",
                        &cfg.get("axis").cloned().unwrap_or_default(),
                        "mean over all axes but the batch and the channels (global average pooling) only",
                    ));
                }
                let op = Op::GlobalPool {
                    op: PoolOp::Average,
                    keepdims: cfg.bool_or("keepdims", false)?,
                    rank: rank - 1,
                };
                self.add(cfg, op, &[*x], None)
            }
            "NotEqual" => {
                let compares_with_zero = args.get(1).and_then(Value::as_f64) == Some(0.0);
                if !compares_with_zero || inputs.len() != 1 {
                    return Err(cfg.error(
                        "args",
                        "unsupported: a NotEqual op that is not a padding mask (ids != 0)",
                    ));
                }
                let ids = self.as_ids(cfg, inputs[0])?;
                self.add(cfg, Op::PaddingMask, &[ids], None)
            }
            other => Err(cfg.error(
                "class_name",
                format!("Keras operator '{other}' is not supported by wgnn"),
            )),
        }
    }

    /// A `mask=` argument given as a tensor of its own (`layer(x, mask=mask_input)`, a boolean
    /// model input): the mask is where it is nonzero, read as the ids of a padding mask.
    fn mask_from_input(&mut self, cfg: &LayerConfig, v: ValueId) -> Result<ValueId> {
        let ids = self.as_ids(cfg, v).map_err(|_| {
            cfg.error(
                "mask",
                "a mask= tensor must be a mask or a model input (boolean or 0/1)",
            )
        })?;
        if let Some(n) = self
            .graph
            .nodes
            .iter()
            .find(|n| matches!(n.op, Op::PaddingMask) && n.inputs[0] == ids)
        {
            return Ok(n.outputs[0]);
        }
        self.add_padding_mask(cfg, ids, "mask")
    }

    /// A `{layer}_mask` node computing `ids != 0` (what Keras records as `NotEqual`); a shape
    /// error names `field`.
    pub(crate) fn add_padding_mask(
        &mut self,
        cfg: &LayerConfig,
        ids: ValueId,
        field: &str,
    ) -> Result<ValueId> {
        let out = self
            .graph
            .add_node(
                &format!("{}_mask", cfg.name),
                "NotEqual",
                Op::PaddingMask,
                &[ids],
                None,
            )
            .map_err(|m| cfg.error(field, m))?;
        Ok(out[0])
    }

    /// `v` as token ids: a float graph input that nothing has read yet becomes an id input
    /// (Keras casts to int in Embedding); anything else must already hold ids.
    pub(crate) fn as_ids(&mut self, cfg: &LayerConfig, v: ValueId) -> Result<ValueId> {
        let info = self.graph.value(v);
        if info.dtype == DType::Ids {
            return Ok(v);
        }
        let is_input = self.graph.inputs.iter().any(|p| p.value == v);
        let read = self
            .graph
            .nodes
            .iter()
            .any(|n| n.inputs.contains(&v) || n.mask == Some(v));
        if info.dtype == DType::F32 && is_input && !read {
            self.graph.values[v].dtype = DType::Ids;
            return Ok(v);
        }
        Err(cfg.error(
            "input",
            "token ids must come straight from a model input (wgnn reads ids only as model inputs)",
        ))
    }

    /// One call of one layer on `inputs`, with what its config says for training: a
    /// `trainable: false` layer (or nested model) freezes the weights made inside it, an
    /// activity regularizer penalizes its outputs.
    pub(crate) fn call_layer(
        &mut self,
        cfg: &LayerConfig,
        inputs: &[ValueId],
        explicit_mask: Option<ValueId>,
        kwargs: &Value,
    ) -> Result<Vec<ValueId>> {
        let frozen = self.frozen;
        self.frozen |= !cfg.bool_or("trainable", true)?;
        let outs = self.layer_ops(cfg, inputs, explicit_mask, kwargs);
        self.frozen = frozen;
        let outs = outs?;
        self.record_activity_regularizer(cfg, &outs)?;
        Ok(outs)
    }

    /// One call of one layer on `inputs`: its op(s), then Keras's mask propagation.
    fn layer_ops(
        &mut self,
        cfg: &LayerConfig,
        inputs: &[ValueId],
        explicit_mask: Option<ValueId>,
        kwargs: &Value,
    ) -> Result<Vec<ValueId>> {
        let explicit_mask = self.resolve_mask(cfg, explicit_mask)?;
        let in_mask =
            explicit_mask.or_else(|| inputs.first().and_then(|v| self.masks.get(v).copied()));
        match cfg.class.as_str() {
            "Sequential" | "Functional" | "Model" => return self.nested_model(cfg, inputs),
            "TextVectorization" => return self.text_vectorization(cfg, inputs),
            class if super::layers::is_merge_layer(class) => {
                return self.merge_layer(cfg, inputs, explicit_mask)
            }
            // The sequence, then any initial states. Keras 3 fills in the implicit mask only
            // for a call with one tensor argument: with initial states the layer runs unmasked
            // (unless given mask=), though its output still carries the sequence's mask.
            // Keras 2 (a call recorded without kwargs) masks it either way.
            "SimpleRNN" | "LSTM" | "GRU" | "Bidirectional" => {
                let keras3_call = !kwargs.is_null();
                let node_mask = if inputs.len() > 1 && keras3_call {
                    explicit_mask
                } else {
                    in_mask
                };
                return self.recurrent_layer(cfg, inputs, node_mask, in_mask);
            }
            _ => {}
        }
        let x = match inputs {
            [x] => *x,
            _ => {
                return Err(cfg.error(
                    "inbound_nodes",
                    format!(
                        "layer class '{}' takes one input, got {}",
                        cfg.class,
                        inputs.len()
                    ),
                ))
            }
        };
        let outs = self.single_input_layer(cfg, x, in_mask)?;
        Ok(outs)
    }

    /// A leading TextVectorization: the model input becomes the token ids it would produce.
    fn text_vectorization(
        &mut self,
        cfg: &LayerConfig,
        inputs: &[ValueId],
    ) -> Result<Vec<ValueId>> {
        let [x] = inputs else {
            return Err(cfg.error("inbound_nodes", "takes one input"));
        };
        let is_input = self.graph.inputs.iter().any(|p| p.value == *x);
        if !is_input || self.graph.text_vectorization.is_some() {
            return Err(cfg.error(
                "class_name",
                "TextVectorization must be the model's first layer",
            ));
        }
        let spec = crate::text::text_vectorization_from_keras(
            self.path,
            &cfg.name,
            cfg.config,
            self.assets,
        )?;
        let length = spec.output_sequence_length.ok_or_else(|| {
            cfg.error(
                "output_sequence_length",
                "must be set: wgnn needs a fixed sequence length",
            )
        })?;
        self.graph.values[*x] = ValueInfo::new(vec![length], DType::Ids);
        self.graph.text_vectorization = Some(spec);
        Ok(vec![*x])
    }
}

/// keras.src.utils.naming.to_snake_case: `SimpleRNN` -> `simple_rnn`, `Conv2D` -> `conv2d`,
/// `MaxPooling2D` -> `max_pooling2d`, `LeakyReLU` -> `leaky_re_lu`.
pub fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    // re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    let mut step1 = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if i > 0
            && c.is_ascii_uppercase()
            && chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase())
        {
            step1.push('_');
        }
        step1.push(c);
        i += 1;
    }
    // re.sub("([a-z])([A-Z])", r"\1_\2", ...).lower()
    let s1: Vec<char> = step1.chars().collect();
    let mut out = String::new();
    for (j, &c) in s1.iter().enumerate() {
        if j > 0 && c.is_ascii_uppercase() && s1[j - 1].is_ascii_lowercase() {
            out.push('_');
        }
        out.extend(c.to_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::snake_case;

    #[test]
    fn snake_case_matches_keras_group_names() {
        for (class, group) in [
            ("SimpleRNN", "simple_rnn"),
            ("Conv2D", "conv2d"),
            ("MaxPooling2D", "max_pooling2d"),
            ("GlobalAveragePooling2D", "global_average_pooling2d"),
            ("LeakyReLU", "leaky_re_lu"),
            ("ReLU", "re_lu"),
            ("LSTM", "lstm"),
            ("Bidirectional", "bidirectional"),
            ("TextVectorization", "text_vectorization"),
            ("InputLayer", "input_layer"),
            ("ELU", "elu"),
            ("SpatialDropout2D", "spatial_dropout2d"),
        ] {
            assert_eq!(snake_case(class), group, "{class}");
        }
    }
}
