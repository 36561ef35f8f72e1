//! The GPU runtime around the kernels: plan caching, transparent batch splitting under a buffer
//! limit, clear errors for models that cannot fit, adapter selection and plan printing.
//!
//! Without a GPU adapter these tests fail when env `CI` is set and print a note otherwise.

mod common;
mod gpu_support;

use gpu_support::*;
use ndarray::ArrayD;
use wgnn::gpu::{describe_plan, is_no_adapter, list_adapters, GpuRuntime, LimitOverrides};
use wgnn::graph::*;
use wgnn::{Error, PreparedInput};

fn two_layer_mlp(rng: &mut Rng) -> Graph {
    Chain::float(&[40])
        .named("mlp")
        .dense(rng, "hidden", 30, Activation::RELU)
        .dense(rng, "probs", 7, Activation::Softmax)
        .build()
}

/// The only output of a single-input model run on the GPU.
fn run1(gpu: &GpuRuntime, graph: &Graph, input: &PreparedInput) -> wgnn::Result<ArrayD<f32>> {
    let mut outs = gpu.run(graph, std::slice::from_ref(input))?;
    assert_eq!(outs.len(), 1);
    Ok(outs.remove(0))
}

#[test]
fn runtime_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<GpuRuntime>();
}

#[test]
fn repeated_predictions_reuse_one_plan_per_batch_size() {
    let mut rng = Rng::new(100);
    let graph = two_layer_mlp(&mut rng);
    let Some(gpu) = runtime(&graph) else { return };
    let input = float_input(&mut rng, 5, &[40], 1.0);
    let first = run1(&gpu, &graph, &input).unwrap();
    let second = run1(&gpu, &graph, &input).unwrap();
    assert_eq!(
        first, second,
        "the same input must give bit-identical output"
    );
    check_with(
        "mlp batch 3",
        &gpu,
        &graph,
        &float_input(&mut rng, 3, &[40], 1.0),
    );
    assert_eq!(gpu.cached_batch_sizes(), vec![3, 5]);
}

#[test]
fn batches_beyond_the_buffer_limit_are_split_transparently() {
    let mut rng = Rng::new(101);
    let graph = small_cnn(&mut rng);
    // conv1's output is the largest per-item buffer: 12*12*8 floats = 4608 bytes.
    let limit = 4 * 4608 + 100;
    let Some(_) = runtime(&graph) else { return };
    let gpu = GpuRuntime::with_max_buffer_bytes(&graph, None, limit).unwrap();
    assert_eq!(gpu.max_batch_per_submit(), 4);
    let input = PreparedInput::Float(rng.array(&[33, 12, 12, 3], 255.0).mapv(f32::abs));
    check_with(
        "small cnn batch 33 in sub-batches of 4",
        &gpu,
        &graph,
        &input,
    );
    // 8 full sub-batches of 4 and one of 1.
    assert_eq!(gpu.cached_batch_sizes(), vec![1, 4]);
    let plan = gpu.describe_plan(&graph, 33).unwrap();
    assert!(plan.contains("as 9 submits of up to 4 items"), "{plan}");
}

#[test]
fn recurrent_batches_split_too() {
    let mut rng = Rng::new(102);
    let graph = small_bilstm(&mut rng, 20);
    let Some(_) = runtime(&graph) else { return };
    // The Bi-LSTM input projection holds 20 steps x 2 directions x 4 gates x 12 units per item.
    let per_item = 4 * 20 * 2 * 4 * 12;
    let gpu = GpuRuntime::with_max_buffer_bytes(&graph, None, 5 * per_item).unwrap();
    assert_eq!(gpu.max_batch_per_submit(), 5);
    let ids = padded_ids(&mut rng, 17, 20, 100);
    check_with("bilstm batch 17 in sub-batches of 5", &gpu, &graph, &ids);
}

#[test]
fn dispatches_fold_into_3d_grids_under_a_small_per_dimension_limit() {
    let mut rng = Rng::new(110);
    let cnn = small_cnn(&mut rng);
    let Some(_) = runtime(&cnn) else { return };
    let overrides = LimitOverrides {
        max_workgroups_per_dimension: Some(4),
        ..LimitOverrides::default()
    };
    let gpu = GpuRuntime::with_limits(&cnn, None, overrides).unwrap();
    // At most 4*4*4 = 64 workgroups per dispatch; the rescale pass needs 7 per item.
    assert_eq!(gpu.max_batch_per_submit(), 9);
    let plan = gpu.describe_plan(&cnn, 9).unwrap();
    assert!(plan.contains("as [4, 4, 4]"), "{plan}");
    let input = PreparedInput::Float(rng.array(&[33, 12, 12, 3], 255.0).mapv(f32::abs));
    check_with("small cnn on folded grids", &gpu, &cnn, &input);

    let bilstm = small_bilstm(&mut rng, 20);
    let gpu = GpuRuntime::with_limits(&bilstm, None, overrides).unwrap();
    let ids = padded_ids(&mut rng, 17, 20, 100);
    check_with("bilstm on folded grids", &gpu, &bilstm, &ids);
}

/// Under a cap on one invocation's loop iterations (llvmpipe's, or here a small forced one) a
/// recurrent time loop runs as several dispatches of consecutive steps, handing h, c and the
/// previous output over through storage: odd step counts (a split starting at an odd step reads
/// the other ping-pong plane), both directions, masks, every cell type.
#[test]
fn recurrent_time_loops_split_under_a_loop_iteration_cap_match_cpu() {
    let mut rng = Rng::new(111);
    let overrides = LimitOverrides {
        loop_iterations: Some(300),
        ..LimitOverrides::default()
    };
    let bilstm = small_bilstm(&mut rng, 20);
    let Some(_) = runtime(&bilstm) else { return };
    let gpu = GpuRuntime::with_limits(&bilstm, None, overrides).unwrap();
    let plan = gpu.describe_plan(&bilstm, 17).unwrap();
    assert!(
        plan.contains("(the adapter's loop-iteration cap)"),
        "{plan}"
    );
    assert!(plan.contains(": steps 0.."), "{plan}");
    let ids = padded_ids(&mut rng, 17, 20, 100);
    check_with("bilstm in split time loops", &gpu, &bilstm, &ids);

    for kind in [
        CellKind::SimpleRnn,
        CellKind::Lstm,
        CellKind::Gru { reset_after: true },
        CellKind::Gru { reset_after: false },
    ] {
        let mut spec = RnnSpec::new(kind, 23, 5, 21);
        spec.return_sequences = true;
        spec.go_backwards = kind == CellKind::SimpleRnn;
        let graph = Chain::float(&[spec.timesteps, spec.features])
            .rnn(&mut rng, "rnn", &spec)
            .build();
        let gpu = GpuRuntime::with_limits(&graph, None, overrides).unwrap();
        let plan = gpu.describe_plan(&graph, 13).unwrap();
        let splits = plan.matches("rnn_sequence").count();
        assert!(
            splits >= 3,
            "{} steps in {splits} dispatches:\n{plan}",
            spec.timesteps
        );
        let input = float_input(&mut rng, 13, &[spec.timesteps, spec.features], 1.0);
        check_with(
            &format!("{} in split time loops", spec.describe()),
            &gpu,
            &graph,
            &input,
        );
    }

    // One step that alone outruns the cap is refused, naming the layer.
    let spec = RnnSpec::new(CellKind::Lstm, 4, 3, 200);
    let graph = Chain::float(&[spec.timesteps, spec.features])
        .rnn(&mut rng, "rnn", &spec)
        .build();
    let err = match GpuRuntime::with_limits(&graph, None, overrides)
        .and_then(|gpu| gpu.describe_plan(&graph, 1))
    {
        Ok(plan) => panic!("200 units cannot step under a 300-iteration cap:\n{plan}"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("layer 'rnn'") && err.contains("loop iterations"),
        "{err}"
    );
}

#[test]
fn a_model_that_cannot_fit_one_item_names_the_layer_and_size() {
    let mut rng = Rng::new(103);
    let graph = small_cnn(&mut rng);
    let Some(_) = runtime(&graph) else { return };
    let err = match GpuRuntime::with_max_buffer_bytes(&graph, None, 2000) {
        Ok(_) => panic!("a 2000-byte buffer limit cannot hold a 12x12x3 input"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("the model input") || err.contains("layer '"),
        "{err}"
    );
    assert!(err.contains("KiB") && err.contains("per buffer"), "{err}");
    let err = match GpuRuntime::with_max_buffer_bytes(&graph, None, 4000) {
        Ok(_) => panic!("conv1's 4.5 KiB output cannot fit a 4000-byte limit"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("layer 'conv1' (Conv2D): output buffer needs 4.5 KiB"),
        "{err}"
    );
}

#[test]
fn an_empty_batch_gives_an_empty_output() {
    let mut rng = Rng::new(104);
    let graph = two_layer_mlp(&mut rng);
    let Some(gpu) = runtime(&graph) else { return };
    let out = run1(
        &gpu,
        &graph,
        &PreparedInput::Float(ArrayD::zeros(ndarray::IxDyn(&[0, 40]))),
    )
    .unwrap();
    assert_eq!(out.shape(), &[0, 7]);
}

#[test]
fn input_of_the_wrong_kind_or_shape_is_an_input_error() {
    let mut rng = Rng::new(105);
    let graph = two_layer_mlp(&mut rng);
    let Some(gpu) = runtime(&graph) else { return };
    let wrong_shape = float_input(&mut rng, 2, &[41], 1.0);
    assert!(matches!(
        run1(&gpu, &graph, &wrong_shape),
        Err(Error::Input(_))
    ));
    let ids = PreparedInput::Ids(ndarray::Array2::zeros((2, 40)));
    assert!(matches!(run1(&gpu, &graph, &ids), Err(Error::Input(_))));
}

#[test]
fn runs_from_several_threads_share_one_runtime() {
    let mut rng = Rng::new(106);
    let graph = two_layer_mlp(&mut rng);
    let Some(gpu) = runtime(&graph) else { return };
    let inputs: Vec<PreparedInput> = (1..=4)
        .map(|b| float_input(&mut rng, b, &[40], 1.0))
        .collect();
    std::thread::scope(|scope| {
        for (i, input) in inputs.iter().enumerate() {
            let (gpu, graph) = (&gpu, &graph);
            scope.spawn(move || check_with(&format!("thread {i}"), gpu, graph, input));
        }
    });
}

#[test]
fn adapters_are_listed_and_named() {
    let mut rng = Rng::new(107);
    let graph = two_layer_mlp(&mut rng);
    let Some(gpu) = runtime(&graph) else { return };
    let adapters = list_adapters();
    assert!(!adapters.is_empty());
    let name = gpu.adapter_name();
    assert!(
        adapters.iter().any(|a| name.starts_with(&a.name)),
        "{name} is not among {adapters:?}"
    );
    let line = adapters[0].to_string();
    assert!(line.contains("max storage binding"), "{line}");
    // Choosing by a case-insensitive substring of the name.
    let wanted = adapters[0].name.to_uppercase();
    let chosen = GpuRuntime::new(&graph, Some(&wanted[..wanted.len().min(6)])).unwrap();
    assert!(chosen
        .adapter_name()
        .starts_with(&adapters[0].name[..wanted.len().min(6)]));
}

#[test]
fn an_unknown_adapter_name_is_a_no_adapter_error_listing_the_others() {
    let mut rng = Rng::new(108);
    let graph = two_layer_mlp(&mut rng);
    let Some(_) = runtime(&graph) else { return };
    let err = match GpuRuntime::new(&graph, Some("no-such-adapter-42")) {
        Ok(_) => panic!("no adapter is called no-such-adapter-42"),
        Err(Error::Gpu(msg)) => msg,
        Err(e) => panic!("expected a GPU error, got {e}"),
    };
    assert!(is_no_adapter(&err), "{err}");
    assert!(
        err.contains("no-such-adapter-42") && err.contains("available: "),
        "{err}"
    );
}

#[test]
fn only_the_no_adapter_message_counts_as_no_adapter() {
    assert!(is_no_adapter(
        "no GPU adapter found with compute shader support"
    ));
    assert!(!is_no_adapter(
        "GPU validation error while running a batch of 2: ..."
    ));
    assert!(!is_no_adapter("the GPU device was lost on llvmpipe: ..."));
}

#[test]
fn plans_print_kernels_workgroups_buffers_and_memory() {
    let mut rng = Rng::new(109);
    let cnn = small_cnn(&mut rng);
    let text = describe_plan(&cnn, 2, None).unwrap();
    println!("{text}");
    for needle in [
        "GPU plan for model 'small_cnn', batch 2",
        "[1] conv1 (Conv2D) rescaling [12, 12, 3] -> [12, 12, 8]",
        "conv2d",
        "rescale",
        "pool2d",
        "matmul",
        "softmax",
        "a=input:input b=conv1.kernel bias=conv1.bias c=slot0",
        "[5] flatten (Flatten) pool2 [2, 2, 16] -> [64]\n      no kernel",
        "total GPU memory:",
    ] {
        assert!(text.contains(needle), "plan lacks '{needle}':\n{text}");
    }
    let bilstm = small_bilstm(&mut rng, 20);
    let text = describe_plan(&bilstm, 4, None).unwrap();
    println!("{text}");
    for needle in [
        "embedding",
        "rnn_sequence",
        "clear",
        "LSTM 12 units x 2 direction(s), 20 steps in one loop, 4 sequence(s) per workgroup, \
         masked by token id 0, sequences",
        "u32 token ids [4, 20]",
    ] {
        assert!(text.contains(needle), "plan lacks '{needle}':\n{text}");
    }
}

#[test]
fn profiling_times_every_dispatch_by_layer_and_leaves_results_unchanged() {
    let mut rng = Rng::new(140);
    let graph = small_cnn(&mut rng);
    let Some(gpu) = runtime(&graph) else { return };
    let input = float_input(&mut rng, 6, &[12, 12, 3], 255.0);
    let before = run1(&gpu, &graph, &input).unwrap();
    let profile = gpu
        .profile(&graph, std::slice::from_ref(&input))
        .expect("lavapipe and real GPUs have timestamp queries");
    // One entry per dispatch op of the batch-6 plan, as the plan printout counts them.
    let plan = gpu.describe_plan(&graph, 6).unwrap();
    let dispatches: usize = plan
        .lines()
        .find_map(|l| {
            l.split('(')
                .nth(1)?
                .strip_suffix(" dispatches in one submit)")
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no dispatch count in the plan:\n{plan}"));
    assert_eq!(profile.len(), dispatches, "{profile:?}");
    for d in &profile {
        assert!(d.ms.is_finite() && d.ms >= 0.0, "{d:?}");
        assert_eq!(d.batch, 6);
        assert!(
            graph.nodes.iter().any(|n| n.name == d.layer),
            "{d:?} names no layer"
        );
    }
    // Every layer that computes something at inference (all of small_cnn's but the Flatten
    // reshape and the Dropout) has a dispatch.
    for node in graph
        .nodes
        .iter()
        .filter(|n| !matches!(n.op, Op::Reshape { .. } | Op::Identity))
    {
        assert!(
            profile.iter().any(|d| d.layer == node.name),
            "layer '{}' has no timed dispatch: {profile:?}",
            node.name
        );
    }
    assert!(profile.iter().map(|d| d.ms).sum::<f64>() > 0.0);
    assert_eq!(run1(&gpu, &graph, &input).unwrap(), before);
}
