//! Metrics against hand-checked numbers, and against Keras's own scores for the seed NusaX models.

mod common;

use common::env_dir;

use ndarray::Array2;
use wgnn::metrics::{accuracy, argmax_rows, confusion_matrix, macro_f1, ClassificationReport};

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn close(got: f64, expected: f64) -> bool {
    (got - expected).abs() <= 1e-12
}

// labels:      0 0 0 1 1 2 2 2 2 0
// predictions: 0 1 0 1 2 2 2 0 2 0
// confusion (rows true): [3 1 0] [0 1 1] [1 0 3]
const LABELS: [usize; 10] = [0, 0, 0, 1, 1, 2, 2, 2, 2, 0];
const PREDICTIONS: [usize; 10] = [0, 1, 0, 1, 2, 2, 2, 0, 2, 0];

#[test]
fn confusion_matrix_rows_are_true_columns_are_predicted() {
    let m = confusion_matrix(&LABELS, &PREDICTIONS, 3).unwrap();
    assert_eq!(m, vec![vec![3, 1, 0], vec![0, 1, 1], vec![1, 0, 3]]);
}

#[test]
fn per_class_scores_match_hand_computation() {
    let r =
        ClassificationReport::new(&LABELS, &PREDICTIONS, &names(&["neg", "neu", "pos"])).unwrap();
    assert!(close(r.accuracy, 0.7));
    assert_eq!(r.samples, 10);
    // class 0: tp 3, predicted 4, support 4 -> 0.75 / 0.75 / 6/8.
    // class 1: tp 1, predicted 2, support 2 -> 0.5 / 0.5 / 2/4.
    // class 2: tp 3, predicted 4, support 4 -> 0.75 / 0.75 / 6/8.
    let expected = [
        (0.75, 0.75, 0.75, 4),
        (0.5, 0.5, 0.5, 2),
        (0.75, 0.75, 0.75, 4),
    ];
    for (c, (p, rc, f, s)) in r.classes.iter().zip(expected) {
        assert!(
            close(c.precision, p) && close(c.recall, rc) && close(c.f1, f),
            "{c:?}"
        );
        assert_eq!(c.support, s);
    }
    assert!(close(r.macro_f1, 2.0 / 3.0));
    assert!(close(r.macro_avg.precision, 2.0 / 3.0));
    // weighted: (4*0.75 + 2*0.5 + 4*0.75) / 10 = 0.7
    assert!(close(r.weighted_avg.f1, 0.7));
}

#[test]
fn macro_f1_counts_every_class_including_absent_ones() {
    // A fourth class with no samples and no predictions scores 0 and halves... the mean.
    assert!(close(
        macro_f1(&LABELS, &PREDICTIONS, 4).unwrap(),
        (0.75 + 0.5 + 0.75) / 4.0
    ));
}

#[test]
fn zero_division_gives_zero() {
    // Class 1 is never predicted (precision 0/0 -> 0) and class 2 never occurs (recall 0/0 -> 0).
    let r = ClassificationReport::unnamed(&[0, 1, 1], &[0, 0, 2], 3).unwrap();
    let c1 = &r.classes[1];
    assert_eq!(
        (c1.precision, c1.recall, c1.f1, c1.support),
        (0.0, 0.0, 0.0, 2)
    );
    let c2 = &r.classes[2];
    assert_eq!(
        (c2.precision, c2.recall, c2.f1, c2.support),
        (0.0, 0.0, 0.0, 0)
    );
    // class 0: tp 1, predicted 2, support 1 -> p 0.5, r 1, f1 2/3.
    assert!(close(r.classes[0].f1, 2.0 / 3.0));
    assert!(close(r.macro_f1, 2.0 / 9.0));
    assert!(close(accuracy(&[0, 1, 1], &[0, 0, 2]), 1.0 / 3.0));
}

#[test]
fn predictions_are_the_argmax_of_probabilities() {
    let probs = Array2::from_shape_vec(
        (3, 3),
        vec![0.2f32, 0.5, 0.3, 0.9, 0.05, 0.05, 0.1, 0.1, 0.8],
    )
    .unwrap();
    assert_eq!(argmax_rows(probs.view()), vec![1, 0, 2]);
    let r = ClassificationReport::from_probabilities(
        &[1, 0, 1],
        probs.view(),
        &names(&["a", "b", "c"]),
    )
    .unwrap();
    assert!(close(r.accuracy, 2.0 / 3.0));
}

#[test]
fn bad_inputs_are_clear_errors() {
    let e = confusion_matrix(&[0, 1], &[0], 2).unwrap_err().to_string();
    assert!(e.contains("2 labels but 1 predictions"), "{e}");
    let e = confusion_matrix(&[0, 5], &[0, 1], 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("label 5 at row 1"), "{e}");
    let e = confusion_matrix(&[0, 1], &[0, 3], 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("prediction 3 at row 1"), "{e}");
}

#[test]
fn report_serializes_and_prints_a_named_table() {
    let r = ClassificationReport::new(
        &LABELS,
        &PREDICTIONS,
        &names(&["neutral", "positive", "negative"]),
    )
    .unwrap();
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["confusion"][2][0], 1);
    assert_eq!(json["classes"][1]["name"], "positive");
    let table = r.to_table();
    print!("{table}");
    assert!(
        table.contains("    neutral     0.7500     0.7500     0.7500          4"),
        "{table}"
    );
    assert!(
        table.contains("   accuracy                           0.7000         10"),
        "{table}"
    );
    assert!(table.contains("confusion matrix (rows = true, columns = predicted):"));
    assert!(
        table.contains(" negative         1         0         3"),
        "{table}"
    );
}

#[test]
fn seed_models_scores_match_keras() {
    let (Some(seed), Some(data)) = (env_dir("WGNN_SEED_MODELS"), env_dir("WGNN_DATA")) else {
        return;
    };
    let test = wgnn::data::Nusax::locate(&data)
        .unwrap()
        .load(wgnn::data::nusax::Split::Test, None)
        .unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(seed.join("expected.json")).unwrap())
            .unwrap();
    let expected = expected.as_object().unwrap();
    assert_eq!(expected.len(), 12);
    for (model, scores) in expected {
        let stem = model.trim_end_matches(".keras");
        let file = std::fs::File::open(seed.join(format!("{stem}.test_probs.npy"))).unwrap();
        let npy = npyz::NpyFile::new(std::io::BufReader::new(file)).unwrap();
        assert_eq!(npy.shape(), &[400, 3]);
        let probs = Array2::from_shape_vec((400, 3), npy.into_vec::<f32>().unwrap()).unwrap();
        let r =
            ClassificationReport::from_probabilities(&test.labels, probs.view(), &test.label_names)
                .unwrap();
        // expected.json is rounded to 4 decimals.
        let want_f1 = scores["macro_f1"].as_f64().unwrap();
        let want_acc = scores["accuracy"].as_f64().unwrap();
        assert!(
            (r.macro_f1 - want_f1).abs() <= 0.5e-4 + 1e-12,
            "{model}: macro-F1 {} vs {want_f1}",
            r.macro_f1
        );
        assert!(
            (r.accuracy - want_acc).abs() <= 1e-12,
            "{model}: accuracy {} vs {want_acc}",
            r.accuracy
        );
    }
}
