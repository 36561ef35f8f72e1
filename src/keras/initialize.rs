//! The weight source of a model loaded without weights: each weight is drawn as Keras builds a
//! fresh layer, from the initializer its config names (`kernel_initializer` ...) or Keras's
//! default for that layer, with LSTM's `unit_forget_bias`. One seeded stream in the loader's
//! order (layer by layer, each weight in Keras's order) makes a seed give the same weights on
//! every load.

use super::fields::LayerConfig;
use super::weight_fields::weight_fields;
use super::weights::{RawWeight, WeightRequest};
use crate::error::Result;
use crate::train::init::Initializer;
use crate::train::Rng;

pub struct InitWeights {
    rng: Rng,
}

impl InitWeights {
    pub fn new(seed: u64) -> Self {
        InitWeights {
            rng: Rng::new(seed),
        }
    }

    pub(crate) fn take(&mut self, req: &WeightRequest) -> Result<Vec<RawWeight>> {
        req.specs
            .iter()
            .map(|(what, shape)| self.weight(req.fields, what, shape))
            .collect()
    }

    fn weight(&mut self, cfg: &LayerConfig, what: &str, shape: &[usize]) -> Result<RawWeight> {
        let fields = weight_fields(&cfg.class, what).ok_or_else(|| {
            cfg.error(
                "weights",
                format!("wgnn does not know which initializer makes the weight '{what}'"),
            )
        })?;
        let (field, init) = match fields.initializer {
            Some(field) => match cfg.get(field) {
                Some(v) => (
                    field,
                    Initializer::from_keras(v).map_err(|m| cfg.error(field, m))?,
                ),
                None => (field, fields.default),
            },
            None => ("weights", fields.default),
        };
        let mut draw = |shape: &[usize]| -> Result<Vec<f32>> {
            let array = init
                .fill(shape, &mut self.rng)
                .map_err(|m| cfg.error(field, m))?;
            Ok(array.iter().copied().collect())
        };
        let mut values = if what == "bias" && unit_forget_bias(cfg)? {
            // keras LSTMCell.build: the bias initializer on (units,), ones for the forget gate,
            // the bias initializer on (2 units,): gates i, f, c, o.
            let units = shape.iter().product::<usize>() / 4;
            let mut v = draw(&[units])?;
            v.extend(std::iter::repeat_n(1.0, units));
            v.extend(draw(&[2 * units])?);
            v
        } else {
            draw(shape)?
        };
        if fields.sqrt {
            values.iter_mut().for_each(|v| *v = v.sqrt());
        }
        Ok(RawWeight {
            shape: shape.to_vec(),
            values,
        })
    }
}

/// LSTM and ConvLSTM add one to the forget gate's bias at initialization (default true).
fn unit_forget_bias(cfg: &LayerConfig) -> Result<bool> {
    match cfg.class.as_str() {
        "LSTM" | "ConvLSTM1D" | "ConvLSTM2D" | "ConvLSTM3D" => {
            cfg.bool_or("unit_forget_bias", true)
        }
        _ => Ok(false),
    }
}
