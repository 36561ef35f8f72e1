//! An [`H5Group`] tree to HDF5 bytes with hdf5-pure, as h5py writes Keras's weights: contiguous
//! little-endian datasets, `name` attributes as variable-length UTF-8 strings.

use hdf5_pure::{AttrValue, DatasetBuilder, FileBuilder, GroupBuilder};

use super::layout::{H5Data, H5Dataset, H5Group};

/// The file's bytes; the error is hdf5-pure's message.
pub(crate) fn h5_bytes(root: &H5Group) -> Result<Vec<u8>, String> {
    let mut file = FileBuilder::new();
    for (name, ds) in &root.datasets {
        dataset(file.create_dataset(name), ds);
    }
    for (name, sub) in &root.groups {
        let group = group(file.create_group(name), sub);
        file.add_group(group);
    }
    file.finish().map_err(|e| e.to_string())
}

fn group(mut builder: GroupBuilder, g: &H5Group) -> hdf5_pure::FinishedGroup {
    if let Some(name) = &g.name_attr {
        builder.set_attr("name", AttrValue::VarLenString(name.clone()));
    }
    for (name, ds) in &g.datasets {
        dataset(builder.create_dataset(name), ds);
    }
    for (name, sub) in &g.groups {
        let child = group(builder.create_group(name), sub);
        builder.add_group(child);
    }
    builder.finish()
}

fn dataset(builder: &mut DatasetBuilder, ds: &H5Dataset) {
    // An empty shape is a scalar (Keras's optimizer iteration, Normalization's count).
    let shape: Vec<u64> = ds.shape.iter().map(|&d| d as u64).collect();
    builder.with_shape(&shape);
    match &ds.data {
        H5Data::F32(v) => builder.with_f32_data(v),
        H5Data::I64(v) => builder.with_i64_data(v),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_attributes_and_datasets_read_back() {
        let mut root = H5Group::default();
        root.add_vars("", "model");
        root.add_vars("layers/dense", "dense");
        let vars = root.group_mut("layers/dense/vars");
        vars.datasets.insert(
            "0".into(),
            H5Dataset {
                shape: vec![2, 3],
                data: H5Data::F32(vec![1., 2., 3., 4., 5., 6.]),
            },
        );
        root.group_mut("optimizer/vars").datasets.insert(
            "0".into(),
            H5Dataset {
                shape: vec![],
                data: H5Data::I64(vec![7]),
            },
        );
        let file = hdf5_pure::File::from_bytes(h5_bytes(&root).unwrap()).unwrap();
        let ds = file.dataset("layers/dense/vars/0").unwrap();
        assert_eq!(ds.shape().unwrap(), vec![2, 3]);
        assert_eq!(ds.read_f32().unwrap(), vec![1., 2., 3., 4., 5., 6.]);
        let it = file.dataset("optimizer/vars/0").unwrap();
        assert_eq!(it.shape().unwrap(), Vec::<u64>::new());
        assert_eq!(it.read::<i64>().unwrap(), vec![7]);
        let attrs = file.group("layers/dense/vars").unwrap().attrs().unwrap();
        assert_eq!(attrs.get("name").and_then(AttrValue::as_str), Some("dense"));
        let attrs = file.group("vars").unwrap().attrs().unwrap();
        assert_eq!(attrs.get("name").and_then(AttrValue::as_str), Some("model"));
    }
}
