//! Fine-tune a CIFAR-10 model with the library API: Keras's `fit` on the CPU reference path,
//! then the test accuracy before and after, and the trained model saved as a `.keras` file.
//!
//! cargo run --release --example train_cifar10 -- [MODEL] [IMAGES] [EPOCHS] [OUT.keras]
//! (default models/cifar10_base.keras, 2000 training images, 1 epoch, /tmp/cifar10_tuned.keras;
//! the data folder is env WGNN_DATA, else ~/.cache/wgnn)

use wgnn::data::cifar10::Split;
use wgnn::train::optim::OptimizerSpec;
use wgnn::train::train_metrics::TrainMetrics;
use wgnn::train::{Loss, Shuffle, TrainConfig, TrainData};
use wgnn::{Backend, Model, PreparedInput};

fn main() -> wgnn::Result<()> {
    let mut args = std::env::args().skip(1);
    let model_path = args
        .next()
        .unwrap_or_else(|| "models/cifar10_base.keras".into());
    let images: usize = args.next().map_or(Ok(2000), |s| s.parse()).unwrap_or(2000);
    let epochs: usize = args.next().map_or(Ok(1), |s| s.parse()).unwrap_or(1);
    let out = args
        .next()
        .unwrap_or_else(|| "/tmp/cifar10_tuned.keras".into());

    let model = Model::load(&model_path)?;
    let data = wgnn::data::locate_cifar10(None)?;
    let train = data.load(Split::Train, Some(images))?;
    let test = data.load(Split::Test, Some(2000))?;
    let accuracy = |m: &Model| -> wgnn::Result<f64> {
        let probs = m.predict(test.images.view().into_dyn(), Backend::Cpu)?;
        let probs = probs
            .into_dimensionality::<ndarray::Ix2>()
            .map_err(|_| wgnn::Error::Input("expected (N, 10) outputs".into()))?;
        let predicted = wgnn::metrics::argmax_rows(probs.view());
        let right = predicted
            .iter()
            .zip(&test.labels)
            .filter(|(p, &l)| **p == l as usize)
            .count();
        Ok(right as f64 / test.len() as f64)
    };
    println!("test accuracy before: {:.4}", accuracy(&model)?);

    let labels = ndarray::Array1::from_iter(train.labels.iter().map(|&l| l as f32)).into_dyn();
    let data = TrainData {
        inputs: vec![PreparedInput::Float(train.images.into_dyn())],
        targets: vec![labels],
    };
    let outputs = vec![model.graph().outputs[0].name.clone()];
    let config = TrainConfig {
        epochs,
        batch_size: 32,
        shuffle: Shuffle::Seeded(1),
        seed: 1,
        losses: vec![Loss::by_name("sparse_categorical_crossentropy")?],
        loss_weights: Vec::new(),
        optimizer: OptimizerSpec::by_name("adam")?.with_learning_rate(1e-4),
        metrics: TrainMetrics::from_names(&["accuracy".into()], &outputs)?,
    };
    let mut tuned = model;
    let history = tuned.train(&data, &config)?;
    for e in &history.epochs {
        println!(
            "epoch {}: loss {:.4} {:?} ({:.0} images/s)",
            e.epoch + 1,
            e.loss,
            e.metrics,
            e.items as f64 / e.seconds
        );
    }
    println!("test accuracy after: {:.4}", accuracy(&tuned)?);
    tuned.save(&out)?;
    println!("saved {out}");
    Ok(())
}
