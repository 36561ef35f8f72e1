//! BatchNormalization, LayerNormalization, RMSNormalization, Normalization, PReLU, the Softmax
//! layer over any axes, and Keras 3's activation operators (`keras.ops.gelu` ...).

use ndarray::{ArrayD, IxDyn};
use serde_json::Value;

use crate::error::Result;
use crate::graph::*;
use crate::keras::build::Builder;
use crate::keras::fields::LayerConfig;

/// Keras axes (counting the batch axis, negative from the end) as sorted axes of the value's
/// shape without the batch axis. `rank` is the value's rank without the batch axis.
fn item_axes(cfg: &LayerConfig, field: &str, v: &Value, rank: usize) -> Result<Vec<usize>> {
    let items: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    let full = rank as i64 + 1;
    let mut axes = Vec::with_capacity(items.len());
    for item in items {
        let a = item
            .as_i64()
            .ok_or_else(|| cfg.unsupported(field, v, "axes must be integers"))?;
        let a = if a < 0 { a + full } else { a };
        if a < 0 || a >= full {
            return Err(cfg.error(
                field,
                format!(
                    "axis {item} is out of range for a rank-{full} input (batch axis included)"
                ),
            ));
        }
        if a == 0 {
            return Err(cfg.unsupported(field, v, "the batch axis (0) cannot be an axis here"));
        }
        axes.push(a as usize - 1);
    }
    axes.sort_unstable();
    if axes.windows(2).any(|w| w[0] == w[1]) {
        return Err(cfg.unsupported(field, v, "an axis is repeated"));
    }
    Ok(axes)
}

fn contains_negative(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.iter().any(contains_negative),
        other => other.as_i64().is_some_and(|a| a < 0),
    }
}

/// Checks that `axes` are contiguous (what the kernels support), naming the field.
fn contiguous(cfg: &LayerConfig, field: &str, shape: &[usize], axes: &[usize]) -> Result<()> {
    axis_layout(shape, axes)
        .map(|_| ())
        .map_err(|m| cfg.error(field, m))
}

/// A JSON number or nested list of numbers as an array of its shape.
fn json_array(cfg: &LayerConfig, field: &str, v: &Value) -> Result<ArrayD<f32>> {
    fn walk(v: &Value, depth: usize, shape: &mut Vec<usize>, out: &mut Vec<f32>) -> bool {
        match v {
            Value::Number(n) => {
                if depth != shape.len() {
                    return false;
                }
                out.push(n.as_f64().unwrap_or(f64::NAN) as f32);
                true
            }
            Value::Array(items) => {
                if depth == shape.len() {
                    if !out.is_empty() {
                        return false;
                    }
                    shape.push(items.len());
                } else if shape.get(depth) != Some(&items.len()) {
                    return false;
                }
                items.iter().all(|i| walk(i, depth + 1, shape, out))
            }
            _ => false,
        }
    }
    let mut shape = Vec::new();
    let mut values = Vec::new();
    if !walk(v, 0, &mut shape, &mut values) || values.len() != shape.iter().product::<usize>() {
        return Err(cfg.unsupported(field, v, "expected a number or a rectangular list"));
    }
    ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| cfg.error(field, e.to_string()))
}

impl Builder<'_> {
    /// Stores `value` as a non-trainable parameter of `cfg`'s layer.
    fn constant_param(&mut self, cfg: &LayerConfig, what: &str, value: ArrayD<f32>) -> ParamId {
        self.graph
            .params
            .add(format!("{}/{what}", cfg.name), value, false)
    }

    /// Gives parameter `id` a new shape with the same values in the same order.
    fn reshape_param(&mut self, cfg: &LayerConfig, id: ParamId, shape: &[usize]) -> Result<()> {
        let current = self.graph.params.get(id);
        if current.shape() == shape {
            return Ok(());
        }
        let values: Vec<f32> = current.iter().copied().collect();
        let reshaped = ArrayD::from_shape_vec(IxDyn(shape), values)
            .map_err(|e| self.weight_error(cfg, e.to_string()))?;
        *self.graph.params.get_mut(id) = reshaped;
        Ok(())
    }

    pub(super) fn batch_normalization(&mut self, cfg: &LayerConfig, x: &ValueInfo) -> Result<Op> {
        let axis = cfg.get("axis").cloned().unwrap_or(Value::from(-1));
        let axes = item_axes(cfg, "axis", &axis, x.shape.len())?;
        contiguous(cfg, "axis", &x.shape, &axes)?;
        // Only training reads these (batch statistics, their synchronization across replicas,
        // batch renormalization's corrections); inference uses the moving statistics alone.
        for field in ["virtual_batch_size", "adjustment"] {
            cfg.require_absent_or(field, &[], "changes the statistics at inference")?;
        }
        let center = cfg.bool_or("center", true)?;
        let scale = cfg.bool_or("scale", true)?;
        let renorm = cfg.bool_or("renorm", false)?;
        let epsilon = cfg.f32_or("epsilon", 1e-3)?;
        // Kept in f64: Keras multiplies by the Python float, so 1 - momentum is rounded once.
        let momentum = match cfg.get("momentum") {
            None => 0.99,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| cfg.error("momentum", format!("expected a number, found {v}")))?,
        };
        let channels: Vec<usize> = axes.iter().map(|&a| x.shape[a]).collect();
        // Keras 2 stored the weights of a multi-axis layer in broadcast form over the whole
        // input, batch axis included; Keras 3 has one axis and (C,) weights.
        let stored = if axes.len() == 1 {
            channels.clone()
        } else {
            let mut s = vec![1];
            s.extend(keep_axes(&x.shape, &axes));
            s
        };
        let mut names = Vec::new();
        if scale {
            names.push("gamma");
        }
        if center {
            names.push("beta");
        }
        names.extend(["moving_mean", "moving_variance"]);
        if renorm {
            names.extend(["moving_stddev", "renorm_mean", "renorm_stddev"]);
        }
        let specs: Vec<(&str, Vec<usize>)> = names.iter().map(|&n| (n, stored.clone())).collect();
        let p = self.params(cfg, &[], &specs)?;
        for &id in &p {
            self.reshape_param(cfg, id, &channels)?;
        }
        let mut it = p.into_iter();
        let gamma = if scale { it.next() } else { None };
        let beta = if center { it.next() } else { None };
        let (Some(moving_mean), Some(moving_variance)) = (it.next(), it.next()) else {
            return Err(self.weight_error(cfg, "missing moving statistics".into()));
        };
        let unused: Vec<ParamId> = it.collect();
        for &id in [moving_mean, moving_variance].iter().chain(&unused) {
            self.graph.params.set_trainable(id, false);
        }
        Ok(Op::BatchNorm(BatchNorm {
            axes,
            gamma,
            beta,
            moving_mean,
            moving_variance,
            epsilon,
            momentum,
            // Frozen by its own flag or by a frozen container (a frozen model freezes its layers).
            trainable: !self.frozen && cfg.bool_or("trainable", true)?,
            unused,
        }))
    }

    /// LayerNormalization (`rms` false) and RMSNormalization (`rms` true).
    pub(super) fn layer_normalization(
        &mut self,
        cfg: &LayerConfig,
        x: &ValueInfo,
        rms: bool,
    ) -> Result<Op> {
        let axis = cfg.get("axis").cloned().unwrap_or(Value::from(-1));
        let axes = item_axes(cfg, "axis", &axis, x.shape.len())?;
        contiguous(cfg, "axis", &x.shape, &axes)?;
        let shape: Vec<usize> = axes.iter().map(|&a| x.shape[a]).collect();
        let (kind, gamma, beta, epsilon) = if rms {
            let p = self.params(cfg, &[], &[("scale", shape)])?;
            (
                LayerNormKind::Rms,
                Some(p[0]),
                None,
                cfg.f32_or("epsilon", 1e-6)?,
            )
        } else {
            let center = cfg.bool_or("center", true)?;
            let scale = cfg.bool_or("scale", true)?;
            let rms_scaling = cfg.bool_or("rms_scaling", false)?;
            let has_gamma = scale || rms_scaling;
            let has_beta = center && !rms_scaling;
            let mut specs = Vec::new();
            if has_gamma {
                specs.push(("gamma", shape.clone()));
            }
            if has_beta {
                specs.push(("beta", shape.clone()));
            }
            let p = self.params(cfg, &[], &specs)?;
            let kind = if rms_scaling {
                LayerNormKind::RmsScaling
            } else {
                LayerNormKind::Standard
            };
            let gamma = has_gamma.then(|| p[0]);
            let beta = has_beta.then(|| p[usize::from(has_gamma)]);
            (kind, gamma, beta, cfg.f32_or("epsilon", 1e-3)?)
        };
        Ok(Op::LayerNorm(LayerNorm {
            axes,
            gamma,
            beta,
            epsilon,
            kind,
        }))
    }

    /// UnitNormalization: L2 normalization over `axis`, no weights.
    pub(super) fn unit_normalization(&mut self, cfg: &LayerConfig, x: &ValueInfo) -> Result<Op> {
        let axis = cfg.get("axis").cloned().unwrap_or(Value::from(-1));
        let axes = item_axes(cfg, "axis", &axis, x.shape.len())?;
        contiguous(cfg, "axis", &x.shape, &axes)?;
        Ok(Op::LayerNorm(LayerNorm {
            axes,
            gamma: None,
            beta: None,
            epsilon: 0.0,
            kind: LayerNormKind::Unit,
        }))
    }

    /// GroupNormalization over the last axis (`groups=-1`: one group per channel).
    pub(super) fn group_normalization(&mut self, cfg: &LayerConfig, x: &ValueInfo) -> Result<Op> {
        let axis = cfg.get("axis").cloned().unwrap_or(Value::from(-1));
        let axes = item_axes(cfg, "axis", &axis, x.shape.len())?;
        if axes != [x.shape.len() - 1] {
            return Err(cfg.unsupported("axis", &axis, "only the last (channel) axis"));
        }
        let channels = x.shape[x.shape.len() - 1];
        let groups = match cfg.get("groups").and_then(Value::as_i64) {
            None => 32,
            Some(-1) => channels as i64,
            Some(g) => g,
        };
        if groups <= 0 || !channels.is_multiple_of(groups as usize) {
            return Err(cfg.error(
                "groups",
                format!("{channels} channels do not split into {groups} groups"),
            ));
        }
        let center = cfg.bool_or("center", true)?;
        let scale = cfg.bool_or("scale", true)?;
        let mut specs = Vec::new();
        if scale {
            specs.push(("gamma", vec![channels]));
        }
        if center {
            specs.push(("beta", vec![channels]));
        }
        let p = self.params(cfg, &[], &specs)?;
        Ok(Op::GroupNorm(GroupNorm {
            groups: groups as usize,
            gamma: scale.then(|| p[0]),
            beta: center.then(|| p[usize::from(scale)]),
            epsilon: cfg.f32_or("epsilon", 1e-3)?,
        }))
    }

    /// Normalization with its mean and variance from the config or from its (adapted) weights.
    pub(super) fn normalization(&mut self, cfg: &LayerConfig, x: &ValueInfo) -> Result<Op> {
        let kept = match cfg.get("axis") {
            None => Vec::new(),
            Some(v) => item_axes(cfg, "axis", v, x.shape.len())?,
        };
        let invert = cfg.bool_or("invert", false)?;
        let broadcast = keep_axes(&x.shape, &kept);
        let (mean, variance, count) = match (cfg.get("mean"), cfg.get("variance")) {
            (Some(m), Some(v)) => {
                let mut pair = Vec::new();
                for (field, value) in [("mean", m), ("variance", v)] {
                    let a = json_array(cfg, field, value)?;
                    if a.ndim() > kept.len() {
                        return Err(cfg.error(
                            field,
                            format!("has rank {}, above the {} kept axes", a.ndim(), kept.len()),
                        ));
                    }
                    // Keras aligns its dimensions with the kept axes from the right.
                    let mut expanded = vec![1; x.shape.len()];
                    for (i, &d) in a.shape().iter().rev().enumerate() {
                        expanded[kept[kept.len() - 1 - i]] = d;
                    }
                    let a = a
                        .into_shape_with_order(IxDyn(&expanded))
                        .map_err(|e| cfg.error(field, e.to_string()))?;
                    let full = a.broadcast(IxDyn(&broadcast)).ok_or_else(|| {
                        cfg.error(
                            field,
                            format!("shape {expanded:?} does not broadcast to {broadcast:?}"),
                        )
                    })?;
                    pair.push(self.constant_param(cfg, field, full.to_owned()));
                }
                (pair[0], pair[1], None)
            }
            (None, None) => {
                let shape: Vec<usize> = kept.iter().map(|&a| x.shape[a]).collect();
                let specs = [
                    ("mean", shape.clone()),
                    ("variance", shape),
                    ("count", Vec::new()),
                ];
                let p = self.params(cfg, &[], &specs)?;
                for &id in &p {
                    self.graph.params.set_trainable(id, false);
                }
                self.graph.params.set_keras_dtype(p[2], KerasDType::Int64);
                self.reshape_param(cfg, p[0], &broadcast)?;
                self.reshape_param(cfg, p[1], &broadcast)?;
                (p[0], p[1], Some(p[2]))
            }
            _ => return Err(cfg.error("mean", "mean and variance must be set together")),
        };
        Ok(Op::Normalization(Normalization {
            mean,
            variance,
            count,
            invert,
        }))
    }

    pub(super) fn prelu(&mut self, cfg: &LayerConfig, x: &ValueInfo) -> Result<Op> {
        let shared = match cfg.get("shared_axes") {
            None => Vec::new(),
            // Keras indexes the weight shape with `axis - 1`, so a negative axis would mean
            // something else there than elsewhere: only positive axes are accepted.
            Some(v) if contains_negative(v) => {
                return Err(cfg.unsupported("shared_axes", v, "negative axes are not supported"))
            }
            Some(v) => item_axes(cfg, "shared_axes", v, x.shape.len())?,
        };
        let alpha_shape: Vec<usize> = x
            .shape
            .iter()
            .enumerate()
            .map(|(k, &d)| if shared.contains(&k) { 1 } else { d })
            .collect();
        let p = self.params(cfg, &[], &[("alpha", alpha_shape)])?;
        Ok(Op::PRelu(PRelu { alpha: p[0] }))
    }

    /// The Softmax layer: over the last axis it is the softmax activation, over other axes (or
    /// several, jointly) its own op.
    pub(super) fn softmax_layer(
        &mut self,
        cfg: &LayerConfig,
        x: &ValueInfo,
        mask: Option<ValueId>,
    ) -> Result<Op> {
        if mask.is_some() {
            return Err(cfg.error(
                "mask",
                "a Softmax layer reached by a mask is not supported (Keras masks its inputs)",
            ));
        }
        let axis = cfg.get("axis").cloned().unwrap_or(Value::from(-1));
        let axes = item_axes(cfg, "axis", &axis, x.shape.len())?;
        contiguous(cfg, "axis", &x.shape, &axes)?;
        if axes == [x.shape.len() - 1] {
            return Ok(Op::Activation(Activation::Softmax));
        }
        Ok(Op::Softmax(Softmax { axes, log: false }))
    }

    /// Keras 3 activation operators in a Functional config (`keras.ops.gelu(x)` ...), or None
    /// when `class` is not one.
    pub(crate) fn activation_operator(
        &mut self,
        cfg: &LayerConfig,
        inputs: &[ValueId],
    ) -> Option<Result<Vec<ValueId>>> {
        let act = match cfg.class.as_str() {
            "Gelu" => match cfg.bool_or("approximate", true) {
                Ok(approximate) => Activation::Gelu { approximate },
                Err(e) => return Some(Err(e)),
            },
            "Relu" => Activation::RELU,
            "Relu6" => Activation::Relu {
                negative_slope: 0.0,
                max_value: Some(6.0),
                threshold: 0.0,
            },
            "Sigmoid" => Activation::Sigmoid,
            "Tanh" => Activation::Tanh,
            "Silu" => Activation::Silu,
            "Softplus" => Activation::Softplus,
            "Softsign" => Activation::Softsign,
            "HardSigmoid" => Activation::HardSigmoid,
            "HardSilu" => Activation::HardSilu,
            "HardTanh" => Activation::HardTanh,
            "TanhShrink" => Activation::TanhShrink,
            "SparsePlus" => Activation::SparsePlus,
            "SparseSigmoid" => Activation::SparseSigmoid,
            "LogSigmoid" => Activation::LogSigmoid,
            _ => return None,
        };
        Some(match inputs {
            [x] => self.add(cfg, Op::Activation(act), &[*x], None),
            _ => Err(cfg.error("args", "an activation operator takes one tensor")),
        })
    }
}
