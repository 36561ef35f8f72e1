//! Keras config (Sequential, or Functional as a single chain) + weights -> `ModelIr`, with every
//! shape resolved and every option checked at load.

use std::path::Path;

use ndarray::{Array1, Array2, Array4};
use serde_json::Value;

use super::fields::{as_usize, LayerConfig};
use super::weights::{RawWeight, WeightSource};
use crate::error::{Error, Result};
use crate::ir::*;

pub fn build_model(
    path: &Path,
    weights_path: &Path,
    config: &Value,
    mut weights: WeightSource,
    assets: &[(String, Vec<u8>)],
) -> Result<ModelIr> {
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
    let (input_shape, entries) = match class {
        "Sequential" => sequential_layers(path, inner)?,
        "Functional" | "Model" => functional_chain(path, inner)?,
        other => {
            return Err(Error::format(
                path,
                format!("unsupported model class '{other}' (expected Sequential or Functional)"),
            ))
        }
    };

    let mut builder = Builder {
        weights_path,
        weights: &mut weights,
        shape: input_shape.clone(),
        mask_alive: false,
        layers: Vec::new(),
        group: String::new(),
        group_counts: Default::default(),
    };
    let mut model_input_shape = input_shape;
    let mut text_spec = None;
    for (i, entry) in entries.iter().enumerate() {
        let cfg = LayerConfig::new(path, entry)?;
        if cfg.class == "TextVectorization" {
            if i != 0 {
                return Err(cfg.error(
                    "class_name",
                    "TextVectorization must be the model's first layer",
                ));
            }
            let spec =
                crate::text::text_vectorization_from_keras(path, &cfg.name, cfg.config, assets)?;
            let length = spec.output_sequence_length.ok_or_else(|| {
                cfg.error(
                    "output_sequence_length",
                    "must be set: wgnn needs a fixed sequence length",
                )
            })?;
            builder.shape = vec![length];
            model_input_shape = vec![length];
            text_spec = Some(spec);
            continue;
        }
        builder.add(&cfg)?;
    }
    let layers = builder.layers;
    let input_kind = match layers.first().map(|l| &l.kind) {
        Some(LayerKind::Embedding(_)) => InputKind::TokenIds,
        _ if text_spec.is_some() => {
            return Err(Error::format(
                path,
                "TextVectorization must be followed by an Embedding",
            ))
        }
        _ => InputKind::Float,
    };
    weights.finish()?;
    Ok(ModelIr {
        name,
        input_kind,
        input_shape: model_input_shape,
        layers,
        text_vectorization: text_spec,
    })
}

/// Input shape without the batch axis, from `batch_shape` (Keras 3) or `batch_input_shape` (Keras 2).
fn batch_shape_of(path: &Path, cfg: &Value) -> Result<Option<Vec<usize>>> {
    let Some(shape) = cfg
        .get("batch_shape")
        .or_else(|| cfg.get("batch_input_shape"))
        .filter(|v| !v.is_null())
    else {
        return Ok(None);
    };
    shape_from_json(path, shape).map(Some)
}

fn shape_from_json(path: &Path, shape: &Value) -> Result<Vec<usize>> {
    let items = shape
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| Error::format(path, format!("bad input shape {shape}")))?;
    items[1..]
        .iter()
        .map(|d| {
            as_usize(d).filter(|&n| n > 0).ok_or_else(|| {
                Error::format(
                    path,
                    format!("input shape {shape} has a free dimension: wgnn needs static shapes (besides the batch)"),
                )
            })
        })
        .collect()
}

fn sequential_layers(path: &Path, inner: &Value) -> Result<(Shape, Vec<Value>)> {
    let layers = inner
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::format(path, "Sequential config has no 'layers' list"))?;
    let mut entries: Vec<Value> = layers.clone();
    let mut input_shape = None;
    if let Some(first) = entries.first() {
        let cfg = first.get("config").unwrap_or(&Value::Null);
        if first.get("class_name").and_then(Value::as_str) == Some("InputLayer") {
            input_shape = batch_shape_of(path, cfg)?;
            entries.remove(0);
        } else {
            input_shape = batch_shape_of(path, cfg)?;
        }
    }
    if input_shape.is_none() {
        if let Some(shape) = inner.get("build_input_shape").filter(|v| !v.is_null()) {
            input_shape = Some(shape_from_json(path, shape)?);
        }
    }
    let input_shape = input_shape.ok_or_else(|| {
        Error::format(
            path,
            "Sequential model has no input shape (no InputLayer, batch_shape or build_input_shape)",
        )
    })?;
    Ok((input_shape, entries))
}

/// Names of the layers feeding one inbound node, in Keras 3 (`keras_history`) or Keras 2
/// (`[[name, i, j, kwargs], ...]`) form.
fn inbound_layer_names(node: &Value, out: &mut Vec<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Array(h)) = map.get("keras_history") {
                if let Some(Value::String(n)) = h.first() {
                    out.push(n.clone());
                    return;
                }
            }
            for v in map.values() {
                inbound_layer_names(v, out);
            }
        }
        Value::Array(items) => {
            // Keras 2: [name, node_index, tensor_index, kwargs]
            if items.len() >= 3
                && items[0].is_string()
                && items[1].is_number()
                && items[2].is_number()
            {
                if let Some(n) = items[0].as_str() {
                    out.push(n.to_string());
                }
                return;
            }
            for v in items {
                inbound_layer_names(v, out);
            }
        }
        _ => {}
    }
}

/// A Functional model whose graph is one chain from its single input to its single output.
fn functional_chain(path: &Path, inner: &Value) -> Result<(Shape, Vec<Value>)> {
    let layers = inner
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::format(path, "Functional config has no 'layers' list"))?;
    let name_of = |l: &Value| -> String {
        l.get("name")
            .or_else(|| l.get("config").and_then(|c| c.get("name")))
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string()
    };
    let unsupported = |layer: &Value, what: &str| Error::Layer {
        path: path.to_path_buf(),
        layer: name_of(layer),
        class: layer
            .get("class_name")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string(),
        field: "inbound_nodes".into(),
        message: format!(
            "unsupported: {what} (wgnn runs Functional models that are a single chain)"
        ),
    };
    let mut inputs = Vec::new();
    let mut parent: Vec<Option<String>> = Vec::new();
    // Keras 3 writes `Embedding(mask_zero=True)`'s mask into the graph as a `NotEqual(ids, 0)`
    // op passed to the next layers as `mask=`. It is the same mask wgnn derives from the ids, so
    // such ops are left out of the chain; any other mask source is unsupported.
    let mut mask_ops = Vec::new();
    let mut mask_uses = Vec::new();
    for layer in layers {
        let mut names = Vec::new();
        if let Some(nodes) = layer.get("inbound_nodes").and_then(Value::as_array) {
            if nodes.len() > 1 {
                return Err(unsupported(
                    layer,
                    "the layer is called more than once (shared layer)",
                ));
            }
            for n in nodes {
                match (n.get("args"), n.get("kwargs")) {
                    (Some(args), kwargs) => {
                        inbound_layer_names(args, &mut names);
                        if let Some(mask) = kwargs.and_then(|k| k.get("mask")) {
                            let mut sources = Vec::new();
                            inbound_layer_names(mask, &mut sources);
                            mask_uses.extend(sources.into_iter().map(|s| (s, layer)));
                        }
                    }
                    _ => inbound_layer_names(n, &mut names),
                }
            }
        }
        if layer.get("class_name").and_then(Value::as_str) == Some("NotEqual") {
            let compares_with_zero = layer
                .pointer("/inbound_nodes/0/args/1")
                .and_then(Value::as_f64)
                == Some(0.0);
            if !compares_with_zero {
                return Err(unsupported(
                    layer,
                    "a NotEqual op that is not a padding mask (ids != 0)",
                ));
            }
            mask_ops.push(name_of(layer));
            parent.push(None);
            continue;
        }
        match names.len() {
            0 => {
                if layer.get("class_name").and_then(Value::as_str) != Some("InputLayer") {
                    return Err(unsupported(layer, "a layer without inputs"));
                }
                inputs.push(layer);
                parent.push(None);
            }
            1 => parent.push(names.pop()),
            _ => return Err(unsupported(layer, "the layer merges several inputs")),
        }
    }
    for (source, layer) in &mask_uses {
        if !mask_ops.contains(source) {
            return Err(unsupported(
                layer,
                &format!("a mask computed by '{source}'"),
            ));
        }
    }
    if inputs.len() != 1 {
        return Err(Error::format(
            path,
            format!(
                "unsupported: the model has {} inputs (wgnn runs single-input chains)",
                inputs.len()
            ),
        ));
    }
    let input = inputs[0];
    let input_shape = batch_shape_of(path, input.get("config").unwrap_or(&Value::Null))?
        .ok_or_else(|| Error::format(path, "the InputLayer has no batch_shape"))?;
    // Walk the chain from the input, one consumer at a time.
    let mut order = Vec::new();
    let mut current = name_of(input);
    loop {
        let consumers: Vec<usize> = (0..layers.len())
            .filter(|&i| parent[i].as_deref() == Some(current.as_str()))
            .collect();
        match consumers.as_slice() {
            [] => break,
            [next] => {
                order.push(layers[*next].clone());
                current = name_of(&layers[*next]);
            }
            [_, second, ..] => {
                return Err(unsupported(
                    &layers[*second],
                    &format!("the output of '{current}' branches"),
                ));
            }
        }
    }
    if order.len() + 1 + mask_ops.len() != layers.len() {
        return Err(Error::format(
            path,
            "unsupported: the model graph is not a single chain",
        ));
    }
    Ok((input_shape, order))
}

struct Builder<'a> {
    weights_path: &'a Path,
    weights: &'a mut WeightSource,
    /// The current tensor shape (no batch axis).
    shape: Shape,
    /// An Embedding(mask_zero=True) mask still reaches the current tensor.
    mask_alive: bool,
    layers: Vec<Layer>,
    /// The current layer's h5 group, and how often each group stem was used so far.
    group: String,
    group_counts: std::collections::HashMap<String, usize>,
}

impl Builder<'_> {
    fn add(&mut self, cfg: &LayerConfig) -> Result<()> {
        self.group = self.next_group(&cfg.class);
        let input_shape = self.shape.clone();
        let kind = self.layer_kind(cfg)?;
        let output_shape = self.shape.clone();
        self.layers.push(Layer {
            name: cfg.name.clone(),
            class: cfg.class.clone(),
            kind,
            input_shape,
            output_shape,
        });
        Ok(())
    }

    /// Builds one layer and updates `self.shape` to its output shape.
    fn layer_kind(&mut self, cfg: &LayerConfig) -> Result<LayerKind> {
        let mask_passes = matches!(
            cfg.class.as_str(),
            "Dropout"
                | "SpatialDropout1D"
                | "Activation"
                | "Dense"
                | "GaussianNoise"
                | "GaussianDropout"
        );
        let kind = match cfg.class.as_str() {
            "InputLayer" => {
                return Err(cfg.error("class_name", "an InputLayer in the middle of the model"))
            }
            "Conv2D" | "Convolution2D" => self.conv2d(cfg)?,
            "MaxPooling2D" | "MaxPool2D" => self.pool2d(cfg, PoolOp::Max)?,
            "AveragePooling2D" | "AvgPool2D" => self.pool2d(cfg, PoolOp::Average)?,
            "GlobalMaxPooling2D" | "GlobalMaxPool2D" => self.global_pool2d(cfg, PoolOp::Max)?,
            "GlobalAveragePooling2D" | "GlobalAvgPool2D" => {
                self.global_pool2d(cfg, PoolOp::Average)?
            }
            "Flatten" => {
                cfg.require_channels_last()?;
                self.shape = vec![self.shape.iter().product()];
                LayerKind::Reshape
            }
            "Reshape" => self.reshape(cfg)?,
            "Dense" => self.dense(cfg)?,
            "Dropout"
            | "SpatialDropout1D"
            | "SpatialDropout2D"
            | "SpatialDropout3D"
            | "GaussianNoise"
            | "GaussianDropout"
            | "AlphaDropout"
            | "ActivityRegularization" => LayerKind::Identity,
            "Rescaling" => self.rescaling(cfg)?,
            "Activation" => LayerKind::Activation(cfg.activation("activation")?),
            "ReLU" => {
                let max_value = match cfg.get("max_value") {
                    None => None,
                    Some(_) => Some(cfg.f32_or("max_value", 0.0)?),
                };
                LayerKind::Activation(Activation::Relu {
                    negative_slope: cfg.f32_or("negative_slope", 0.0)?,
                    max_value,
                    threshold: cfg.f32_or("threshold", 0.0)?,
                })
            }
            "LeakyReLU" => {
                // Keras 3 calls it negative_slope (default 0.3); Keras 2 called it alpha.
                let slope = match cfg.get("negative_slope") {
                    Some(_) => cfg.f32_or("negative_slope", 0.3)?,
                    None => cfg.f32_or("alpha", 0.3)?,
                };
                LayerKind::Activation(Activation::Relu {
                    negative_slope: slope,
                    max_value: None,
                    threshold: 0.0,
                })
            }
            "ELU" => LayerKind::Activation(Activation::Elu {
                alpha: cfg.f32_or("alpha", 1.0)?,
            }),
            "Softmax" => {
                let axis = cfg.get("axis").cloned().unwrap_or(Value::from(-1));
                let last = self.shape.len() as i64;
                let ok = match &axis {
                    Value::Number(n) => n.as_i64() == Some(-1) || n.as_i64() == Some(last),
                    Value::Array(a) if a.len() == 1 => {
                        a[0].as_i64() == Some(-1) || a[0].as_i64() == Some(last)
                    }
                    _ => false,
                };
                if !ok {
                    return Err(cfg.unsupported("axis", &axis, "only the last axis is supported"));
                }
                LayerKind::Activation(Activation::Softmax)
            }
            "Embedding" => self.embedding(cfg)?,
            "SimpleRNN" | "LSTM" => self.recurrent(cfg)?,
            "Bidirectional" => self.bidirectional(cfg)?,
            "GRU" | "ConvLSTM2D" | "Conv1D" | "Conv3D" | "DepthwiseConv2D" | "SeparableConv2D"
            | "Conv2DTranspose" | "BatchNormalization" | "LayerNormalization" | "Masking"
            | "Attention" | "MultiHeadAttention" | "Add" | "Concatenate" | "Multiply"
            | "TimeDistributed" | "RNN" | "Sequential" | "Functional" | "Model" => {
                return Err(cfg.error(
                    "class_name",
                    format!("layer class '{}' is not supported by wgnn", cfg.class),
                ))
            }
            other => {
                return Err(cfg.error("class_name", format!("unknown layer class '{other}'")));
            }
        };
        if !mask_passes && !matches!(kind, LayerKind::Embedding(_) | LayerKind::Recurrent(_)) {
            self.mask_alive = false;
        }
        Ok(kind)
    }

    /// Keras's h5 group for the next layer of `class`: snake_case class name, then `_1`, `_2`
    /// for later layers of the same class (keras.src.saving.saving_lib).
    fn next_group(&mut self, class: &str) -> String {
        let stem = snake_case(class);
        let count = self.group_counts.entry(stem.clone()).or_insert(0);
        let group = if *count == 0 {
            stem.clone()
        } else {
            format!("{stem}_{count}")
        };
        *count += 1;
        group
    }

    fn take(&mut self, cfg: &LayerConfig, sub: &[&str], count: usize) -> Result<Vec<RawWeight>> {
        self.weights.take(&cfg.name, &self.group, sub, count)
    }

    fn weight_error(&self, cfg: &LayerConfig, message: String) -> Error {
        Error::Weights {
            path: self.weights_path.to_path_buf(),
            layer: cfg.name.clone(),
            message,
        }
    }

    /// Checks a weight's shape against what the config implies.
    fn check_shape(
        &self,
        cfg: &LayerConfig,
        what: &str,
        raw: &RawWeight,
        expected: &[usize],
    ) -> Result<()> {
        if raw.shape != expected {
            return Err(self.weight_error(
                cfg,
                format!("{what}: expected shape {expected:?}, found {:?}", raw.shape),
            ));
        }
        Ok(())
    }

    fn require_rank(&self, cfg: &LayerConfig, rank: usize, what: &str) -> Result<()> {
        if self.shape.len() != rank {
            return Err(cfg.error(
                "input_shape",
                format!(
                    "expects {what} input, got shape {:?} (without the batch axis)",
                    self.shape
                ),
            ));
        }
        Ok(())
    }

    fn conv2d(&mut self, cfg: &LayerConfig) -> Result<LayerKind> {
        cfg.require_channels_last()?;
        self.require_rank(cfg, 3, "(H, W, C)")?;
        let dilation = cfg.pair_or("dilation_rate", [1, 1])?;
        if dilation != [1, 1] {
            return Err(cfg.unsupported(
                "dilation_rate",
                &cfg.get("dilation_rate").cloned().unwrap_or_default(),
                "only 1 is supported",
            ));
        }
        cfg.require_absent_or("groups", &[Value::from(1)], "only groups=1 is supported")?;
        cfg.require_absent_or("lora_rank", &[], "LoRA layers are not supported")?;
        let filters = cfg.usize("filters")?;
        let kernel_size = cfg.pair("kernel_size")?;
        let strides = cfg.pair_or("strides", [1, 1])?;
        let padding = cfg.padding()?;
        let use_bias = cfg.bool_or("use_bias", true)?;
        let activation = cfg.activation("activation")?;
        let in_channels = self.shape[2];
        let window = Window2d::new(
            kernel_size,
            strides,
            padding,
            [self.shape[0], self.shape[1]],
        );
        if window.out_hw.contains(&0) {
            return Err(cfg.error(
                "kernel_size",
                format!(
                    "kernel {kernel_size:?} does not fit the input {:?} with 'valid' padding",
                    self.shape
                ),
            ));
        }
        let w = self.take(cfg, &[], 1 + use_bias as usize)?;
        let kshape = [kernel_size[0], kernel_size[1], in_channels, filters];
        self.check_shape(cfg, "kernel", &w[0], &kshape)?;
        let kernel = Array4::from_shape_vec(kshape, w[0].values.clone())
            .map_err(|e| self.weight_error(cfg, format!("kernel: {e}")))?;
        let bias = if use_bias {
            self.check_shape(cfg, "bias", &w[1], &[filters])?;
            Some(Array1::from(w[1].values.clone()))
        } else {
            None
        };
        self.shape = vec![window.out_hw[0], window.out_hw[1], filters];
        Ok(LayerKind::Conv2d(Conv2d {
            filters,
            window,
            in_channels,
            kernel,
            bias,
            activation,
        }))
    }

    fn pool2d(&mut self, cfg: &LayerConfig, op: PoolOp) -> Result<LayerKind> {
        cfg.require_channels_last()?;
        self.require_rank(cfg, 3, "(H, W, C)")?;
        let pool = cfg.pair_or("pool_size", [2, 2])?;
        let strides = cfg.pair_or("strides", pool)?;
        let padding = cfg.padding()?;
        let window = Window2d::new(pool, strides, padding, [self.shape[0], self.shape[1]]);
        if window.out_hw.contains(&0) {
            return Err(cfg.error(
                "pool_size",
                format!(
                    "pool {pool:?} does not fit the input {:?} with 'valid' padding",
                    self.shape
                ),
            ));
        }
        let channels = self.shape[2];
        self.shape = vec![window.out_hw[0], window.out_hw[1], channels];
        Ok(LayerKind::Pool2d(Pool2d {
            op,
            window,
            channels,
        }))
    }

    fn global_pool2d(&mut self, cfg: &LayerConfig, op: PoolOp) -> Result<LayerKind> {
        cfg.require_channels_last()?;
        self.require_rank(cfg, 3, "(H, W, C)")?;
        let keepdims = cfg.bool_or("keepdims", false)?;
        let c = self.shape[2];
        self.shape = if keepdims { vec![1, 1, c] } else { vec![c] };
        Ok(LayerKind::GlobalPool2d { op, keepdims })
    }

    fn reshape(&mut self, cfg: &LayerConfig) -> Result<LayerKind> {
        let target = cfg
            .get("target_shape")
            .and_then(Value::as_array)
            .ok_or_else(|| cfg.error("target_shape", "missing"))?;
        let total: usize = self.shape.iter().product();
        let mut dims = Vec::new();
        let mut free = None;
        for (i, d) in target.iter().enumerate() {
            match d.as_i64() {
                Some(-1) if free.is_none() => {
                    free = Some(i);
                    dims.push(1);
                }
                Some(n) if n > 0 => dims.push(n as usize),
                _ => {
                    return Err(cfg.unsupported(
                        "target_shape",
                        &Value::Array(target.clone()),
                        "positive sizes and at most one -1",
                    ))
                }
            }
        }
        let known: usize = dims.iter().product();
        if let Some(i) = free {
            if known == 0 || !total.is_multiple_of(known) {
                return Err(cfg.error(
                    "target_shape",
                    format!("cannot reshape {:?} to {target:?}", self.shape),
                ));
            }
            dims[i] = total / known;
        }
        if dims.iter().product::<usize>() != total {
            return Err(cfg.error(
                "target_shape",
                format!("cannot reshape {:?} to {target:?}", self.shape),
            ));
        }
        self.shape = dims;
        Ok(LayerKind::Reshape)
    }

    fn dense(&mut self, cfg: &LayerConfig) -> Result<LayerKind> {
        cfg.require_absent_or("lora_rank", &[], "LoRA layers are not supported")?;
        let units = cfg.usize("units")?;
        let use_bias = cfg.bool_or("use_bias", true)?;
        let activation = cfg.activation("activation")?;
        let Some(&input_dim) = self.shape.last() else {
            return Err(cfg.error(
                "input_shape",
                "Dense needs an input with at least one feature axis",
            ));
        };
        let w = self.take(cfg, &[], 1 + use_bias as usize)?;
        self.check_shape(cfg, "kernel", &w[0], &[input_dim, units])?;
        let kernel = Array2::from_shape_vec((input_dim, units), w[0].values.clone())
            .map_err(|e| self.weight_error(cfg, format!("kernel: {e}")))?;
        let bias = if use_bias {
            self.check_shape(cfg, "bias", &w[1], &[units])?;
            Some(Array1::from(w[1].values.clone()))
        } else {
            None
        };
        if let Some(last) = self.shape.last_mut() {
            *last = units;
        }
        Ok(LayerKind::Dense(Dense {
            units,
            kernel,
            bias,
            activation,
        }))
    }

    fn rescaling(&mut self, cfg: &LayerConfig) -> Result<LayerKind> {
        let channels = self.shape.last().copied().unwrap_or(1);
        let read = |field: &str, default: f32| -> Result<Vec<f32>> {
            match cfg.get(field) {
                None => Ok(vec![default]),
                Some(Value::Array(items)) => {
                    let vals: Option<Vec<f32>> =
                        items.iter().map(|v| v.as_f64().map(|x| x as f32)).collect();
                    let vals = vals.ok_or_else(|| cfg.error(field, "expected numbers"))?;
                    if vals.len() != 1 && vals.len() != channels {
                        return Err(cfg.error(
                            field,
                            format!(
                                "has {} values; expected 1 or one per channel ({channels})",
                                vals.len()
                            ),
                        ));
                    }
                    Ok(vals)
                }
                Some(_) => Ok(vec![cfg.f32_or(field, default)?]),
            }
        };
        Ok(LayerKind::Rescaling {
            scale: read("scale", 1.0)?,
            offset: read("offset", 0.0)?,
        })
    }

    fn embedding(&mut self, cfg: &LayerConfig) -> Result<LayerKind> {
        if !self.layers.is_empty() {
            return Err(cfg.error("class_name", "Embedding must be the model's first layer"));
        }
        self.require_rank(cfg, 1, "token ids (T,)")?;
        cfg.require_absent_or("lora_rank", &[], "LoRA layers are not supported")?;
        let input_dim = cfg.usize("input_dim")?;
        let output_dim = cfg.usize("output_dim")?;
        let mask_zero = cfg.bool_or("mask_zero", false)?;
        let w = self.take(cfg, &[], 1)?;
        self.check_shape(cfg, "embeddings", &w[0], &[input_dim, output_dim])?;
        let table = Array2::from_shape_vec((input_dim, output_dim), w[0].values.clone())
            .map_err(|e| self.weight_error(cfg, format!("embeddings: {e}")))?;
        self.shape.push(output_dim);
        self.mask_alive = mask_zero;
        Ok(LayerKind::Embedding(Embedding {
            input_dim,
            output_dim,
            table,
            mask_zero,
        }))
    }

    /// Options every recurrent layer config must satisfy.
    fn check_rnn_options(cfg: &LayerConfig) -> Result<()> {
        if cfg.bool_or("stateful", false)? {
            return Err(cfg.unsupported(
                "stateful",
                &Value::Bool(true),
                "stateful RNNs are not supported",
            ));
        }
        if cfg.bool_or("return_state", false)? {
            return Err(cfg.unsupported(
                "return_state",
                &Value::Bool(true),
                "return_state is not supported",
            ));
        }
        if cfg.bool_or("time_major", false)? {
            return Err(cfg.unsupported(
                "time_major",
                &Value::Bool(true),
                "time_major is not supported",
            ));
        }
        Ok(())
    }

    /// One direction's cell: options from `cfg`, weights from `sub` of the layer named `owner`.
    fn cell(
        &mut self,
        owner: &LayerConfig,
        cfg: &LayerConfig,
        sub: &[&str],
        input_features: usize,
    ) -> Result<RecurrentCell> {
        Self::check_rnn_options(cfg)?;
        let kind = match cfg.class.as_str() {
            "SimpleRNN" => CellKind::SimpleRnn,
            "LSTM" => CellKind::Lstm,
            other => {
                return Err(cfg.error(
                    "class_name",
                    format!(
                        "recurrent layer class '{other}' is not supported (SimpleRNN and LSTM are)"
                    ),
                ))
            }
        };
        let units = cfg.usize("units")?;
        if units == 0 {
            return Err(cfg.error("units", "must be positive"));
        }
        let activation = match cfg.get("activation") {
            None => Activation::Tanh,
            Some(_) => cfg.activation("activation")?,
        };
        let recurrent_activation = match cfg.get("recurrent_activation") {
            None => Activation::Sigmoid,
            Some(_) => cfg.activation("recurrent_activation")?,
        };
        if activation == Activation::Softmax || recurrent_activation == Activation::Softmax {
            return Err(cfg.error(
                "activation",
                "softmax is not supported inside a recurrent cell",
            ));
        }
        let use_bias = cfg.bool_or("use_bias", true)?;
        let go_backwards = cfg.bool_or("go_backwards", false)?;
        let g = kind.gates() * units;
        let w = self.take(owner, sub, 2 + use_bias as usize)?;
        let what = |n: &str| {
            if sub.len() > 1 {
                format!("{}/{n}", sub[0])
            } else {
                n.to_string()
            }
        };
        self.check_shape(owner, &what("kernel"), &w[0], &[input_features, g])?;
        self.check_shape(owner, &what("recurrent_kernel"), &w[1], &[units, g])?;
        let kernel = Array2::from_shape_vec((input_features, g), w[0].values.clone())
            .map_err(|e| self.weight_error(owner, format!("kernel: {e}")))?;
        let recurrent_kernel = Array2::from_shape_vec((units, g), w[1].values.clone())
            .map_err(|e| self.weight_error(owner, format!("recurrent_kernel: {e}")))?;
        let bias = if use_bias {
            self.check_shape(owner, &what("bias"), &w[2], &[g])?;
            Some(Array1::from(w[2].values.clone()))
        } else {
            None
        };
        Ok(RecurrentCell {
            kind,
            units,
            activation,
            recurrent_activation,
            kernel,
            recurrent_kernel,
            bias,
            go_backwards,
        })
    }

    fn recurrent(&mut self, cfg: &LayerConfig) -> Result<LayerKind> {
        self.require_rank(cfg, 2, "(timesteps, features)")?;
        let (timesteps, features) = (self.shape[0], self.shape[1]);
        let return_sequences = cfg.bool_or("return_sequences", false)?;
        let zero_masked = cfg.bool_or("zero_output_for_mask", false)?;
        let forward = self.cell(cfg, cfg, &["cell"], features)?;
        self.finish_recurrent(
            forward,
            None,
            MergeMode::Concat,
            return_sequences,
            zero_masked,
            timesteps,
            features,
        )
    }

    fn bidirectional(&mut self, cfg: &LayerConfig) -> Result<LayerKind> {
        self.require_rank(cfg, 2, "(timesteps, features)")?;
        let (timesteps, features) = (self.shape[0], self.shape[1]);
        let merge_mode = match cfg.get("merge_mode") {
            None => {
                return Err(cfg.unsupported(
                    "merge_mode",
                    &Value::Null,
                    "merge_mode None returns two outputs; use concat, sum, ave or mul",
                ))
            }
            Some(Value::String(s)) => match s.as_str() {
                "concat" => MergeMode::Concat,
                "sum" => MergeMode::Sum,
                "ave" => MergeMode::Average,
                "mul" => MergeMode::Multiply,
                _ => {
                    return Err(cfg.unsupported(
                        "merge_mode",
                        &Value::from(s.as_str()),
                        "concat, sum, ave or mul",
                    ))
                }
            },
            Some(v) => return Err(cfg.unsupported("merge_mode", v, "concat, sum, ave or mul")),
        };
        let layer_entry = cfg
            .get("layer")
            .ok_or_else(|| cfg.error("layer", "missing"))?;
        let fwd_cfg = LayerConfig::new(cfg.path, layer_entry)?;
        let forward = self.cell(cfg, &fwd_cfg, &["forward_layer", "cell"], features)?;
        let backward = match cfg.get("backward_layer") {
            Some(entry) => {
                let bwd_cfg = LayerConfig::new(cfg.path, entry)?;
                self.cell(cfg, &bwd_cfg, &["backward_layer", "cell"], features)?
            }
            // Without an explicit backward layer Keras clones the forward one, reversed.
            None => {
                let mut b = self.cell(cfg, &fwd_cfg, &["backward_layer", "cell"], features)?;
                b.go_backwards = !forward.go_backwards;
                b
            }
        };
        if forward.units != backward.units && merge_mode != MergeMode::Concat {
            return Err(cfg.error("backward_layer", "units differ between directions"));
        }
        if forward.units != backward.units {
            return Err(cfg.error(
                "backward_layer",
                "directions with different units are not supported",
            ));
        }
        let return_sequences = fwd_cfg.bool_or("return_sequences", false)?;
        // Bidirectional forces zero_output_for_mask = return_sequences on both directions.
        self.finish_recurrent(
            forward,
            Some(backward),
            merge_mode,
            return_sequences,
            return_sequences,
            timesteps,
            features,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_recurrent(
        &mut self,
        forward: RecurrentCell,
        backward: Option<RecurrentCell>,
        merge_mode: MergeMode,
        return_sequences: bool,
        zero_masked_outputs: bool,
        timesteps: usize,
        input_features: usize,
    ) -> Result<LayerKind> {
        let r = Recurrent {
            forward,
            backward,
            merge_mode,
            return_sequences,
            timesteps,
            input_features,
            masked: self.mask_alive,
            zero_masked_outputs,
        };
        self.shape = if return_sequences {
            vec![timesteps, r.output_features()]
        } else {
            vec![r.output_features()]
        };
        // The mask follows the sequence: it survives return_sequences and ends otherwise.
        self.mask_alive = self.mask_alive && return_sequences;
        Ok(LayerKind::Recurrent(Box::new(r)))
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
