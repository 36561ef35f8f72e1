//! Merge layers (Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate, Dot), Keras 3
//! arithmetic operator nodes, and the shape layers (ZeroPadding, Cropping, UpSampling, Permute,
//! RepeatVector).

use serde_json::Value;

use crate::error::Result;
use crate::graph::*;
use crate::keras::build::Builder;
use crate::keras::fields::{as_usize, LayerConfig};

/// The layer classes `merge_layer` builds (they take a list of inputs).
pub(crate) fn is_merge_layer(class: &str) -> bool {
    matches!(
        class,
        "Add" | "Subtract" | "Multiply" | "Average" | "Maximum" | "Minimum" | "Concatenate" | "Dot"
    )
}

/// An axis as Keras gives it for a tensor of `rank` axes with the batch (negative counts from
/// the end), as an item axis (0-based, without the batch). The batch axis is an error.
fn item_axis(cfg: &LayerConfig, field: &str, axis: i64, rank: usize) -> Result<usize> {
    let full = if axis < 0 { axis + rank as i64 } else { axis };
    if full <= 0 || full >= rank as i64 {
        return Err(cfg.error(
            field,
            format!(
                "axis {axis} is {} for inputs of rank {rank} (with the batch)",
                if full == 0 {
                    "the batch axis"
                } else {
                    "out of range"
                }
            ),
        ));
    }
    Ok(full as usize - 1)
}

fn int_list(v: &Value) -> Option<Vec<i64>> {
    match v {
        Value::Array(items) => items.iter().map(Value::as_i64).collect(),
        other => other.as_i64().map(|n| vec![n]),
    }
}

impl Builder<'_> {
    /// A merge layer on its list of inputs, with Keras's mask rule.
    pub(crate) fn merge_layer(
        &mut self,
        cfg: &LayerConfig,
        inputs: &[ValueId],
        explicit_mask: Option<ValueId>,
    ) -> Result<Vec<ValueId>> {
        if explicit_mask.is_some() {
            return Err(cfg.error(
                "mask",
                "an explicit mask argument to a merge layer is not supported",
            ));
        }
        if inputs.is_empty()
            || (inputs.len() < 2 && matches!(cfg.class.as_str(), "Subtract" | "Dot"))
        {
            return Err(cfg.error(
                "inbound_nodes",
                format!(
                    "a {} layer needs a list of two inputs, got {}",
                    cfg.class,
                    inputs.len()
                ),
            ));
        }
        let masks: Vec<Option<ValueId>> =
            inputs.iter().map(|v| self.masks.get(v).copied()).collect();
        let any_mask = masks.iter().any(Option::is_some);
        let mut node_mask = None;
        let op = match cfg.class.as_str() {
            "Concatenate" => {
                let rank = self.info(inputs[0]).shape.len() + 1;
                let axis = cfg.get("axis").and_then(Value::as_i64).unwrap_or(-1);
                Op::Concat {
                    axis: item_axis(cfg, "axis", axis, rank)?,
                }
            }
            "Dot" => Op::Dot(self.dot(cfg, inputs)?),
            class => {
                let (op, average) = match class {
                    "Add" => (BinaryOp::Add, false),
                    "Subtract" => (BinaryOp::Subtract, false),
                    "Multiply" => (BinaryOp::Multiply, false),
                    "Average" => (BinaryOp::Add, true),
                    "Maximum" => (BinaryOp::Maximum, false),
                    "Minimum" => (BinaryOp::Minimum, false),
                    other => {
                        return Err(
                            cfg.error("class_name", format!("'{other}' is not a merge layer"))
                        )
                    }
                };
                if class == "Subtract" && inputs.len() != 2 {
                    return Err(cfg.error(
                        "inbound_nodes",
                        format!("Subtract takes exactly two inputs, got {}", inputs.len()),
                    ));
                }
                let masked = any_mask && matches!(class, "Multiply" | "Maximum" | "Minimum");
                if masked {
                    // Keras substitutes masked steps of these before merging (1 for Multiply,
                    // the running result for Maximum/Minimum), then zeroes Multiply's masked
                    // steps. wgnn implements the case of one step mask on every input.
                    if !masks.iter().all(Option::is_some) {
                        return Err(cfg.error(
                            "mask",
                            format!("{class} of masked and unmasked inputs is not supported (Keras substitutes masked steps)"),
                        ));
                    }
                    let m = self.same_mask(cfg, &masks)?;
                    let shape = self.info(inputs[0]).shape.clone();
                    let fits = shape.len() == 2
                        && inputs.iter().all(|&v| self.info(v).shape == shape)
                        && self.info(m).shape == shape[..1];
                    if !fits || (inputs.len() == 1 && class == "Multiply") {
                        return Err(cfg.error(
                            "mask",
                            format!("{class} on masked inputs is supported for two or more (steps, features) inputs of one shape"),
                        ));
                    }
                    node_mask = Some(m);
                }
                if inputs.len() == 1 {
                    // Keras merges one input into itself (Average divides by 1).
                    Op::Identity
                } else {
                    Op::Merge(Merge {
                        op,
                        average,
                        masked,
                    })
                }
            }
        };
        // Keras's output mask: Dot has none; the elementwise merges OR the masks when every input
        // has one (else none); Concatenate ORs them over the last axis after concatenating.
        let out_mask = match &op {
            Op::Dot(_) => None,
            _ if !any_mask => None,
            Op::Merge(_) | Op::Identity => {
                if masks.iter().all(Option::is_some) {
                    Some(self.same_mask(cfg, &masks)?)
                } else {
                    None
                }
            }
            Op::Concat { axis } => {
                // Masks of (T) over (T, features) inputs: concatenating features keeps the step
                // mask; an unmasked input contributes all-true steps (which equals no mask).
                let last = self.info(inputs[0]).shape.len().saturating_sub(1);
                let step_masks = inputs.iter().zip(&masks).all(|(&v, m)| match m {
                    Some(m) => self.info(*m).shape.len() + 1 == self.info(v).shape.len(),
                    None => true,
                });
                if *axis != last || !step_masks {
                    return Err(cfg.error(
                        "axis",
                        "concatenating masked inputs along any axis but the last is not supported (the mask would change)",
                    ));
                }
                if masks.iter().all(Option::is_some) {
                    Some(self.same_mask(cfg, &masks)?)
                } else {
                    None
                }
            }
            _ => None,
        };
        let y = self.add1(cfg, op, inputs, node_mask)?;
        if let Some(m) = out_mask {
            self.masks.insert(y, m);
        }
        Ok(vec![y])
    }

    /// The one mask all inputs share; different masks (whose OR wgnn cannot represent) are an
    /// error.
    fn same_mask(&self, cfg: &LayerConfig, masks: &[Option<ValueId>]) -> Result<ValueId> {
        let first = self.canonical_mask(masks[0].expect("checked by the caller"));
        if masks
            .iter()
            .all(|m| m.map(|m| self.canonical_mask(m)) == Some(first))
        {
            Ok(first)
        } else {
            Err(cfg.error(
                "mask",
                "inputs carry different masks; merging them (Keras ORs the masks) is not supported",
            ))
        }
    }

    fn dot(&mut self, cfg: &LayerConfig, inputs: &[ValueId]) -> Result<Dot> {
        let [x, y] = inputs else {
            return Err(cfg.error(
                "inbound_nodes",
                format!("Dot takes exactly two inputs, got {}", inputs.len()),
            ));
        };
        let ranks = [self.info(*x).shape.len() + 1, self.info(*y).shape.len() + 1];
        let axes_value = cfg
            .get("axes")
            .ok_or_else(|| cfg.error("axes", "missing"))?;
        let axes = int_list(axes_value).ok_or_else(|| {
            cfg.unsupported("axes", axes_value, "an integer or a pair of integers")
        })?;
        let pair = match axes.as_slice() {
            [a] => [*a, *a],
            [a, b] => [*a, *b],
            _ => {
                return Err(cfg.unsupported("axes", axes_value, "an integer or a pair of integers"))
            }
        };
        Ok(Dot {
            axes: [
                item_axis(cfg, "axes", pair[0], ranks[0])?,
                item_axis(cfg, "axes", pair[1], ranks[1])?,
            ],
            normalize: cfg.bool_or("normalize", false)?,
        })
    }

    /// Keras 3 arithmetic operator nodes (`a + b`, `keras.ops.multiply(x, 2.0)`,
    /// `keras.ops.concatenate([...], axis)`): `args` as the config records them.
    pub(crate) fn arithmetic_operator(
        &mut self,
        cfg: &LayerConfig,
        inputs: &[ValueId],
        args: &Value,
    ) -> Result<Option<Vec<ValueId>>> {
        if let Some(outs) = self.mask_operator(cfg, inputs)? {
            return Ok(Some(outs));
        }
        let op = match cfg.class.as_str() {
            "Add" => BinaryOp::Add,
            "Subtract" => BinaryOp::Subtract,
            "Multiply" => BinaryOp::Multiply,
            "Divide" | "TrueDivide" => BinaryOp::Divide,
            "Maximum" => BinaryOp::Maximum,
            "Minimum" => BinaryOp::Minimum,
            "Concatenate" => {
                let Some(first) = inputs.first() else {
                    return Err(cfg.error("args", "concatenate of no tensors"));
                };
                let rank = self.info(*first).shape.len() + 1;
                // keras.ops.concatenate's default axis is 0, the batch axis.
                let axis = cfg.get("axis").and_then(Value::as_i64).unwrap_or(0);
                let axis = item_axis(cfg, "axis", axis, rank)?;
                let y = self.add1(cfg, Op::Concat { axis }, inputs, None)?;
                return Ok(Some(vec![y]));
            }
            _ => return Ok(None),
        };
        let items = args.as_array().map(Vec::as_slice).unwrap_or(&[]);
        if items.len() != 2 {
            return Err(cfg.error(
                "args",
                format!("expects two arguments, got {}", items.len()),
            ));
        }
        let is_tensor = |v: &Value| v.is_object() || v.is_array();
        let y = match (&items[0], &items[1], inputs) {
            (a, b, [x0, x1]) if is_tensor(a) && is_tensor(b) => {
                let (r0, r1) = (self.info(*x0).shape.len(), self.info(*x1).shape.len());
                if r0 != r1 {
                    return Err(cfg.error(
                        "args",
                        format!("operands of rank {} and {} (with the batch): broadcasting across the batch axis is not supported", r0 + 1, r1 + 1),
                    ));
                }
                self.add1(
                    cfg,
                    Op::Merge(Merge {
                        op,
                        average: false,
                        masked: false,
                    }),
                    inputs,
                    None,
                )?
            }
            (a, Value::Number(c), [x]) if is_tensor(a) => {
                let value = c.as_f64().unwrap_or(f64::NAN) as f32;
                let s = ScalarOp {
                    op,
                    value,
                    scalar_first: false,
                };
                self.add1(cfg, Op::Scalar(s), &[*x], None)?
            }
            (Value::Number(c), b, [x]) if is_tensor(b) => {
                let value = c.as_f64().unwrap_or(f64::NAN) as f32;
                let s = ScalarOp {
                    op,
                    value,
                    scalar_first: true,
                };
                self.add1(cfg, Op::Scalar(s), &[*x], None)?
            }
            _ => {
                return Err(cfg.error(
                    "args",
                    "unsupported operands (wgnn takes two tensors, or one tensor and a number)",
                ))
            }
        };
        Ok(Some(vec![y]))
    }

    /// `[before, after]` pairs for `n` spatial axes from a padding/cropping field: an int (all
    /// sides), `n` ints (symmetric per axis; for n = 1 the pair is before/after), or `n` pairs.
    fn spatial_pairs(
        &self,
        cfg: &LayerConfig,
        field: &str,
        n: usize,
        default: usize,
    ) -> Result<Vec<[usize; 2]>> {
        let Some(v) = cfg.get(field) else {
            return Ok(vec![[default, default]; n]);
        };
        let bad = || {
            cfg.unsupported(
                field,
                v,
                "an integer, a tuple of integers, or a tuple of (before, after) pairs",
            )
        };
        let pair_of = |p: &Value| -> Option<[usize; 2]> {
            match p {
                Value::Array(ab) if ab.len() == 2 => Some([as_usize(&ab[0])?, as_usize(&ab[1])?]),
                other => as_usize(other).map(|k| [k, k]),
            }
        };
        match v {
            Value::Array(items)
                if n == 1 && items.len() == 2 && items.iter().all(|i| !i.is_array()) =>
            {
                Ok(vec![pair_of(v).ok_or_else(bad)?])
            }
            Value::Array(items) if items.len() == n => {
                items.iter().map(|p| pair_of(p).ok_or_else(bad)).collect()
            }
            Value::Array(_) => Err(bad()),
            other => {
                let k = as_usize(other).ok_or_else(bad)?;
                Ok(vec![[k, k]; n])
            }
        }
    }

    /// `n` positive factors from an int or a list (UpSampling sizes).
    fn factors(&self, cfg: &LayerConfig, field: &str, n: usize) -> Result<Vec<usize>> {
        let v = cfg.get(field).cloned().unwrap_or(Value::from(2));
        let bad = || cfg.unsupported(field, &v, "positive integers");
        let list: Vec<usize> = match &v {
            Value::Array(items) if items.len() == n => items
                .iter()
                .map(|i| as_usize(i).filter(|&k| k > 0).ok_or_else(bad))
                .collect::<Result<_>>()?,
            other => vec![as_usize(other).filter(|&k| k > 0).ok_or_else(bad)?; n],
        };
        Ok(list)
    }

    /// Checks that the input has `spatial` axes plus channels.
    fn spatial_input(&self, cfg: &LayerConfig, x: &ValueInfo, spatial: usize) -> Result<()> {
        if x.shape.len() != spatial + 1 {
            return Err(cfg.error(
                "input_shape",
                format!(
                    "expects {spatial} spatial axes and channels, got shape {:?} (without the batch axis)",
                    x.shape
                ),
            ));
        }
        Ok(())
    }

    /// ZeroPadding1D/2D/3D, Cropping1D/2D/3D, UpSampling1D/2D/3D, Permute and RepeatVector.
    pub(crate) fn shape_layer(&mut self, cfg: &LayerConfig, x: &ValueInfo) -> Result<Op> {
        let spatial = |class: &str| -> usize {
            match class.chars().rev().nth(1) {
                Some('1') => 1,
                Some('2') => 2,
                _ => 3,
            }
        };
        let class = cfg.class.as_str();
        let op = match class {
            "ZeroPadding1D" | "ZeroPadding2D" | "ZeroPadding3D" => {
                let n = spatial(class);
                cfg.require_channels_last()?;
                self.spatial_input(cfg, x, n)?;
                let mut pads = self.spatial_pairs(cfg, "padding", n, 1)?;
                pads.push([0, 0]);
                Op::Pad { pads }
            }
            "Cropping1D" | "Cropping2D" | "Cropping3D" => {
                let n = spatial(class);
                cfg.require_channels_last()?;
                self.spatial_input(cfg, x, n)?;
                let mut crops = self.spatial_pairs(cfg, "cropping", n, 0)?;
                crops.push([0, 0]);
                Op::Crop { crops }
            }
            "UpSampling1D" | "UpSampling2D" | "UpSampling3D" => {
                let n = spatial(class);
                cfg.require_channels_last()?;
                self.spatial_input(cfg, x, n)?;
                let mut factors = self.factors(cfg, "size", n)?;
                factors.push(1);
                let interpolation = match (class, cfg.str_or("interpolation", "nearest")?) {
                    (_, "nearest") => Interpolation::Nearest,
                    ("UpSampling2D", "bilinear") => Interpolation::Bilinear,
                    (_, other) => {
                        return Err(cfg.unsupported(
                            "interpolation",
                            &Value::from(other),
                            "only 'nearest' and (UpSampling2D) 'bilinear' are supported",
                        ))
                    }
                };
                Op::Upsample {
                    factors,
                    interpolation,
                }
            }
            "Permute" => {
                let v = cfg
                    .get("dims")
                    .ok_or_else(|| cfg.error("dims", "missing"))?;
                let dims = int_list(v)
                    .filter(|d| d.iter().all(|&a| a >= 1))
                    .ok_or_else(|| cfg.unsupported("dims", v, "a permutation of 1..rank"))?;
                let perm: Vec<usize> = dims.iter().map(|&a| a as usize - 1).collect();
                Op::Permute { perm }
            }
            "RepeatVector" => Op::RepeatVector { n: cfg.usize("n")? },
            other => return Err(cfg.error("class_name", format!("'{other}' is not a shape layer"))),
        };
        Ok(op)
    }
}

/// A mask tensor of Keras 3's mask arithmetic (what `compute_mask` of merges records as operator
/// nodes) that wgnn keeps symbolic: only forms that reduce to an existing padding mask (or to no
/// mask) are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MaskExpr {
    /// Step mask `m` (T) broadcast over trailing feature axes.
    Steps(ValueId),
    /// Every element true (or false).
    Const(bool),
    /// Every row of the last axis holds a true (Any over it is all true).
    RowsWithTrue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MaskTerm {
    Real(ValueId),
    Expr(MaskExpr),
}

impl Builder<'_> {
    fn mask_term(&self, v: ValueId) -> Option<MaskTerm> {
        if let Some(e) = self.mask_exprs.get(&v) {
            return Some(MaskTerm::Expr(*e));
        }
        (self.info(v).dtype == DType::Mask).then(|| MaskTerm::Real(self.canonical_mask(v)))
    }

    /// The first padding mask computed from the same token ids as mask `m` (two
    /// `Embedding(mask_zero=True)` on one input give equal masks), else `m`.
    pub(crate) fn canonical_mask(&self, m: ValueId) -> ValueId {
        let nodes = &self.graph.nodes;
        let Some(ids) = nodes
            .iter()
            .find(|n| n.outputs.contains(&m) && matches!(n.op, Op::PaddingMask))
            .map(|n| n.inputs[0])
        else {
            return m;
        };
        nodes
            .iter()
            .find(|n| matches!(n.op, Op::PaddingMask) && n.inputs[0] == ids)
            .map_or(m, |n| n.outputs[0])
    }

    fn new_mask_expr(&mut self, shape: Shape, expr: MaskExpr) -> ValueId {
        self.graph.values.push(ValueInfo::new(shape, DType::Mask));
        let v = self.graph.values.len() - 1;
        self.mask_exprs.insert(v, expr);
        v
    }

    fn term_value(&mut self, term: MaskTerm, shape: Shape) -> ValueId {
        match term {
            MaskTerm::Real(m) if self.info(m).shape == shape => m,
            MaskTerm::Real(m) => self.new_mask_expr(shape, MaskExpr::Steps(m)),
            MaskTerm::Expr(e) => self.new_mask_expr(shape, e),
        }
    }

    /// A mask argument as a node can read it: a padding mask, or None for an all-true mask.
    pub(crate) fn resolve_mask(
        &self,
        cfg: &LayerConfig,
        mask: Option<ValueId>,
    ) -> Result<Option<ValueId>> {
        match mask.map(|m| (m, self.mask_exprs.get(&m))) {
            None => Ok(None),
            Some((m, None)) => Ok(Some(m)),
            Some((_, Some(MaskExpr::Const(true) | MaskExpr::RowsWithTrue))) => Ok(None),
            Some((_, Some(_))) => Err(cfg.error(
                "mask",
                "this mask (computed by Keras operator nodes) is not a padding mask wgnn can apply",
            )),
        }
    }

    /// Keras 3's mask-arithmetic operator nodes; None for other operators.
    fn mask_operator(
        &mut self,
        cfg: &LayerConfig,
        inputs: &[ValueId],
    ) -> Result<Option<Vec<ValueId>>> {
        let unsupported = |what: &str| {
            cfg.error(
                "args",
                format!("{what}: wgnn accepts mask arithmetic only where it keeps a padding mask"),
            )
        };
        let out = match (cfg.class.as_str(), inputs) {
            ("ExpandDims", [x]) => {
                let shape = self.info(*x).shape.clone();
                let rank = shape.len() + 1;
                let axis = cfg.get("axis").and_then(Value::as_i64).unwrap_or(0);
                // The new axis counts in the output's rank.
                let at = item_axis(cfg, "axis", axis, rank + 1)?;
                let mut new_shape = shape.clone();
                new_shape.insert(at, 1);
                match self.mask_term(*x) {
                    Some(MaskTerm::Real(m)) if at == shape.len() => {
                        self.new_mask_expr(new_shape, MaskExpr::Steps(m))
                    }
                    Some(_) => return Err(unsupported("ExpandDims of a mask")),
                    None if self.info(*x).dtype == DType::F32 => {
                        self.add1(cfg, Op::Reshape { shape: new_shape }, &[*x], None)?
                    }
                    None => return Err(unsupported("ExpandDims of token ids")),
                }
            }
            ("ZerosLike" | "OnesLike", [x]) => {
                if cfg.str_or("dtype", "")? != "bool" {
                    return Err(cfg.error(
                        "dtype",
                        format!("{} is supported only as a boolean mask", cfg.class),
                    ));
                }
                let shape = self.info(*x).shape.clone();
                self.new_mask_expr(shape, MaskExpr::Const(cfg.class == "OnesLike"))
            }
            ("LogicalOr", [a, b]) => {
                let (Some(ta), Some(tb)) = (self.mask_term(*a), self.mask_term(*b)) else {
                    return Err(unsupported("LogicalOr of non-mask tensors"));
                };
                let shape = broadcast_shapes(&self.info(*a).shape, &self.info(*b).shape)
                    .map_err(|m| cfg.error("args", m))?;
                use MaskExpr::*;
                use MaskTerm::*;
                let term = match (ta, tb) {
                    (x, y) if x == y => x,
                    (Expr(Const(false)), x) | (x, Expr(Const(false))) => x,
                    (Expr(Const(true)), _) | (_, Expr(Const(true))) => Expr(Const(true)),
                    (Real(m), Expr(Steps(n))) | (Expr(Steps(n)), Real(m)) if m == n => {
                        Expr(Steps(m))
                    }
                    _ => {
                        return Err(cfg.error(
                            "args",
                            "OR of two different masks is not supported (wgnn applies one padding mask)",
                        ))
                    }
                };
                self.term_value(term, shape)
            }
            ("Concatenate", _) if inputs.iter().any(|&v| self.mask_term(v).is_some()) => {
                let terms: Option<Vec<MaskTerm>> =
                    inputs.iter().map(|&v| self.mask_term(v)).collect();
                let terms = terms.ok_or_else(|| unsupported("Concatenate of masks and values"))?;
                let shapes: Vec<&[usize]> = inputs
                    .iter()
                    .map(|&v| self.info(v).shape.as_slice())
                    .collect();
                let rank = shapes[0].len() + 1;
                let axis = cfg.get("axis").and_then(Value::as_i64).unwrap_or(0);
                let axis = item_axis(cfg, "axis", axis, rank)?;
                let shape = concat_shape_of(&shapes, axis).map_err(|m| cfg.error("args", m))?;
                if axis + 1 != shape.len() {
                    return Err(unsupported("Concatenate of masks along the steps"));
                }
                let allowed = terms.iter().all(|t| {
                    matches!(
                        t,
                        MaskTerm::Expr(
                            MaskExpr::Steps(_) | MaskExpr::Const(true) | MaskExpr::RowsWithTrue
                        )
                    )
                });
                if !allowed {
                    return Err(unsupported("Concatenate of masks"));
                }
                let steps: Vec<ValueId> = terms
                    .iter()
                    .filter_map(|t| match t {
                        MaskTerm::Expr(MaskExpr::Steps(m)) => Some(*m),
                        _ => None,
                    })
                    .collect();
                let expr = if steps.len() < terms.len() {
                    // A true part in every row: Any over the last axis is all true.
                    MaskExpr::RowsWithTrue
                } else if steps.iter().all(|&m| m == steps[0]) {
                    MaskExpr::Steps(steps[0])
                } else {
                    return Err(unsupported("Concatenate of different masks"));
                };
                self.new_mask_expr(shape, expr)
            }
            ("Any", [x]) => {
                let axis = cfg.get("axis").cloned().unwrap_or(Value::Null);
                let last = matches!(int_list(&axis).as_deref(), Some([-1]))
                    || int_list(&axis).as_deref() == Some(&[self.info(*x).shape.len() as i64]);
                if !last || cfg.bool_or("keepdims", false)? {
                    return Err(unsupported("Any of a mask over an axis but the last"));
                }
                let mut shape = self.info(*x).shape.clone();
                shape.pop();
                match self.mask_term(*x) {
                    Some(MaskTerm::Expr(MaskExpr::Steps(m))) if self.info(m).shape == shape => m,
                    Some(MaskTerm::Expr(MaskExpr::Const(true) | MaskExpr::RowsWithTrue)) => {
                        self.new_mask_expr(shape, MaskExpr::Const(true))
                    }
                    _ => return Err(unsupported("Any of this mask")),
                }
            }
            ("ExpandDims" | "ZerosLike" | "OnesLike" | "LogicalOr" | "Any", _) => {
                return Err(cfg.error("args", format!("unexpected arguments for {}", cfg.class)))
            }
            _ => return Ok(None),
        };
        Ok(Some(vec![out]))
    }
}

fn concat_shape_of(shapes: &[&[usize]], axis: usize) -> std::result::Result<Shape, String> {
    crate::graph::merge::concat_shape(axis, shapes)
}

use crate::graph::merge::broadcast_shapes;
