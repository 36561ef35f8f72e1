//! The graph IR itself, on hand-made graphs: a value read by several nodes, buffer reuse by
//! liveness, several inputs and outputs, `Graph::verify`, shape rules at `add_node`, and the
//! `.npz` that `predict` writes for several outputs. Both backends must agree at
//! |gpu - cpu| <= 1e-4 * (1 + |cpu|).
//!
//! Without a GPU adapter the GPU halves fail when env `CI` is set and print a note otherwise.

mod common;
mod gpu_support;

use std::io::Read;

use gpu_support::*;
use ndarray::ArrayD;
use wgnn::graph::*;
use wgnn::Error;

/// The lines of node `index`'s section in a printed GPU plan.
fn plan_section(plan: &str, index: usize) -> String {
    let head = format!("  [{index}] ");
    let next = format!("  [{}] ", index + 1);
    let start = plan
        .find(&head)
        .unwrap_or_else(|| panic!("plan has no step {index}:\n{plan}"));
    let rest = &plan[start..];
    let end = [rest.find(&next), rest.find("\nbuffers:")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(rest.len());
    rest[..end].to_string()
}

/// How many pooled activation buffers a printed plan lists.
fn slot_count(plan: &str) -> usize {
    plan.lines()
        .filter(|l| {
            l.strip_prefix("  slot")
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count()
}

fn dense_op(
    g: &mut Graph,
    rng: &mut Rng,
    name: &str,
    k: usize,
    units: usize,
    act: Activation,
) -> Op {
    let scale = 1.0 / (k as f32).sqrt();
    let kernel = g.params.add(
        format!("{name}/kernel"),
        rng.array(&[k, units], scale),
        true,
    );
    let bias = g
        .params
        .add(format!("{name}/bias"), rng.array(&[units], 0.5), true);
    Op::Dense(Dense {
        units,
        in_features: k,
        kernel,
        bias: Some(bias),
        activation: act,
    })
}

fn add1(g: &mut Graph, name: &str, class: &str, op: Op, input: ValueId) -> ValueId {
    g.add_node(name, class, op, &[input], None)
        .unwrap_or_else(|e| panic!("{name}: {e}"))[0]
}

/// Dense -> (relu, tanh), both graph outputs; with `dense_out`, the Dense value is an output too.
fn two_branches(rng: &mut Rng, dense_out: bool) -> Graph {
    let mut g = Graph::new("branches");
    let x = g.add_input("x", vec![37], DType::F32);
    let op = dense_op(&mut g, rng, "dense", 37, 70, Activation::Linear);
    let h = add1(&mut g, "dense", "Dense", op, x);
    let relu = add1(&mut g, "relu", "ReLU", Op::Activation(Activation::RELU), h);
    let tanh = add1(
        &mut g,
        "tanh",
        "Activation",
        Op::Activation(Activation::Tanh),
        h,
    );
    g.add_output("relu", relu);
    g.add_output("tanh", tanh);
    if dense_out {
        g.add_output("dense", h);
    }
    g.verify().unwrap();
    g
}

#[test]
fn a_value_read_by_two_nodes_is_copied_before_the_in_place_activation() {
    let mut rng = Rng::new(200);
    let g = two_branches(&mut rng, false);
    assert_eq!(
        g.last_uses()[g.nodes[0].outputs[0]],
        2,
        "tanh reads dense last"
    );

    let plan = wgnn::gpu::describe_plan(&g, 3, None).unwrap();
    println!("{plan}");
    let relu = plan_section(&plan, 1);
    assert!(
        relu.contains("copy ") && relu.contains("the input is read again later"),
        "relu runs on a copy, since tanh reads dense after it:\n{relu}"
    );
    let tanh = plan_section(&plan, 2);
    assert!(
        !tanh.contains("copy ") && tanh.contains("in place"),
        "tanh is dense's last reader and runs in place:\n{tanh}"
    );

    let Some(gpu) = runtime(&g) else { return };
    for batch in [1, 33] {
        let x = float_input(&mut rng, batch, &[37], 2.0);
        let out = check_all_with(&format!("branches batch {batch}"), &gpu, &g, &[x]);
        assert_eq!(out.len(), 2);
        assert!(out[0].iter().any(|&v| v == 0.0) && out[0].iter().any(|&v| v > 0.0));
        assert!(out[1].iter().any(|&v| v < 0.0));
    }
}

#[test]
fn a_graph_output_read_by_later_nodes_is_never_overwritten() {
    let mut rng = Rng::new(201);
    let g = two_branches(&mut rng, true);
    let plan = wgnn::gpu::describe_plan(&g, 4, None).unwrap();
    for step in [1, 2] {
        let section = plan_section(&plan, step);
        assert!(
            section.contains("copy "),
            "dense is a graph output, so step {step} must copy it:\n{section}"
        );
    }
    let x = float_input(&mut rng, 5, &[37], 2.0);
    // The CPU reference against the dense output itself: each branch sees dense unchanged.
    let cpu = wgnn::cpu::run(&g, std::slice::from_ref(&x)).unwrap();
    let dense = &cpu[2];
    assert!(dense.std(0.0) > 0.05);
    assert_close("cpu relu(dense)", &cpu[0], &dense.mapv(|v| v.max(0.0)));
    assert_close("cpu tanh(dense)", &cpu[1], &dense.mapv(f32::tanh));

    let Some(gpu) = runtime(&g) else { return };
    let out = check_all_with("branches with dense as an output", &gpu, &g, &[x]);
    assert_eq!(out.len(), 3);
}

fn dense_chain(rng: &mut Rng, layers: usize) -> Graph {
    let widths = [13, 70, 33, 9, 64, 21];
    let mut chain = Chain::float(&[17]).named(&format!("chain{layers}"));
    for i in 0..layers {
        let act = if i % 2 == 0 {
            Activation::RELU
        } else {
            Activation::Tanh
        };
        chain = chain.dense(rng, &format!("dense_{i}"), widths[i % widths.len()], act);
    }
    chain.build()
}

#[test]
fn a_long_chain_reuses_a_bounded_number_of_buffers() {
    let mut rng = Rng::new(202);
    let short = dense_chain(&mut rng, 4);
    let long = dense_chain(&mut rng, 40);
    let short_plan = wgnn::gpu::describe_plan(&short, 2, None).unwrap();
    let long_plan = wgnn::gpu::describe_plan(&long, 2, None).unwrap();
    println!("{long_plan}");
    let (s, l) = (slot_count(&short_plan), slot_count(&long_plan));
    assert!(
        (1..=2).contains(&l),
        "a chain ping-pongs between two buffers, got {l}:\n{long_plan}"
    );
    assert_eq!(s, l, "buffers must not grow with the chain's length");

    let Some(gpu) = runtime(&long) else { return };
    for batch in [1, 33] {
        let x = float_input(&mut rng, batch, &[17], 1.0);
        check_all_with(
            &format!("40 dense layers, batch {batch}"),
            &gpu,
            &long,
            &[x],
        );
    }
}

struct Branches {
    l1: (ArrayD<f32>, ArrayD<f32>),
    reg: (ArrayD<f32>, ArrayD<f32>),
    cls: (ArrayD<f32>, ArrayD<f32>),
}

impl Branches {
    fn new(rng: &mut Rng) -> Self {
        let mut pair = |k: usize, n: usize| (rng.array(&[k, n], 0.6), rng.array(&[n], 0.5));
        Branches {
            l1: pair(8, 5),
            reg: pair(5, 2),
            cls: pair(8, 3),
        }
    }
}

fn dense_with(
    g: &mut Graph,
    name: &str,
    (kernel, bias): &(ArrayD<f32>, ArrayD<f32>),
    act: Activation,
    x: ValueId,
) -> ValueId {
    let k = g.params.add(format!("{name}/kernel"), kernel.clone(), true);
    let b = g.params.add(format!("{name}/bias"), bias.clone(), true);
    let op = Op::Dense(Dense {
        units: kernel.shape()[1],
        in_features: kernel.shape()[0],
        kernel: k,
        bias: Some(b),
        activation: act,
    });
    add1(g, name, "Dense", op, x)
}

/// Inputs [left (8,), right (8,)]; outputs [cls = softmax(dense(right)), reg =
/// dense(relu(dense(left)))], listed in the reverse of the order their branches are built.
fn two_in_two_out(w: &Branches) -> Graph {
    let mut g = Graph::new("two_in_two_out");
    let left = g.add_input("left", vec![8], DType::F32);
    let right = g.add_input("right", vec![8], DType::F32);
    let h = dense_with(&mut g, "l1", &w.l1, Activation::RELU, left);
    let reg = dense_with(&mut g, "reg", &w.reg, Activation::Linear, h);
    let cls = dense_with(&mut g, "cls", &w.cls, Activation::Softmax, right);
    g.add_output("cls", cls);
    g.add_output("reg", reg);
    g.verify().unwrap();
    g
}

#[test]
fn two_inputs_and_two_outputs_run_on_both_backends() {
    let mut rng = Rng::new(203);
    let w = Branches::new(&mut rng);
    let g = two_in_two_out(&w);
    assert_eq!(g.inputs.len(), 2);
    assert_eq!(g.output_info(0).shape, vec![3]);
    assert_eq!(g.output_info(1).shape, vec![2]);

    // Each branch alone, from the same weights: the two-input graph routes each input to its
    // own branch and each output to its own port.
    let mut reg_only = Graph::new("reg_only");
    let x = reg_only.add_input("left", vec![8], DType::F32);
    let h = dense_with(&mut reg_only, "l1", &w.l1, Activation::RELU, x);
    let y = dense_with(&mut reg_only, "reg", &w.reg, Activation::Linear, h);
    reg_only.add_output("reg", y);
    let mut cls_only = Graph::new("cls_only");
    let x = cls_only.add_input("right", vec![8], DType::F32);
    let y = dense_with(&mut cls_only, "cls", &w.cls, Activation::Softmax, x);
    cls_only.add_output("cls", y);

    let gpu = runtime(&g);
    for batch in [1, 5] {
        let left = float_input(&mut rng, batch, &[8], 2.0);
        let right = float_input(&mut rng, batch, &[8], 2.0);
        let inputs = [left.clone(), right.clone()];
        let cpu = wgnn::cpu::run(&g, &inputs).unwrap();
        assert_eq!(cpu.len(), 2);
        assert_eq!(cpu[0].shape(), &[batch, 3]);
        assert_eq!(cpu[1].shape(), &[batch, 2]);
        let cls = wgnn::cpu::run(&cls_only, &[right]).unwrap();
        let reg = wgnn::cpu::run(&reg_only, &[left]).unwrap();
        assert_close("cls branch", &cpu[0], &cls[0]);
        assert_close("reg branch", &cpu[1], &reg[0]);
        if let Some(gpu) = &gpu {
            check_all_with(&format!("two in, two out, batch {batch}"), gpu, &g, &inputs);
        }
    }

    // Inputs that disagree on the batch size, or too few of them, are input errors.
    let uneven = [
        float_input(&mut rng, 2, &[8], 1.0),
        float_input(&mut rng, 3, &[8], 1.0),
    ];
    assert!(matches!(wgnn::cpu::run(&g, &uneven), Err(Error::Input(_))));
    let one = [float_input(&mut rng, 2, &[8], 1.0)];
    assert!(matches!(wgnn::cpu::run(&g, &one), Err(Error::Input(_))));
    if let Some(gpu) = &gpu {
        assert!(matches!(gpu.run(&g, &uneven), Err(Error::Input(_))));
        assert!(matches!(gpu.run(&g, &one), Err(Error::Input(_))));
    }
}

#[test]
fn verify_rejects_a_node_reading_a_value_defined_later() {
    let mut rng = Rng::new(204);
    let mut g = Graph::new("order");
    let x = g.add_input("x", vec![6], DType::F32);
    let op = dense_op(&mut g, &mut rng, "dense", 6, 4, Activation::Linear);
    let h = add1(&mut g, "dense", "Dense", op, x);
    let y = add1(
        &mut g,
        "act",
        "Activation",
        Op::Activation(Activation::Tanh),
        h,
    );
    g.add_output("y", y);
    g.verify().unwrap();

    let mut swapped = g.clone();
    swapped.nodes.swap(0, 1);
    let err = swapped.verify().unwrap_err().to_string();
    assert!(
        err.contains("node 'act' reads value") && err.contains("before it is computed"),
        "{err}"
    );
    // The CPU path refuses it too, without panicking.
    let input = float_input(&mut rng, 2, &[6], 1.0);
    assert!(wgnn::cpu::run(&swapped, std::slice::from_ref(&input)).is_err());

    let mut twice = g.clone();
    let again = twice.nodes[1].clone();
    twice.nodes.push(again);
    let err = twice.verify().unwrap_err().to_string();
    assert!(err.contains("written twice"), "{err}");

    let mut orphan = g.clone();
    orphan.nodes.pop();
    let err = orphan.verify().unwrap_err().to_string();
    assert!(err.contains("output 'y' is never computed"), "{err}");
}

#[test]
fn a_shape_rule_failure_in_add_node_is_an_error_and_adds_nothing() {
    let mut rng = Rng::new(205);
    let mut g = Graph::new("shapes");
    let x = g.add_input("x", vec![5], DType::F32);
    let (values, nodes) = (g.values.len(), g.nodes.len());

    // A Dense whose kernel wants 7 features on a 5-feature input.
    let op = dense_op(&mut g, &mut rng, "dense", 7, 3, Activation::Linear);
    let err = g.add_node("dense", "Dense", op, &[x], None).unwrap_err();
    assert!(
        err.contains("does not end in the kernel's 7 features"),
        "{err}"
    );
    assert_eq!((g.values.len(), g.nodes.len()), (values, nodes));

    // A kernel whose shape disagrees with the op's attributes names the weight.
    let kernel = g.params.add("bad/kernel", rng.array(&[5, 4], 1.0), true);
    let op = Op::Dense(Dense {
        units: 3,
        in_features: 5,
        kernel,
        bias: None,
        activation: Activation::Linear,
    });
    let err = g.add_node("bad", "Dense", op, &[x], None).unwrap_err();
    assert!(
        err.contains("weight 'bad/kernel' has shape [5, 4]"),
        "{err}"
    );

    // Token ids where floats are expected, a float value given as a mask, a missing value.
    let err = g
        .add_node("emb", "Embedding", Op::PaddingMask, &[x], None)
        .unwrap_err();
    assert!(
        err.contains("expects token ids input, got float32"),
        "{err}"
    );
    let relu = Op::Activation(Activation::RELU);
    let err = g
        .add_node("r", "ReLU", relu.clone(), &[x], Some(x))
        .unwrap_err();
    assert!(err.contains("is not a mask"), "{err}");
    let err = g.add_node("r", "ReLU", relu, &[42], None).unwrap_err();
    assert!(err.contains("does not exist"), "{err}");
    assert_eq!((g.values.len(), g.nodes.len()), (values, nodes));
}

#[test]
fn a_shape_rule_failure_while_loading_names_the_layer() {
    // Rescaling with 3 scale factors on 5 channels: only the op's shape rule can tell.
    let config = serde_json::json!({
        "module": "keras", "class_name": "Sequential", "registered_name": null,
        "config": {
            "name": "sequential",
            "layers": [
                {"module": "keras.layers", "class_name": "InputLayer", "registered_name": null,
                 "config": {"batch_shape": [null, 4, 5], "dtype": "float32", "name": "input_layer"}},
                {"module": "keras.layers", "class_name": "Rescaling", "registered_name": null,
                 "config": {"name": "rescaling", "dtype": "float32", "scale": [1.0, 2.0, 3.0], "offset": 0.0}}
            ]
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad_rescaling.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let err = wgnn::Model::load_with_weight_arrays(&path, Vec::new())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("layer 'rescaling' (Rescaling)")
            && err.contains("scale has 3 values; expected 1 or one per channel (5)"),
        "{err}"
    );
}

fn zip_names(zip: &zip::ZipArchive<std::fs::File>) -> Vec<String> {
    zip.file_names()
        .map(|n| n.expect("entry names are UTF-8").into_owned())
        .collect()
}

#[test]
fn write_npz_round_trips_every_named_output() {
    let mut rng = Rng::new(206);
    let a = rng.array(&[3, 2], 1.0);
    let b = rng.array(&[3, 7, 4], 5.0);
    let scalar_rows = rng.array(&[1], 1.0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.npz");
    let arrays = [("reg", &a), ("lstm:1", &b), ("tiny", &scalar_rows)];
    wgnn::npy::write_npz(&path, &arrays).unwrap();

    let file = std::fs::File::open(&path).unwrap();
    let mut zip = zip::ZipArchive::new(file).unwrap();
    let names: Vec<String> = zip_names(&zip);
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, ["lstm:1.npy", "reg.npy", "tiny.npy"]);
    for (name, expected) in arrays {
        let mut bytes = Vec::new();
        zip.by_name(&format!("{name}.npy"))
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
        let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
        assert_eq!(shape, expected.shape(), "{name}");
        let values: Vec<f32> = npy.into_vec().unwrap();
        assert_eq!(
            values,
            expected.iter().copied().collect::<Vec<_>>(),
            "{name}: values must survive bit for bit"
        );
        // wgnn's own reader agrees.
        let back = wgnn::npy::parse(&bytes).unwrap().into_f32();
        assert_eq!(&back, expected, "{name}");
    }
    // Rewriting replaces the file whole.
    wgnn::npy::write_npz(&path, &[("only", &a)]).unwrap();
    let zip = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
    assert_eq!(zip_names(&zip), ["only.npy"]);
}
