//! NusaX-Senti CSV reading: quoted fields with commas and newlines, UTF-8, label numbering and
//! clear errors; and the real splits (env WGNN_DATA).

mod common;

use common::env_dir;

use wgnn::data::nusax::{read_csv, Split, DEFAULT_LABELS};
use wgnn::data::Nusax;

fn default_labels() -> Vec<String> {
    DEFAULT_LABELS.iter().map(|s| s.to_string()).collect()
}

#[test]
fn quoted_fields_keep_commas_quotes_newlines_and_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.csv");
    std::fs::write(
        &path,
        "id,text,label\n\
         7,\"Enak, murah, dan \"\"mantap\"\"!\",positive\n\
         8,\"baris satu\nbaris dua\",negative\n\
         9,Café kopi ☕ enak,neutral\n",
    )
    .unwrap();
    let rows = read_csv(&path, &default_labels()).unwrap();
    assert_eq!(rows.ids, vec!["7", "8", "9"]);
    assert_eq!(rows.texts[0], "Enak, murah, dan \"mantap\"!");
    assert_eq!(rows.texts[1], "baris satu\nbaris dua");
    assert_eq!(rows.texts[2], "Café kopi ☕ enak");
    // neutral=0, positive=1, negative=2
    assert_eq!(rows.labels, vec![1, 2, 0]);
}

#[test]
fn columns_are_found_by_name_and_labels_can_be_renumbered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train.csv");
    std::fs::write(&path, "label,text\n Positive ,a\nnegative,b\n").unwrap();
    let names: Vec<String> = ["negative", "positive"].map(String::from).to_vec();
    let rows = read_csv(&path, &names).unwrap();
    assert_eq!(rows.labels, vec![1, 0]);
    assert_eq!(rows.ids, vec!["1", "2"]);
    assert_eq!(rows.label_names, names);
}

#[test]
fn unknown_label_names_file_row_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("valid.csv");
    std::fs::write(
        &path,
        "id,text,label\n1,a,neutral\n2,\"multi\nline\",sarcastic\n",
    )
    .unwrap();
    let e = read_csv(&path, &default_labels()).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}: row 3 (line 3): unknown label 'sarcastic' (expected one of: neutral, positive, negative)",
            path.display()
        )
    );
}

#[test]
fn missing_column_and_short_row_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.csv");
    std::fs::write(&path, "id,text,sentiment\n1,a,neutral\n").unwrap();
    let e = read_csv(&path, &default_labels()).unwrap_err().to_string();
    assert!(
        e.contains("row 1 (header): no 'label' column (found: id,text,sentiment"),
        "{e}"
    );
    std::fs::write(&path, "id,text,label\n1,a,neutral\n2,b\n").unwrap();
    let e = read_csv(&path, &default_labels()).unwrap_err().to_string();
    assert!(
        e.contains("row 3 (line 3): no 'label' field (2 fields)"),
        "{e}"
    );
    let missing = dir.path().join("nope.csv");
    let e = read_csv(&missing, &default_labels())
        .unwrap_err()
        .to_string();
    assert!(e.starts_with(&missing.display().to_string()), "{e}");
}

#[test]
fn locate_accepts_the_files_or_a_nusax_folder() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("nusax")).unwrap();
    std::fs::write(root.path().join("nusax/test.csv"), "id,text,label\n").unwrap();
    let nusax = Nusax::locate(root.path()).unwrap();
    assert_eq!(nusax.path(Split::Test), root.path().join("nusax/test.csv"));
    assert!(nusax.load(Split::Test, None).unwrap().is_empty());
    let e = Nusax::locate(&root.path().join("nusax/missing"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no NusaX CSV files"), "{e}");
}

#[test]
fn real_splits_have_the_documented_sizes_and_label_counts() {
    if env_dir("WGNN_DATA").is_none() {
        return;
    }
    let nusax = wgnn::data::locate_nusax(None).unwrap();
    // (split, rows, neutral, positive, negative) from the dataset README.
    for (split, rows, neutral, positive, negative) in [
        (Split::Train, 500, 119, 189, 192),
        (Split::Valid, 100, 24, 38, 38),
        (Split::Test, 400, 96, 151, 153),
    ] {
        let data = nusax.load(split, None).unwrap();
        assert_eq!(data.len(), rows, "{split:?}");
        let count = |l: usize| data.labels.iter().filter(|&&x| x == l).count();
        assert_eq!(
            (count(0), count(1), count(2)),
            (neutral, positive, negative),
            "{split:?}"
        );
    }
    let train = nusax.load(Split::Train, None).unwrap();
    assert_eq!(train.ids[1], "209");
    assert!(train.texts[1].starts_with(
        "Kue-kue yang disajikan bikin saya bernostalgia. Semuanya tipikal kue zaman dulu, baik"
    ));
}
