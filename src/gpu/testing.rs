//! Runs hand-built op lists on the GPU, for kernel unit tests: each buffer given becomes
//! `BufRef::Input(i)`, uploaded before the ops run and read back after them. Without an adapter
//! `runner()` panics under CI (env `CI`) and is None otherwise, so tests fail rather than skip
//! where a GPU is expected.

use std::collections::HashMap;

use super::executor::{uniform_stride, DeviceContext, GpuPlan};
use super::kernels::{Kernel, Pipelines};
use super::plan::{fold_grid, BufRef, Dispatch, Op, Plan, PlanInput, PlanLimits, PlanOutput};
use crate::error::Result;

pub(crate) struct KernelRunner {
    ctx: DeviceContext,
    pub limits: PlanLimits,
}

pub(crate) fn runner() -> Option<KernelRunner> {
    let adapter = match super::choose_adapter(None) {
        Ok(a) => a,
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but there is no GPU adapter: {e}"
            );
            eprintln!("note: no GPU adapter ({e}); skipping outside CI");
            return None;
        }
    };
    let limits = adapter.limits();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("wgnn kernel test"),
        required_features: wgpu::Features::empty(),
        required_limits: limits.clone(),
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    }))
    .expect("creating a device");
    let dummy = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("unused binding"),
        size: 16,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let plan_limits = super::plan_limits(
        &limits,
        Some(&adapter.get_info()),
        super::LimitOverrides::default(),
    );
    Some(KernelRunner {
        ctx: DeviceContext {
            device,
            queue,
            pipelines: Pipelines::new(),
            weights: HashMap::new(),
            dummy,
            uniform_stride: uniform_stride(&limits),
        },
        limits: plan_limits,
    })
}

impl KernelRunner {
    /// Uploads `buffers` (as `BufRef::Input(0..)`), runs `ops` in one submit and returns every
    /// buffer's contents after them. u32 data travels as `f32::from_bits`.
    pub fn run(&mut self, buffers: &[Vec<f32>], ops: Vec<Op>) -> Result<Vec<Vec<f32>>> {
        for op in &ops {
            if let Op::Dispatch(d) = op {
                self.ctx.pipelines.ensure(&self.ctx.device, d.kernel);
            }
        }
        let plan = Plan {
            inputs: buffers
                .iter()
                .map(|b| PlanInput {
                    bytes: 4 * b.len() as u64,
                    is_ids: false,
                    shape: vec![b.len()],
                    label: None,
                })
                .collect(),
            slots: Vec::new(),
            slot_users: Vec::new(),
            ops,
            outputs: buffers
                .iter()
                .enumerate()
                .map(|(i, b)| PlanOutput {
                    buffer: BufRef::Input(i),
                    bytes: 4 * b.len() as u64,
                    shape: vec![b.len()],
                })
                .collect(),
            tensors: Vec::new(),
            fold_batch_norm: false,
            values: Vec::new(),
        };
        let gpu = GpuPlan::new(&self.ctx, plan)?;
        let bytes: Vec<&[u8]> = buffers.iter().map(|b| bytemuck::cast_slice(b)).collect();
        pollster::block_on(gpu.execute(&self.ctx, &bytes))
    }
}

/// One dispatch of `kernel` over `workgroups` workgroups (folded into a grid), for tests.
// No test builds ops by hand yet (they go through grad::test_emit).
#[allow(dead_code)]
pub(crate) fn dispatch(
    kernel: Kernel,
    buffers: Vec<BufRef>,
    params: Vec<u32>,
    workgroups: u64,
) -> Op {
    Op::Dispatch(Dispatch {
        node: 0,
        kernel,
        buffers,
        params,
        workgroups,
        grid: fold_grid(workgroups, 65535).expect("grid fits"),
        detail: String::new(),
    })
}
