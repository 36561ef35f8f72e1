//! SimpleRNN, GRU, LSTM and Bidirectional, with return_state and initial_state.

use serde_json::Value;

use crate::error::Result;
use crate::graph::*;
use crate::keras::build::Builder;
use crate::keras::fields::LayerConfig;

impl Builder<'_> {
    /// Options every recurrent layer config must satisfy.
    fn check_rnn_options(cfg: &LayerConfig) -> Result<()> {
        if cfg.bool_or("stateful", false)? {
            return Err(cfg.unsupported(
                "stateful",
                &Value::Bool(true),
                "stateful RNNs are not supported",
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

    fn sequence_shape(cfg: &LayerConfig, x: &ValueInfo) -> Result<(usize, usize)> {
        match x.shape.as_slice() {
            [t, f] => Ok((*t, *f)),
            other => Err(cfg.error(
                "input_shape",
                format!(
                    "expects (timesteps, features) input, got shape {other:?} (without the batch axis)"
                ),
            )),
        }
    }

    /// One direction's cell: options from `cfg`, weights from `sub` of the layer `owner`.
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
            "GRU" => CellKind::Gru {
                reset_after: cfg.bool_or("reset_after", true)?,
            },
            other => {
                return Err(cfg.error(
                    "class_name",
                    format!(
                        "recurrent layer class '{other}' is not supported (SimpleRNN, GRU and LSTM are)"
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
        if activation.is_row_wise() || recurrent_activation.is_row_wise() {
            return Err(cfg.error(
                "activation",
                "softmax and log_softmax are not supported inside a recurrent cell",
            ));
        }
        let use_bias = cfg.bool_or("use_bias", true)?;
        let go_backwards = cfg.bool_or("go_backwards", false)?;
        let g = kind.gates() * units;
        let mut specs = vec![
            ("kernel", vec![input_features, g]),
            ("recurrent_kernel", vec![units, g]),
        ];
        if use_bias {
            let bias = match kind {
                CellKind::Gru { reset_after: true } => vec![2, g],
                _ => vec![g],
            };
            specs.push(("bias", bias));
        }
        let p = self.params(owner, sub, &specs)?;
        let rate = |field: &str| -> Result<f32> { Ok(cfg.f32_or(field, 0.0)?.clamp(0.0, 1.0)) };
        let recurrent_dropout = rate("recurrent_dropout")?;
        let implementation = match cfg.get("implementation") {
            None => 2,
            Some(_) => cfg.usize("implementation")?,
        };
        let dropout = CellDropout {
            input: rate("dropout")?,
            recurrent: recurrent_dropout,
            per_gate: implementation == 1 || recurrent_dropout != 0.0,
        };
        Ok(RecurrentCell {
            kind,
            units,
            activation,
            recurrent_activation,
            kernel: p[0],
            recurrent_kernel: p[1],
            bias: p.get(2).copied(),
            go_backwards,
            dropout,
        })
    }

    /// One call of SimpleRNN / GRU / LSTM / Bidirectional: `inputs` are the sequence and then
    /// the initial states (Keras 3's `initial_state` kwarg, or Keras 2's extra inbound tensors).
    /// Outputs: the output, then the final states with `return_state`. `mask` is the mask the
    /// layer applies, `out_mask` the one its output sequence carries (return_sequences).
    pub(crate) fn recurrent_layer(
        &mut self,
        cfg: &LayerConfig,
        inputs: &[ValueId],
        mask: Option<ValueId>,
        out_mask: Option<ValueId>,
    ) -> Result<Vec<ValueId>> {
        let Some((&x, states)) = inputs.split_first() else {
            return Err(cfg.error("inbound_nodes", "a recurrent layer needs an input"));
        };
        let info = self.info(x).clone();
        let mut r = if cfg.class == "Bidirectional" {
            self.bidirectional(cfg, &info)?
        } else {
            self.recurrent(cfg, &info)?
        };
        if !states.is_empty() {
            if states.len() != r.state_count() {
                return Err(cfg.error(
                    "initial_state",
                    format!(
                        "got {} initial state tensor(s); this layer has {} state(s)",
                        states.len(),
                        r.state_count()
                    ),
                ));
            }
            r.initial_state = true;
        }
        let keeps_mask = r.return_sequences;
        let sequences = if r.two_outputs() { 2 } else { 1 };
        let outs = self.add(cfg, Op::Recurrent(Box::new(r)), inputs, mask)?;
        if let (Some(m), true) = (out_mask, keeps_mask) {
            for &y in &outs[..sequences] {
                self.masks.insert(y, m);
            }
        }
        Ok(outs)
    }

    pub(super) fn recurrent(&mut self, cfg: &LayerConfig, x: &ValueInfo) -> Result<Recurrent> {
        let (timesteps, features) = Self::sequence_shape(cfg, x)?;
        let return_sequences = cfg.bool_or("return_sequences", false)?;
        let zero_masked_outputs = cfg.bool_or("zero_output_for_mask", false)?;
        let return_state = cfg.bool_or("return_state", false)?;
        let forward = self.cell(cfg, cfg, &["cell"], features)?;
        Ok(Recurrent {
            forward,
            backward: None,
            merge_mode: MergeMode::Concat,
            return_sequences,
            return_state,
            initial_state: false,
            timesteps,
            input_features: features,
            zero_masked_outputs,
        })
    }

    pub(super) fn bidirectional(&mut self, cfg: &LayerConfig, x: &ValueInfo) -> Result<Recurrent> {
        let (timesteps, features) = Self::sequence_shape(cfg, x)?;
        let merge_mode = match cfg.get("merge_mode") {
            // Two outputs, forward and backward.
            None | Some(Value::Null) => MergeMode::None,
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
        if forward.units != backward.units {
            return Err(cfg.error(
                "backward_layer",
                "directions with different units are not supported",
            ));
        }
        if forward.kind != backward.kind {
            return Err(cfg.error(
                "backward_layer",
                "directions of different layer classes are not supported",
            ));
        }
        let return_sequences = fwd_cfg.bool_or("return_sequences", false)?;
        let return_state = fwd_cfg.bool_or("return_state", false)?;
        // Bidirectional forces zero_output_for_mask = return_sequences on both directions.
        Ok(Recurrent {
            forward,
            backward: Some(backward),
            merge_mode,
            return_sequences,
            return_state,
            initial_state: false,
            timesteps,
            input_features: features,
            zero_masked_outputs: return_sequences,
        })
    }
}
