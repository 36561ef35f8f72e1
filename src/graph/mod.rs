//! The graph IR both backends read: values with static shapes (no batch axis), nodes in
//! topological order with explicit inputs and outputs, and a parameter store. Each op's shape
//! rule runs when its node is added, so loaders and backends never compute shapes themselves.
//! A Sequential model is a chain of it; Keras masks are values that flow along the graph.

pub mod ops;
pub mod params;
pub mod source;

pub use ops::*;
pub use params::{KerasDType, KerasVar, Param, ParamId, ParamStore};
pub use source::{ConfigOrigin, SourceConfig};

use crate::error::{Error, Result};

/// A shape without the batch axis, e.g. `[32, 32, 3]` for a CIFAR image or `[60]` for token ids.
pub type Shape = Vec<usize>;

/// Index of a value in its graph.
pub type ValueId = usize;

/// What a value holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    /// Integer token ids (u32 in memory), checked against the vocabulary on input.
    Ids,
    /// Keras's boolean mask over timesteps (true = a real step).
    Mask,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::Ids => "token ids",
            DType::Mask => "mask",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    pub shape: Shape,
    pub dtype: DType,
}

impl ValueInfo {
    pub fn new(shape: Shape, dtype: DType) -> Self {
        ValueInfo { shape, dtype }
    }

    /// Elements per batch item.
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// One call of one layer (or one Keras operator): its op, the values it reads and writes.
#[derive(Debug, Clone)]
pub struct Node {
    /// The Keras layer name (shared layers repeat it, one node per call).
    pub name: String,
    /// The Keras class name, for messages and `info`.
    pub class: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    /// The padding mask that reaches this node, for ops that read one.
    pub mask: Option<ValueId>,
    pub outputs: Vec<ValueId>,
}

/// A named graph input or output.
#[derive(Debug, Clone)]
pub struct Port {
    pub name: String,
    pub value: ValueId,
}

/// Text preprocessing carried by the model itself (a leading `TextVectorization` layer):
/// raw strings in, token ids out.
#[derive(Debug, Clone)]
pub struct TextVectorizationSpec {
    pub name: String,
    /// Index = token id; `""` is 0 (padding) and `"[UNK]"` is 1, exactly as Keras saved it.
    pub vocabulary: Vec<String>,
    /// Pads or truncates (at the end) to this length; `None` pads to the longest text in the batch.
    pub output_sequence_length: Option<usize>,
    /// `lower_and_strip_punctuation`, `lower`, `strip_punctuation`, or none.
    pub standardize: Option<String>,
    /// `whitespace` or none.
    pub split: Option<String>,
}

/// What a Keras regularizer penalizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Penalized {
    /// A weight (`kernel_regularizer`, `bias_regularizer`, `recurrent_regularizer`, ...).
    Param(ParamId),
    /// A layer's output (`activity_regularizer`, ActivityRegularization).
    Activity(ValueId),
}

/// An L1/L2 penalty Keras adds to the loss: `l1 * sum|x| + l2 * sum x²` over a weight, or over
/// one output of one call of a layer (the whole batch). Keras 3 divides an activity penalty by
/// the batch size, the output's first axis (`Layer.__call__` in keras/src/layers/layer.py, so
/// that its weight against the loss does not change with the batch size); a weight penalty is
/// not divided. The loader records a weight's penalty once however often its layer is called,
/// and only while the weight is trainable (`Layer.losses` sums over `trainable_weights`); an
/// activity penalty once per call and per output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Regularizer {
    pub target: Penalized,
    pub l1: f32,
    pub l2: f32,
}

#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub name: String,
    pub values: Vec<ValueInfo>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    pub params: ParamStore,
    pub text_vectorization: Option<TextVectorizationSpec>,
    /// Per output: the Keras mask it carries (a masked sequence output), which weights its loss.
    pub output_masks: Vec<Option<ValueId>>,
    /// The config's weight and activity regularizers (training adds them to the loss).
    pub regularizers: Vec<Regularizer>,
    /// The `.keras` file's `compile_config` (loss, optimizer, metrics) as saved, for training.
    pub compile_config: Option<serde_json::Value>,
    /// The Keras config the graph was built from, which saving writes back.
    pub source_config: Option<std::sync::Arc<SourceConfig>>,
}

impl Graph {
    pub fn new(name: impl Into<String>) -> Self {
        Graph {
            name: name.into(),
            ..Default::default()
        }
    }

    pub fn add_input(&mut self, name: impl Into<String>, shape: Shape, dtype: DType) -> ValueId {
        let value = self.new_value(ValueInfo::new(shape, dtype));
        self.inputs.push(Port {
            name: name.into(),
            value,
        });
        value
    }

    pub fn add_output(&mut self, name: impl Into<String>, value: ValueId) {
        self.outputs.push(Port {
            name: name.into(),
            value,
        });
    }

    fn new_value(&mut self, info: ValueInfo) -> ValueId {
        self.values.push(info);
        self.values.len() - 1
    }

    pub fn value(&self, id: ValueId) -> &ValueInfo {
        &self.values[id]
    }

    /// Adds a node after running its op's shape rule on `inputs`; returns its output values.
    /// A shape that does not fit is an error naming the layer.
    pub fn add_node(
        &mut self,
        name: &str,
        class: &str,
        op: Op,
        inputs: &[ValueId],
        mask: Option<ValueId>,
    ) -> std::result::Result<Vec<ValueId>, String> {
        if let Some(&bad) = inputs.iter().find(|&&v| v >= self.values.len()) {
            return Err(format!("input value #{bad} does not exist"));
        }
        if let Some(m) = mask {
            if self.values.get(m).map(|v| v.dtype) != Some(DType::Mask) {
                return Err(format!("value #{m} is not a mask"));
            }
        }
        let infos: Vec<&ValueInfo> = inputs.iter().map(|&v| &self.values[v]).collect();
        let out_infos = op.infer(&infos, &self.params)?;
        let outputs: Vec<ValueId> = out_infos.into_iter().map(|i| self.new_value(i)).collect();
        self.nodes.push(Node {
            name: name.to_string(),
            class: class.to_string(),
            op,
            inputs: inputs.to_vec(),
            mask,
            outputs: outputs.clone(),
        });
        Ok(outputs)
    }

    /// For each value, the index of the last node that reads it; graph outputs live to the end
    /// (`usize::MAX`), values nobody reads die where they are made.
    pub fn last_uses(&self) -> Vec<usize> {
        let mut last = vec![0usize; self.values.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            for &v in &node.outputs {
                last[v] = last[v].max(i);
            }
            for &v in node.inputs.iter().chain(node.mask.iter()) {
                last[v] = last[v].max(i);
            }
        }
        for out in &self.outputs {
            last[out.value] = usize::MAX;
        }
        last
    }

    /// Checks the invariants the backends rely on: values defined before use (topological
    /// order), each value written once, outputs defined.
    pub fn verify(&self) -> Result<()> {
        let mut defined = vec![false; self.values.len()];
        for p in &self.inputs {
            defined[p.value] = true;
        }
        for node in &self.nodes {
            for &v in node.inputs.iter().chain(node.mask.iter()) {
                if !defined[v] {
                    return Err(Error::Internal(format!(
                        "node '{}' reads value #{v} before it is computed",
                        node.name
                    )));
                }
            }
            for &v in &node.outputs {
                if std::mem::replace(&mut defined[v], true) {
                    return Err(Error::Internal(format!(
                        "value #{v} is written twice (by node '{}')",
                        node.name
                    )));
                }
            }
        }
        if let Some(p) = self.outputs.iter().find(|p| !defined[p.value]) {
            return Err(Error::Internal(format!(
                "output '{}' is never computed",
                p.name
            )));
        }
        Ok(())
    }

    pub fn input_info(&self, index: usize) -> &ValueInfo {
        &self.values[self.inputs[index].value]
    }

    pub fn output_info(&self, index: usize) -> &ValueInfo {
        &self.values[self.outputs[index].value]
    }

    /// Trainable and non-trainable weights, as Keras counts them in `model.summary()`.
    pub fn param_count(&self) -> usize {
        self.params.iter().map(|(_, p)| p.value.len()).sum()
    }

    /// Weights one node reads (a shared layer's weights count at each of its calls).
    pub fn node_param_count(&self, node: &Node) -> usize {
        node.op
            .params()
            .iter()
            .map(|&p| self.params.len_of(p))
            .sum()
    }

    pub fn node_flops(&self, node: &Node) -> u64 {
        let ins: Vec<&ValueInfo> = node.inputs.iter().map(|&v| &self.values[v]).collect();
        let outs: Vec<&ValueInfo> = node.outputs.iter().map(|&v| &self.values[v]).collect();
        node.op.flops(&ins, &outs, &self.params)
    }

    pub fn flops_per_item(&self) -> u64 {
        self.nodes.iter().map(|n| self.node_flops(n)).sum()
    }

    /// The nodes that produce each value (None for graph inputs).
    pub fn producers(&self) -> Vec<Option<usize>> {
        let mut producer = vec![None; self.values.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            for &v in &node.outputs {
                producer[v] = Some(i);
            }
        }
        producer
    }

    /// A value's name for `info` and plans: the node (and output index) that makes it, or the
    /// input's name.
    pub fn value_name(&self, v: ValueId) -> String {
        if let Some(p) = self.inputs.iter().find(|p| p.value == v) {
            return p.name.clone();
        }
        for node in &self.nodes {
            if let Some(i) = node.outputs.iter().position(|&o| o == v) {
                return if node.outputs.len() == 1 {
                    node.name.clone()
                } else {
                    format!("{}:{i}", node.name)
                };
            }
        }
        format!("#{v}")
    }

    /// The only input, for the single-input conveniences (`Model::predict`).
    pub fn single_input(&self) -> Result<&ValueInfo> {
        match self.inputs.as_slice() {
            [p] => Ok(&self.values[p.value]),
            ports => Err(Error::Input(format!(
                "the model has {} inputs ({}); pass one array per input",
                ports.len(),
                ports
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The Embedding that reads graph input `index`, with its vocabulary size.
    pub fn embedding_for_input(&self, index: usize) -> Option<(&str, usize)> {
        let v = self.inputs.get(index)?.value;
        self.nodes.iter().find_map(|n| match &n.op {
            Op::Embedding(e) if n.inputs.first() == Some(&v) => {
                Some((n.name.as_str(), e.input_dim))
            }
            _ => None,
        })
    }
}
