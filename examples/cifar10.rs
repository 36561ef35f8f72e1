//! Evaluate a CIFAR-10 model on the test set with the library API.
//!
//! cargo run --release --example cifar10 -- models/cifar10_vgg6.keras [DATA_DIR] [cpu|gpu|auto]

use wgnn::data::cifar10::Split;
use wgnn::metrics::ClassificationReport;
use wgnn::{Backend, Model};

fn main() -> wgnn::Result<()> {
    let mut args = std::env::args().skip(1);
    let model_path = args
        .next()
        .unwrap_or_else(|| "models/cifar10_vgg6.keras".into());
    let data_dir = args.next();
    let backend: Backend = args.next().as_deref().unwrap_or("auto").parse()?;

    let model = Model::load(&model_path)?;
    // --data DIR, else env WGNN_DATA, else ~/.cache/wgnn.
    let data = wgnn::data::locate_cifar10(data_dir.as_deref().map(std::path::Path::new))?;

    let mut labels = Vec::new();
    let mut predictions = Vec::new();
    for batch in data.batches(Split::Test, 250, None)? {
        let batch = batch?;
        let probs = model.predict(batch.images.view().into_dyn(), backend)?;
        let probs = probs
            .into_dimensionality::<ndarray::Ix2>()
            .map_err(|_| wgnn::Error::Input("expected (N, 10) outputs".into()))?;
        predictions.extend(wgnn::metrics::argmax_rows(probs.view()));
        labels.extend(batch.labels.iter().map(|&l| l as usize));
    }
    let report = ClassificationReport::new(&labels, &predictions, data.class_names())?;
    println!("{}", report.to_table());
    println!(
        "accuracy {:.4}  macro-F1 {:.4}",
        report.accuracy, report.macro_f1
    );
    Ok(())
}
