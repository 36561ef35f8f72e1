//! Backward lowering for GPU training: the dispatches of each op family's backward, one file
//! per family beside its shader in `shaders/`. A family's function reads the buffers of the
//! forward's values and of the gradients flowing back, and appends its dispatches to an
//! [`Emit`]: the training plan's builder, or a test's.

pub(crate) mod conv;
pub(crate) mod conv_lstm;
pub(crate) mod layer_norm;
pub(crate) mod loss;
pub(crate) mod merge;
pub(crate) mod norm;
pub(crate) mod optim;
pub(crate) mod pool;
pub(crate) mod recurrent;
pub(crate) mod shape;
pub(crate) mod softmax;

use crate::error::{Error, Result};
use crate::graph::Node;

use super::kernels::Kernel;
use super::plan::{fold_grid, BufRef, Dispatch, Op, PlanLimits};

/// Where backward lowering puts its work.
pub(crate) trait Emit {
    fn limits(&self) -> PlanLimits;
    /// A scratch buffer of `floats` f32s for node `node` (split-K partial sums and the like),
    /// held until `release`.
    fn scratch(&mut self, node: usize, what: &'static str, floats: usize) -> BufRef;
    fn release(&mut self, buffer: BufRef);
    fn push(&mut self, op: Op);

    /// One dispatch of `kernel` for `layer` (graph node index `node`) over `workgroups`
    /// workgroups, folded into a grid the adapter allows.
    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        layer: &Node,
        node: usize,
        kernel: Kernel,
        buffers: Vec<BufRef>,
        params: Vec<u32>,
        workgroups: u64,
        detail: String,
    ) -> Result<()> {
        let who = format!("layer '{}' ({})", layer.name, layer.class);
        self.dispatch_for(&who, node, kernel, buffers, params, workgroups, detail)
    }

    /// [`Emit::dispatch`] for work that belongs to no graph node (the loss, the optimizer):
    /// `who` names it in errors ("optimizer 'adam'"), the node index is `usize::MAX`.
    #[allow(clippy::too_many_arguments)]
    fn dispatch_model(
        &mut self,
        who: &str,
        kernel: Kernel,
        buffers: Vec<BufRef>,
        params: Vec<u32>,
        workgroups: u64,
        detail: String,
    ) -> Result<()> {
        self.dispatch_for(who, usize::MAX, kernel, buffers, params, workgroups, detail)
    }

    /// The checks and the push behind both; `who` opens every error message.
    #[allow(clippy::too_many_arguments)]
    fn dispatch_for(
        &mut self,
        who: &str,
        node: usize,
        kernel: Kernel,
        buffers: Vec<BufRef>,
        params: Vec<u32>,
        workgroups: u64,
        detail: String,
    ) -> Result<()> {
        let limits = self.limits();
        let grid = fold_grid(workgroups, limits.max_workgroups_per_dim).ok_or_else(|| {
            Error::Gpu(format!(
                "{who}: {}: {workgroups} workgroups exceed the adapter's dispatch limits",
                kernel.name()
            ))
        })?;
        let needed = kernel.storage().len() as u32;
        if needed > limits.max_storage_buffers_per_stage {
            return Err(Error::Gpu(format!(
                "{who}: {}: needs {needed} storage buffers per shader stage, the adapter allows {}",
                kernel.name(),
                limits.max_storage_buffers_per_stage
            )));
        }
        if buffers.len() != kernel.storage().len() {
            return Err(Error::Internal(format!(
                "{} binds {} buffers, given {}",
                kernel.name(),
                kernel.storage().len(),
                buffers.len()
            )));
        }
        self.push(Op::Dispatch(Dispatch {
            node,
            kernel,
            buffers,
            params,
            workgroups,
            grid,
            detail,
        }));
        Ok(())
    }
}

/// A 32-bit GPU index or size, else an error naming the layer.
pub(crate) fn word(layer: &Node, what: &str, value: usize) -> Result<u32> {
    u32::try_from(value).map_err(|_| {
        Error::Gpu(format!(
            "layer '{}' ({}): {what}: {value} does not fit the GPU's 32-bit indices",
            layer.name, layer.class
        ))
    })
}

/// A 32-bit GPU index or size for model-level work (`who`: "optimizer 'adam'"), else an error.
pub(crate) fn model_word(who: &str, what: &str, value: usize) -> Result<u32> {
    u32::try_from(value).map_err(|_| {
        Error::Gpu(format!(
            "{who}: {what}: {value} does not fit the GPU's 32-bit indices"
        ))
    })
}

/// Workgroups of `threads` threads covering `elements` one per thread.
pub(crate) fn linear_workgroups(elements: usize, threads: u32) -> u64 {
    (elements as u64).div_ceil(u64::from(threads))
}

/// Test support: an `Emit` whose scratch buffers are extra zeroed inputs of the kernel runner.
#[cfg(all(test, not(target_arch = "wasm32")))]
pub(crate) mod test_emit {
    use super::*;

    pub(crate) struct TestEmit {
        pub ops: Vec<Op>,
        pub limits: PlanLimits,
        /// Buffers the test itself passes come first (`BufRef::Input(0..given)`).
        pub given: usize,
        /// Sizes (f32s) of the scratch buffers asked for, `BufRef::Input(given + k)`.
        pub scratch: Vec<usize>,
    }

    impl TestEmit {
        pub fn new(limits: PlanLimits, given: usize) -> Self {
            TestEmit {
                ops: Vec::new(),
                limits,
                given,
                scratch: Vec::new(),
            }
        }

        /// Runs the emitted ops on `buffers` (plus zeroed scratch); returns every buffer the
        /// test gave, after the ops.
        pub fn run(
            self,
            runner: &mut crate::gpu::testing::KernelRunner,
            buffers: &[Vec<f32>],
        ) -> Result<Vec<Vec<f32>>> {
            assert_eq!(buffers.len(), self.given, "buffers given");
            let mut all = buffers.to_vec();
            all.extend(self.scratch.iter().map(|&n| vec![0.0; n.max(1)]));
            let mut out = runner.run(&all, self.ops)?;
            out.truncate(self.given);
            Ok(out)
        }
    }

    impl Emit for TestEmit {
        fn limits(&self) -> PlanLimits {
            self.limits
        }
        fn scratch(&mut self, _node: usize, _what: &'static str, floats: usize) -> BufRef {
            self.scratch.push(floats);
            BufRef::Input(self.given + self.scratch.len() - 1)
        }
        fn release(&mut self, _buffer: BufRef) {}
        fn push(&mut self, op: Op) {
            self.ops.push(op);
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::test_emit::TestEmit;
    use super::*;
    use crate::gpu::testing::{dispatch, runner};

    #[test]
    fn the_kernel_runner_runs_emitted_and_hand_made_dispatches() {
        let Some(mut r) = runner() else { return };
        let n = 130usize;
        let src: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
        let dst: Vec<f32> = (0..n).map(|i| 1.0 - i as f32).collect();
        let params = vec![0, 0, 0, 0, n as u32, 1, 0, 0];
        let node = Node {
            name: "t".into(),
            class: "Test".into(),
            op: crate::graph::Op::Identity,
            inputs: Vec::new(),
            mask: None,
            outputs: Vec::new(),
        };
        let mut e = TestEmit::new(r.limits, 2);
        let buffers = vec![
            BufRef::Dummy,
            BufRef::Dummy,
            BufRef::Input(0),
            BufRef::Input(1),
        ];
        let groups = linear_workgroups(n, 64);
        e.dispatch(
            &node,
            0,
            Kernel::Accumulate,
            buffers.clone(),
            params.clone(),
            groups,
            String::new(),
        )
        .unwrap();
        let out = e.run(&mut r, &[src.clone(), dst.clone()]).unwrap();
        for i in 0..n {
            assert_eq!(out[1][i], dst[i] + src[i], "element {i}");
        }
        // The same twice in one submit adds twice.
        let op = dispatch(Kernel::Accumulate, buffers, params, groups);
        let out = r
            .run(&[src.clone(), dst.clone()], vec![op.clone(), op])
            .unwrap();
        assert_eq!(out[1][n - 1], dst[n - 1] + 2.0 * src[n - 1]);
    }
}
