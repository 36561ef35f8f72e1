//! Convolution backward on the GPU (shaders/conv_grad.wgsl): the input gradient and the kernel
//! gradient as implicit GEMMs over the forward's (D, H, W) window geometry, and bias gradients
//! as column sums. Conv1D/2D/3D with groups, strides, dilation and same / causal padding all
//! take the same kernels. Every output is overwritten, never accumulated into.

// Called by the training plan; until it lands only the tests do.

use crate::error::{Error, Result};
use crate::graph::{Activation, Conv, ConvTranspose, DepthwiseConv, Node, Window};

use super::super::kernels::{
    Kernel, GEMM_K_SLICE, GEMM_TILE, LINEAR_THREADS, SPLIT_K_MIN_DEPTH, SPLIT_K_TARGET_WORKGROUPS,
};
use super::super::plan::BufRef;
use super::{linear_workgroups, word, Emit};

/// The kernel gradient's GEMM splits K until about this many workgroups run: its K (batch ×
/// output pixels) is long and its output (the kernel) small, so unsplit it would leave most of
/// a GPU idle.
const KERNEL_GRAD_TARGET_WORKGROUPS: usize = 2 * SPLIT_K_TARGET_WORKGROUPS;
/// Column sums read at least this many rows per partial, so the partials stay few.
const BIAS_MIN_CHUNK_ROWS: usize = 64;

/// A refusal or a limit, naming the layer and the field.
pub(super) fn layer_error(layer: &Node, field: &str, message: impl std::fmt::Display) -> Error {
    Error::Gpu(format!(
        "layer '{}' ({}): {field}: {message}",
        layer.name, layer.class
    ))
}

/// Checks that `floats` f32s fit one binding and 32-bit indices.
pub(super) fn check_buffer(e: &dyn Emit, layer: &Node, what: &str, floats: usize) -> Result<()> {
    word(layer, what, floats)?;
    let bytes = 4 * floats as u64;
    let max = e.limits().max_binding_bytes;
    if bytes > max {
        return Err(layer_error(
            layer,
            what,
            format!("{bytes} bytes exceed the adapter's {max}-byte storage binding"),
        ));
    }
    Ok(())
}

fn linear_only(layer: &Node, activation: Activation) -> Result<()> {
    if activation == Activation::Linear {
        return Ok(());
    }
    Err(layer_error(
        layer,
        "activation",
        "the backward of a convolution with a fused activation is not supported on the GPU \
         (the training graph runs the activation as its own node)",
    ))
}

/// conv_grad.wgsl's `ConvGradParams`: the GEMM (m, n, k, groups, k_chunk) then the geometry.
fn conv_params(layer: &Node, conv: &Conv, gemm: [usize; 5]) -> Result<Vec<u32>> {
    let w = &conv.window;
    let groups = conv.groups.max(1);
    let (c, f) = (conv.in_channels, conv.filters);
    let values = gemm
        .into_iter()
        .chain([c, f, c / groups, f / groups])
        .chain(w.input)
        .chain(w.output)
        .chain(w.kernel)
        .chain(w.strides)
        .chain(w.pad_before)
        .chain(w.dilation)
        .chain([0]);
    values.map(|v| word(layer, "geometry", v)).collect()
}

/// Words of `ConvGradParams` for the plain kernels (grad_reduce, bias_grad): m, n, k, k_chunk.
fn plain_params(layer: &Node, m: usize, n: usize, k: usize, k_chunk: usize) -> Result<Vec<u32>> {
    let mut words = vec![0u32; 28];
    words[0] = word(layer, "rows", m)?;
    words[1] = word(layer, "columns", n)?;
    words[2] = word(layer, "splits", k)?;
    words[4] = word(layer, "chunk", k_chunk)?;
    Ok(words)
}

/// Convolution backward. `x` (N, spatial..., C) is the forward's input, `kernel` the weights
/// (k..., C / groups, F) as Keras stores them, `dy` (N, out spatial..., F) the output's gradient
/// (of the linear convolution: a fused activation must have been split off). Writes, for each
/// one given, `dx` (x's shape), `dkernel` (the kernel's shape) and `dbias` (F). The kernel
/// gradient may take a scratch buffer for its split-K partials, released at the end.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_backward(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    conv: &Conv,
    batch: usize,
    x: BufRef,
    kernel: BufRef,
    dy: BufRef,
    dx: Option<BufRef>,
    dkernel: Option<BufRef>,
    dbias: Option<BufRef>,
) -> Result<()> {
    linear_only(layer, conv.activation)?;
    let w = &conv.window;
    let groups = conv.groups;
    let (c, f) = (conv.in_channels, conv.filters);
    if groups == 0 || !c.is_multiple_of(groups) || !f.is_multiple_of(groups) {
        return Err(layer_error(
            layer,
            "groups",
            format!("{groups} groups do not divide {c} channels and {f} filters"),
        ));
    }
    if w.strides.contains(&0) || w.dilation.contains(&0) {
        return Err(layer_error(layer, "strides", "a stride or dilation of 0"));
    }
    let (cg, fg) = (c / groups, f / groups);
    let in_pixels = batch * w.in_positions();
    let out_pixels = batch * w.out_positions();
    let kernel_rows = w.taps() * cg;
    check_buffer(e, layer, "x", in_pixels * c)?;
    check_buffer(e, layer, "dy", out_pixels * f)?;
    check_buffer(e, layer, "kernel", kernel_rows * f)?;
    let text = w.text();

    if let Some(dx) = dx {
        // One GEMM per group: rows = input pixels, columns = the group's channels,
        // K = (tap, filter of the group).
        let (m, n, k) = (in_pixels, cg, w.taps() * fg);
        if m > 0 && n > 0 {
            let params = conv_params(layer, conv, [m, n, k, groups, 0])?;
            e.dispatch(
                layer,
                node,
                Kernel::ConvGradInput,
                vec![dy, kernel, dx],
                params,
                (gemm_tiles(m, n) * groups) as u64,
                format!("dx of {text}: {m}x{n}x{k}, {groups} group(s)"),
            )?;
        }
    }

    if let Some(dkernel) = dkernel {
        // rows = (tap, channel of the group), columns = the group's filters, K = output pixels.
        let (m, n, k) = (kernel_rows, fg, out_pixels);
        if m > 0 && n > 0 {
            let tiles = gemm_tiles(m, n) * groups;
            let max_floats = (e.limits().max_binding_bytes / 4) as usize;
            let (k_chunk, splits) = kernel_grad_split(tiles, k, m * f, max_floats);
            let params = conv_params(layer, conv, [m, n, k, groups, k_chunk])?;
            let detail = format!("dkernel of {text}: {m}x{n}x{k}, {groups} group(s)");
            if splits <= 1 {
                e.dispatch(
                    layer,
                    node,
                    Kernel::ConvGradWeights,
                    vec![x, dy, dkernel],
                    params,
                    tiles as u64,
                    detail,
                )?;
            } else {
                check_buffer(e, layer, "kernel gradient partials", splits * m * f)?;
                let partials = e.scratch(node, "kernel gradient partials", splits * m * f);
                e.dispatch(
                    layer,
                    node,
                    Kernel::ConvGradWeights,
                    vec![x, dy, partials],
                    params,
                    (tiles * splits) as u64,
                    format!("{detail}, K split {splits} ways"),
                )?;
                let outputs = m * f;
                e.dispatch(
                    layer,
                    node,
                    Kernel::GradReduce,
                    vec![partials, BufRef::Dummy, dkernel],
                    plain_params(layer, 0, outputs, splits, 0)?,
                    linear_workgroups(outputs, LINEAR_THREADS),
                    format!("dkernel of {text}: sum of {splits} partials"),
                )?;
                e.release(partials);
            }
        }
    }

    if let Some(dbias) = dbias {
        bias_grad(e, layer, node, dy, out_pixels, f, dbias)?;
    }
    Ok(())
}

/// DepthwiseConv1D/2D backward, as the grouped convolution it is: C groups of one channel and
/// M filters each. Keras's depthwise kernel (k..., C, M) is that convolution's kernel
/// (k..., 1, C * M) value for value, and dy's channel c * M + m is its filter c * M + m, so the
/// buffers are the same. Correct but not fast: each group fills a 64-wide GEMM tile with M
/// (often 1) columns.
#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise_backward(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    conv: &DepthwiseConv,
    batch: usize,
    x: BufRef,
    kernel: BufRef,
    dy: BufRef,
    dx: Option<BufRef>,
    dkernel: Option<BufRef>,
    dbias: Option<BufRef>,
) -> Result<()> {
    let grouped = Conv {
        filters: conv.out_channels(),
        window: conv.window,
        in_channels: conv.channels,
        groups: conv.channels,
        kernel: conv.kernel,
        bias: conv.bias,
        activation: conv.activation,
    };
    conv_backward(
        e, layer, node, &grouped, batch, x, kernel, dy, dx, dkernel, dbias,
    )
}

/// Conv1D/2D/3DTranspose backward. A transposed convolution is the adjoint of the convolution
/// whose input is its output (`transposed_conv`), with its kernel (k..., F, C) as that
/// convolution's kernel (k..., C_in = F, filters = C). So `dx` (x's shape) is that
/// convolution's forward on `dy`, `dkernel` its kernel gradient with x and dy in each other's
/// place, and `dbias` (F) the column sums of dy. Buffers as in [`conv_backward`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_transpose_backward(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    conv: &ConvTranspose,
    batch: usize,
    x: BufRef,
    kernel: BufRef,
    dy: BufRef,
    dx: Option<BufRef>,
    dkernel: Option<BufRef>,
    dbias: Option<BufRef>,
) -> Result<()> {
    linear_only(layer, conv.activation)?;
    let adjoint = transposed_conv(conv);
    if let Some(dx) = dx {
        let w = &adjoint.window;
        check_buffer(e, layer, "dy", batch * w.in_positions() * conv.filters)?;
        check_buffer(e, layer, "x", batch * w.out_positions() * conv.in_channels)?;
        let (m, n, k) = (
            batch * w.out_positions(),
            conv.in_channels,
            w.taps() * conv.filters,
        );
        if m > 0 && n > 0 {
            e.dispatch(
                layer,
                node,
                Kernel::ConvTransposeGradInput,
                vec![dy, kernel, dx],
                conv_params(layer, &adjoint, [m, n, k, 1, 0])?,
                gemm_tiles(m, n) as u64,
                format!("dx of transposed {}: {m}x{n}x{k}", w.text()),
            )?;
        }
    }
    conv_backward(
        e, layer, node, &adjoint, batch, dy, kernel, x, None, dkernel, None,
    )?;
    if let Some(dbias) = dbias {
        let rows = batch * conv.output.iter().product::<usize>();
        bias_grad(e, layer, node, dy, rows, conv.filters, dbias)?;
    }
    Ok(())
}

/// The convolution a transposed convolution is the adjoint of: its input is the transposed
/// op's output, its output positions the transposed op's input positions.
fn transposed_conv(c: &ConvTranspose) -> Conv {
    Conv {
        filters: c.in_channels,
        window: Window {
            rank: c.rank,
            kernel: c.kernel_size,
            strides: c.strides,
            dilation: c.dilation,
            padding: c.padding,
            input: c.output,
            output: c.input,
            pad_before: c.pad_before,
        },
        in_channels: c.filters,
        groups: 1,
        kernel: c.kernel,
        bias: None,
        activation: c.activation,
    }
}

fn gemm_tiles(m: usize, n: usize) -> usize {
    let tile = GEMM_TILE as usize;
    m.div_ceil(tile) * n.div_ceil(tile)
}

/// (k_chunk, splits) for the kernel gradient's GEMM of `tiles` output tiles over K = `k`, whose
/// partials take `floats_per_split` each: (0, 1) when unsplit. Splits are at least
/// `SPLIT_K_MIN_DEPTH` deep, a whole number of K slices, and their partials fit one binding.
fn kernel_grad_split(
    tiles: usize,
    k: usize,
    floats_per_split: usize,
    max_floats: usize,
) -> (usize, usize) {
    let wanted = KERNEL_GRAD_TARGET_WORKGROUPS.div_ceil(tiles.max(1));
    let splits = wanted
        .min(k / SPLIT_K_MIN_DEPTH)
        .min(max_floats / floats_per_split.max(1));
    if splits <= 1 {
        return (0, 1);
    }
    let k_chunk = k.div_ceil(splits).next_multiple_of(GEMM_K_SLICE);
    (k_chunk, k.div_ceil(k_chunk))
}

/// Column sums of a (rows, cols) matrix into cols values: bias gradients (also used by Dense).
/// Sums chunks of rows in parallel, then the chunks in order when there is more than one (a
/// scratch buffer, released at the end).
pub(crate) fn bias_grad(
    e: &mut dyn Emit,
    layer: &Node,
    node: usize,
    dy: BufRef,
    rows: usize,
    cols: usize,
    db: BufRef,
) -> Result<()> {
    if cols == 0 {
        return Ok(());
    }
    check_buffer(e, layer, "dy", rows * cols)?;
    // About √rows rows per chunk, so both passes are short.
    let chunk_rows = ((rows as f64).sqrt().ceil() as usize).max(BIAS_MIN_CHUNK_ROWS);
    let chunks = rows.div_ceil(chunk_rows).max(1);
    let params = plain_params(layer, rows, cols, 0, chunk_rows)?;
    let detail = format!("bias gradient: column sums of {rows}x{cols}");
    if chunks == 1 {
        return e.dispatch(
            layer,
            node,
            Kernel::BiasGrad,
            vec![dy, BufRef::Dummy, db],
            params,
            linear_workgroups(cols, LINEAR_THREADS),
            detail,
        );
    }
    let partials = e.scratch(node, "bias gradient partials", chunks * cols);
    e.dispatch(
        layer,
        node,
        Kernel::BiasGrad,
        vec![dy, BufRef::Dummy, partials],
        params,
        linear_workgroups(chunks * cols, LINEAR_THREADS),
        format!("{detail} in {chunks} chunks"),
    )?;
    e.dispatch(
        layer,
        node,
        Kernel::GradReduce,
        vec![partials, BufRef::Dummy, db],
        plain_params(layer, 0, cols, chunks, 0)?,
        linear_workgroups(cols, LINEAR_THREADS),
        format!("bias gradient: sum of {chunks} chunks"),
    )?;
    e.release(partials);
    Ok(())
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use ndarray::{ArrayD, IxDyn};

    use super::super::test_emit::TestEmit;
    use super::*;
    use crate::cpu::grad::check::uniform;
    use crate::cpu::grad::testing::{assert_close, one_node, run_backward};
    use crate::gpu::testing::{runner, KernelRunner};
    use crate::graph::{to_dhw, transpose_axis, Graph, Op, Padding, Window};

    /// What the GPU writes into an output buffer it must overwrite.
    const STALE: f32 = 123.0;

    struct Case {
        item: Vec<usize>,
        kernel: Vec<usize>,
        strides: Vec<usize>,
        dilation: Vec<usize>,
        padding: Padding,
        filters: usize,
        groups: usize,
        bias: bool,
        batch: usize,
    }

    fn case(item: &[usize], kernel: &[usize], strides: &[usize], padding: Padding) -> Case {
        Case {
            item: item.to_vec(),
            kernel: kernel.to_vec(),
            strides: strides.to_vec(),
            dilation: vec![1; kernel.len()],
            padding,
            filters: 4,
            groups: 1,
            bias: true,
            batch: 3,
        }
    }

    impl Case {
        fn filters(mut self, f: usize) -> Self {
            self.filters = f;
            self
        }
        fn groups(mut self, g: usize) -> Self {
            self.groups = g;
            self
        }
        fn dilation(mut self, d: &[usize]) -> Self {
            self.dilation = d.to_vec();
            self
        }
        fn no_bias(mut self) -> Self {
            self.bias = false;
            self
        }
        fn batch(mut self, n: usize) -> Self {
            self.batch = n;
            self
        }

        fn graph(&self) -> Graph {
            let r = self.kernel.len();
            let cin = self.item[r];
            let window = Window::new(
                &self.kernel,
                &self.strides,
                &self.dilation,
                self.padding,
                &self.item[..r],
            );
            one_node(&self.item, |p| {
                let mut kshape = self.kernel.clone();
                kshape.extend([cin / self.groups, self.filters]);
                Op::Conv(Conv {
                    filters: self.filters,
                    window,
                    in_channels: cin,
                    groups: self.groups,
                    kernel: p.add("n/kernel", uniform(&kshape, 1, 0.5), true),
                    bias: self
                        .bias
                        .then(|| p.add("n/bias", uniform(&[self.filters], 2, 0.5), true)),
                    activation: Activation::Linear,
                })
            })
        }
    }

    fn conv_of(g: &Graph) -> &Conv {
        match &g.nodes[0].op {
            Op::Conv(c) => c,
            other => panic!("not a conv: {}", other.name()),
        }
    }

    fn shaped(v: &[f32], shape: &[usize]) -> ArrayD<f32> {
        ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).expect("shape")
    }

    /// Runs `c` on the CPU and the GPU and compares dx, dkernel and dbias; `which` picks the
    /// outputs the GPU computes (dx, dkernel, dbias), the others must stay untouched.
    fn check(r: &mut KernelRunner, name: &str, c: &Case, which: [bool; 3]) {
        let g = c.graph();
        let conv = conv_of(&g);
        let mut x_shape = vec![c.batch];
        x_shape.extend(&c.item);
        let mut y_shape = vec![c.batch];
        y_shape.extend(&g.value(g.nodes[0].outputs[0]).shape);
        let x = uniform(&x_shape, 3, 1.0);
        let dy = uniform(&y_shape, 4, 1.0);
        let (dx, grads) = run_backward(&g, &x, &dy, true, None);
        let dx = dx.expect("dx");
        let dk = grads.get(conv.kernel).expect("dkernel").clone();
        let kernel = g.params.slice(conv.kernel).to_vec();
        let f = c.filters;
        let buffers = vec![
            x.iter().copied().collect::<Vec<_>>(),
            kernel,
            dy.iter().copied().collect(),
            vec![STALE; dx.len()],
            vec![STALE; dk.len()],
            vec![STALE; f],
        ];
        let mut emit = TestEmit::new(r.limits, buffers.len());
        let out = |i: usize, on: bool| on.then_some(BufRef::Input(i));
        conv_backward(
            &mut emit,
            &g.nodes[0],
            0,
            conv,
            c.batch,
            BufRef::Input(0),
            BufRef::Input(1),
            BufRef::Input(2),
            out(3, which[0]),
            out(4, which[1]),
            out(5, which[2] && c.bias),
        )
        .expect("lowering");
        let got = emit.run(r, &buffers).expect("GPU run");
        let untouched = |i: usize| assert!(got[i].iter().all(|&v| v == STALE), "{name}: {i}");
        if which[0] {
            assert_close(&format!("{name} dx"), &shaped(&got[3], dx.shape()), &dx);
        } else {
            untouched(3);
        }
        if which[1] {
            assert_close(
                &format!("{name} dkernel"),
                &shaped(&got[4], dk.shape()),
                &dk,
            );
        } else {
            untouched(4);
        }
        match conv.bias.filter(|_| which[2]) {
            Some(b) => {
                let db = grads.get(b).expect("dbias");
                assert_close(&format!("{name} dbias"), &shaped(&got[5], &[f]), db);
            }
            None => untouched(5),
        }
    }

    fn cases() -> Vec<Case> {
        use Padding::*;
        vec![
            case(&[5, 7, 3], &[3, 3], &[1, 1], Same).filters(10),
            // An even kernel: TensorFlow's same pads 1 before and 2 after.
            case(&[6, 5, 5], &[4, 2], &[1, 1], Same).batch(1).filters(3),
            // Stride larger than the kernel: some inputs reach no output.
            case(&[9, 8, 3], &[2, 2], &[3, 3], Valid).filters(5),
            case(&[8, 7, 3], &[3, 3], &[2, 2], Same).filters(6),
            case(&[7, 7, 6], &[3, 3], &[1, 1], Same)
                .dilation(&[2, 2])
                .groups(2)
                .batch(2),
            case(&[6, 5, 6], &[3, 3], &[2, 2], Same)
                .groups(3)
                .filters(6),
            case(&[5, 6, 5], &[3, 2], &[2, 1], Valid).no_bias().batch(1),
            // Conv1D: one-row images.
            case(&[11, 5], &[3], &[1], Causal).dilation(&[2]).filters(3),
            case(&[10, 4], &[4], &[3], Same).filters(2),
            // Conv3D, with dilation and groups.
            case(&[4, 5, 3, 2], &[2, 3, 2], &[1, 2, 1], Same)
                .filters(3)
                .batch(2),
            case(&[3, 4, 6, 4], &[2, 2, 2], &[1, 1, 2], Valid)
                .dilation(&[1, 2, 1])
                .groups(2)
                .filters(2),
            // 33 images: 660 input pixels (11 row tiles), K = 660 split in two uneven halves.
            case(&[4, 5, 2], &[3, 3], &[1, 1], Same)
                .filters(3)
                .batch(33),
            // More than one 64-wide tile of channels, filters and kernel rows.
            case(&[4, 4, 70], &[2, 2], &[1, 1], Valid)
                .filters(66)
                .batch(2),
        ]
    }

    #[test]
    fn conv_backward_matches_the_cpu() {
        let Some(mut r) = runner() else { return };
        for (i, c) in cases().iter().enumerate() {
            check(&mut r, &format!("case {i}"), c, [true; 3]);
        }
    }

    /// K = 3 x 16 x 16 output pixels: the kernel gradient splits K three ways and the bias
    /// gradient sums 12 chunks of rows.
    #[test]
    fn conv_backward_splits_k() {
        let c = case(&[16, 16, 3], &[3, 3], &[1, 1], Padding::Same).filters(10);
        let tiles = gemm_tiles(27, 10);
        assert_eq!(kernel_grad_split(tiles, 768, 270, usize::MAX), (256, 3));
        let Some(mut r) = runner() else { return };
        check(&mut r, "split", &c, [true; 3]);
    }

    #[test]
    fn outputs_not_asked_for_are_not_written() {
        let Some(mut r) = runner() else { return };
        let c = case(&[6, 5, 3], &[3, 3], &[2, 2], Padding::Same).filters(5);
        check(&mut r, "dx only", &c, [true, false, false]);
        check(&mut r, "dkernel only", &c, [false, true, false]);
        check(&mut r, "dbias only", &c, [false, false, true]);
    }

    #[test]
    fn split_k_choice() {
        // Enough tiles: no split. Short K: no split.
        assert_eq!(kernel_grad_split(512, 1 << 20, 64, usize::MAX), (0, 1));
        assert_eq!(kernel_grad_split(1, 300, 64, usize::MAX), (0, 1));
        // Capped by the binding size: at most 4 splits of 100 floats in 400.
        assert_eq!(kernel_grad_split(1, 1 << 20, 100, 400).1, 4);
        // Whole K slices, and every split non-empty.
        let (chunk, splits) = kernel_grad_split(3, 10_000, 64, usize::MAX);
        assert_eq!(chunk % GEMM_K_SLICE, 0);
        assert!((splits - 1) * chunk < 10_000 && splits * chunk >= 10_000);
    }

    #[test]
    fn bias_grad_matches_column_sums() {
        let Some(mut r) = runner() else { return };
        for (rows, cols) in [(5, 130), (1000, 7), (1, 1), (4097, 3)] {
            let dy = uniform(&[rows, cols], 6, 1.0);
            let expected = dy.sum_axis(ndarray::Axis(0)).into_dyn();
            let buffers = vec![dy.iter().copied().collect(), vec![STALE; cols]];
            let mut emit = TestEmit::new(r.limits, 2);
            let layer = &conv_graph_node();
            bias_grad(
                &mut emit,
                layer,
                0,
                BufRef::Input(0),
                rows,
                cols,
                BufRef::Input(1),
            )
            .expect("lowering");
            let got = emit.run(&mut r, &buffers).expect("GPU run");
            assert_close(
                &format!("{rows}x{cols}"),
                &shaped(&got[1], &[cols]),
                &expected,
            );
        }
    }

    fn conv_graph_node() -> Node {
        case(&[3, 3, 1], &[1, 1], &[1, 1], Padding::Valid)
            .graph()
            .nodes[0]
            .clone()
    }

    /// (item shape, kernel, strides, dilation, padding, multiplier)
    type DepthwiseCase<'a> = (
        &'a [usize],
        &'a [usize],
        &'a [usize],
        &'a [usize],
        Padding,
        usize,
    );

    #[test]
    fn depthwise_backward_matches_the_cpu() {
        let Some(mut r) = runner() else { return };
        use Padding::*;
        let cases: [DepthwiseCase; 4] = [
            (&[6, 7, 3], &[3, 3], &[1, 1], &[1, 1], Same, 1),
            (&[7, 6, 4], &[3, 2], &[2, 2], &[1, 1], Same, 2),
            (&[8, 8, 2], &[3, 3], &[1, 1], &[2, 2], Valid, 3),
            (&[11, 5], &[4], &[2], &[1], Causal, 2),
        ];
        for (i, &(item, kernel, strides, dilation, padding, mult)) in cases.iter().enumerate() {
            let rank = kernel.len();
            let ch = item[rank];
            let window = Window::new(kernel, strides, dilation, padding, &item[..rank]);
            let g = one_node(item, |p| {
                let mut kshape = kernel.to_vec();
                kshape.extend([ch, mult]);
                Op::DepthwiseConv(DepthwiseConv {
                    window,
                    channels: ch,
                    multiplier: mult,
                    kernel: p.add("n/kernel", uniform(&kshape, 1, 0.5), true),
                    bias: Some(p.add("n/bias", uniform(&[ch * mult], 2, 0.5), true)),
                    activation: Activation::Linear,
                })
            });
            let Op::DepthwiseConv(conv) = &g.nodes[0].op else {
                panic!("not a depthwise conv")
            };
            let batch = 3;
            let mut x_shape = vec![batch];
            x_shape.extend(item);
            let mut y_shape = vec![batch];
            y_shape.extend(&g.value(g.nodes[0].outputs[0]).shape);
            let x = uniform(&x_shape, 3, 1.0);
            let dy = uniform(&y_shape, 4, 1.0);
            let (dx, grads) = run_backward(&g, &x, &dy, true, None);
            let dx = dx.expect("dx");
            let dk = grads.get(conv.kernel).expect("dkernel");
            let db = grads.get(conv.bias.expect("bias")).expect("dbias");
            let buffers = vec![
                x.iter().copied().collect::<Vec<_>>(),
                g.params.slice(conv.kernel).to_vec(),
                dy.iter().copied().collect(),
                vec![STALE; dx.len()],
                vec![STALE; dk.len()],
                vec![STALE; db.len()],
            ];
            let mut emit = TestEmit::new(r.limits, buffers.len());
            let b = BufRef::Input;
            depthwise_backward(
                &mut emit,
                &g.nodes[0],
                0,
                conv,
                batch,
                b(0),
                b(1),
                b(2),
                Some(b(3)),
                Some(b(4)),
                Some(b(5)),
            )
            .expect("lowering");
            let got = emit.run(&mut r, &buffers).expect("GPU run");
            let name = format!("depthwise case {i}");
            assert_close(&format!("{name} dx"), &shaped(&got[3], dx.shape()), &dx);
            assert_close(&format!("{name} dkernel"), &shaped(&got[4], dk.shape()), dk);
            assert_close(&format!("{name} dbias"), &shaped(&got[5], db.shape()), db);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn transpose_graph(
        item: &[usize],
        kernel: &[usize],
        strides: &[usize],
        dilation: &[usize],
        padding: Padding,
        output_padding: Option<&[usize]>,
        filters: usize,
    ) -> Graph {
        let rank = kernel.len();
        let cin = item[rank];
        let (k, s, d) = (to_dhw(kernel, 1), to_dhw(strides, 1), to_dhw(dilation, 1));
        let input = to_dhw(&item[..rank], 1);
        let (mut output, mut pad_before) = ([1; 3], [0; 3]);
        for a in 3 - rank..3 {
            let op = output_padding.map(|p| p[a + rank - 3]);
            let (o, p) = transpose_axis(input[a], k[a], s[a], d[a], padding, op).unwrap();
            output[a] = o;
            pad_before[a] = p;
        }
        one_node(item, |p| {
            let mut kshape = kernel.to_vec();
            kshape.extend([filters, cin]);
            Op::ConvTranspose(ConvTranspose {
                filters,
                in_channels: cin,
                rank,
                kernel_size: k,
                strides: s,
                dilation: d,
                padding,
                input,
                output,
                pad_before,
                kernel: p.add("n/kernel", uniform(&kshape, 7, 0.5), true),
                bias: Some(p.add("n/bias", uniform(&[filters], 8, 0.5), true)),
                activation: Activation::Linear,
            })
        })
    }

    #[test]
    fn conv_transpose_backward_matches_the_cpu() {
        use Padding::*;
        let Some(mut r) = runner() else { return };
        let cases: Vec<(Graph, usize)> = vec![
            (
                transpose_graph(&[4, 3, 3], &[3, 3], &[2, 2], &[1, 1], Same, None, 4),
                3,
            ),
            (
                transpose_graph(&[3, 4, 2], &[2, 3], &[2, 1], &[1, 1], Valid, None, 3),
                1,
            ),
            (
                transpose_graph(
                    &[3, 3, 5],
                    &[2, 2],
                    &[3, 3],
                    &[1, 1],
                    Valid,
                    Some(&[2, 1]),
                    2,
                ),
                3,
            ),
            (
                transpose_graph(&[5, 3], &[4], &[2], &[1], Same, Some(&[1]), 3),
                3,
            ),
            (
                transpose_graph(&[4, 5, 3], &[3, 3], &[1, 1], &[2, 2], Same, None, 2),
                2,
            ),
            (
                transpose_graph(
                    &[2, 3, 3, 2],
                    &[2, 2, 3],
                    &[2, 2, 1],
                    &[1, 1, 1],
                    Same,
                    None,
                    2,
                ),
                2,
            ),
            // More than one 64-wide tile of channels, filters and kernel rows; then 33 images.
            (
                transpose_graph(&[3, 3, 70], &[2, 2], &[2, 2], &[1, 1], Valid, None, 66),
                2,
            ),
            (
                transpose_graph(&[3, 2, 2], &[3, 3], &[2, 2], &[1, 1], Same, None, 3),
                33,
            ),
        ];
        for (i, (g, batch)) in cases.iter().enumerate() {
            let Op::ConvTranspose(conv) = &g.nodes[0].op else {
                panic!("not a transposed conv")
            };
            let batch = *batch;
            let mut x_shape = vec![batch];
            x_shape.extend(&g.value(g.nodes[0].inputs[0]).shape);
            let mut y_shape = vec![batch];
            y_shape.extend(&g.value(g.nodes[0].outputs[0]).shape);
            let x = uniform(&x_shape, 9, 1.0);
            let dy = uniform(&y_shape, 4, 1.0);
            let (dx, grads) = run_backward(g, &x, &dy, true, None);
            let dx = dx.expect("dx");
            let dk = grads.get(conv.kernel).expect("dkernel");
            let db = grads.get(conv.bias.expect("bias")).expect("dbias");
            let buffers = vec![
                x.iter().copied().collect::<Vec<_>>(),
                g.params.slice(conv.kernel).to_vec(),
                dy.iter().copied().collect(),
                vec![STALE; dx.len()],
                vec![STALE; dk.len()],
                vec![STALE; db.len()],
            ];
            let mut emit = TestEmit::new(r.limits, buffers.len());
            let b = BufRef::Input;
            conv_transpose_backward(
                &mut emit,
                &g.nodes[0],
                0,
                conv,
                batch,
                b(0),
                b(1),
                b(2),
                Some(b(3)),
                Some(b(4)),
                Some(b(5)),
            )
            .expect("lowering");
            let got = emit.run(&mut r, &buffers).expect("GPU run");
            let name = format!("transposed case {i}");
            assert_close(&format!("{name} dx"), &shaped(&got[3], dx.shape()), &dx);
            assert_close(&format!("{name} dkernel"), &shaped(&got[4], dk.shape()), dk);
            assert_close(&format!("{name} dbias"), &shaped(&got[5], db.shape()), db);
        }
    }

    #[test]
    fn a_fused_activation_is_refused() {
        let c = case(&[5, 5, 2], &[3, 3], &[1, 1], Padding::Same);
        let g = c.graph();
        let mut conv = conv_of(&g).clone();
        conv.activation = Activation::Sigmoid;
        let limits = crate::gpu::plan::PlanLimits {
            max_binding_bytes: 1 << 30,
            max_workgroups_per_dim: 65535,
            max_storage_buffers_per_stage: 8,
            fold_batch_norm: false,
            loop_iterations: None,
        };
        let mut emit = TestEmit::new(limits, 6);
        let i = BufRef::Input;
        let err = conv_backward(
            &mut emit,
            &g.nodes[0],
            0,
            &conv,
            1,
            i(0),
            i(1),
            i(2),
            Some(i(3)),
            None,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("layer 'n'") && err.contains("activation"),
            "{err}"
        );
        assert!(emit.ops.is_empty());
    }
}
