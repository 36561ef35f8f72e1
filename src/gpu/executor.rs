//! Turns a `Plan` into wgpu objects once (buffers, uniform parameters, bind groups) and replays it:
//! one input upload, one command encoder, one submit, and one readback of the final output.

use std::collections::HashMap;

use crate::error::{Error, Result};

use super::kernels::Pipelines;
use super::plan::{Arena, BufRef, Op, Plan};
use super::weights::WeightKey;

/// What every plan of a runtime shares: the device, compiled kernels and uploaded weights.
pub struct DeviceContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub pipelines: Pipelines,
    pub weights: HashMap<WeightKey, wgpu::Buffer>,
    /// Bound in place of absent optional inputs (no bias, no mask).
    pub dummy: wgpu::Buffer,
    /// Distance between consecutive uniform parameter blocks (>= the offset alignment).
    pub uniform_stride: u64,
}

/// Bytes bound per uniform block; every kernel's parameter struct fits.
const UNIFORM_BLOCK: u64 = 256;

/// Sizes every uniform block so offsets meet `min_uniform_buffer_offset_alignment`.
pub fn uniform_stride(limits: &wgpu::Limits) -> u64 {
    let align = u64::from(limits.min_uniform_buffer_offset_alignment.max(1));
    UNIFORM_BLOCK.div_ceil(align) * align
}

/// Buffers are padded to 16 bytes so empty tensors still get a valid binding.
fn padded(bytes: u64) -> u64 {
    bytes.max(16).div_ceil(16) * 16
}

/// A training runtime's shared buffers: every parameter in one arena (each at a 256-byte
/// aligned offset, so a layer's kernels bind its own range), the gradients and each optimizer
/// state in arenas of the same layout, and the optimizer's control words (per-step scalars,
/// segment table, norms).
#[derive(Clone)]
pub struct Arenas {
    pub params: wgpu::Buffer,
    pub grads: wgpu::Buffer,
    pub state: Vec<wgpu::Buffer>,
    pub step: wgpu::Buffer,
    pub backup: wgpu::Buffer,
    /// The lookup tables' squared-gradient sums (`Arena::GradSq`; 16 bytes without tables).
    pub grad_sq: wgpu::Buffer,
    /// Per parameter (indexed by `ParamId`): its (offset, length) in f32s, None when the arena
    /// does not hold it.
    pub ranges: Vec<Option<(u64, u64)>>,
}

/// A plan made concrete for one batch size. Built once, run many times.
pub struct GpuPlan {
    pub plan: Plan,
    inputs: Vec<wgpu::Buffer>,
    slots: Vec<wgpu::Buffer>,
    readback: wgpu::Buffer,
    /// One per op (None for clears), built up front.
    bind_groups: Vec<Option<wgpu::BindGroup>>,
    /// The training arenas, for the plan's copies between them.
    arenas: Option<Arenas>,
    // Kept alive for the bind groups that point into them.
    _params: wgpu::Buffer,
}

impl GpuPlan {
    pub fn new(ctx: &DeviceContext, plan: Plan) -> Result<GpuPlan> {
        Self::with_arenas(ctx, plan, None)
    }

    /// A plan whose dispatches may also bind the training arenas.
    pub fn with_arenas(
        ctx: &DeviceContext,
        plan: Plan,
        arenas: Option<&Arenas>,
    ) -> Result<GpuPlan> {
        let device = &ctx.device;
        let storage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC;
        let inputs = plan
            .inputs
            .iter()
            .enumerate()
            .map(|(k, input)| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("input{k}")),
                    size: padded(input.bytes),
                    usage: storage,
                    mapped_at_creation: false,
                })
            })
            .collect::<Vec<_>>();
        let slots = plan
            .slots
            .iter()
            .enumerate()
            .map(|(s, &bytes)| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("slot{s}")),
                    size: padded(bytes),
                    usage: storage,
                    mapped_at_creation: false,
                })
            })
            .collect::<Vec<_>>();
        let readback = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: padded(plan.output_bytes()),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });

        // All dispatch parameters live in one uniform buffer, written once here.
        let stride = ctx.uniform_stride;
        let dispatches = plan
            .ops
            .iter()
            .filter(|op| matches!(op, Op::Dispatch(_)))
            .count() as u64;
        let mut param_bytes = vec![0u8; (stride * dispatches.max(1)) as usize];
        let mut offsets = Vec::with_capacity(plan.ops.len());
        let mut next = 0u64;
        for op in &plan.ops {
            if let Op::Dispatch(d) = op {
                let words: &[u8] = bytemuck::cast_slice(&d.params);
                if words.len() as u64 > UNIFORM_BLOCK {
                    return Err(Error::Gpu(format!(
                        "internal: {} parameters exceed {UNIFORM_BLOCK} bytes",
                        d.kernel.name()
                    )));
                }
                let start = (next * stride) as usize;
                param_bytes[start..start + words.len()].copy_from_slice(words);
                offsets.push(Some(next * stride));
                next += 1;
            } else {
                offsets.push(None);
            }
        }
        let params = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: param_bytes.len() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue.write_buffer(&params, 0, &param_bytes);

        let no_arenas = || Error::Internal("a training buffer in a plan without arenas".into());
        let resolve = |b: BufRef| -> Result<wgpu::BufferBinding<'_>> {
            fn whole(buffer: &wgpu::Buffer) -> wgpu::BufferBinding<'_> {
                buffer.as_entire_buffer_binding()
            }
            fn range<'b>(
                buffer: &'b wgpu::Buffer,
                arenas: &Arenas,
                id: crate::graph::ParamId,
            ) -> Result<wgpu::BufferBinding<'b>> {
                let (offset, len) =
                    arenas.ranges.get(id.0).copied().flatten().ok_or_else(|| {
                        Error::Internal(format!("parameter #{} has no arena range", id.0))
                    })?;
                Ok(wgpu::BufferBinding {
                    buffer,
                    offset: 4 * offset,
                    size: wgpu::BufferSize::new(padded(4 * len)),
                })
            }
            match b {
                BufRef::Input(k) => inputs
                    .get(k)
                    .map(whole)
                    .ok_or_else(|| Error::Internal(format!("plan has no input {k}"))),
                BufRef::Slot(s) => slots
                    .get(s)
                    .map(whole)
                    .ok_or_else(|| Error::Gpu(format!("internal: plan has no slot{s}"))),
                BufRef::Weight(key) => ctx.weights.get(&key).map(whole).ok_or_else(|| {
                    Error::Gpu(format!(
                        "internal: weight {} of node #{} was not uploaded",
                        key.role.name(),
                        key.node
                    ))
                }),
                BufRef::Dummy => Ok(whole(&ctx.dummy)),
                BufRef::Param(id) => {
                    let a = arenas.ok_or_else(no_arenas)?;
                    range(&a.params, a, id)
                }
                BufRef::ParamGrad(id) => {
                    let a = arenas.ok_or_else(no_arenas)?;
                    range(&a.grads, a, id)
                }
                BufRef::Arena(which) => {
                    let a = arenas.ok_or_else(no_arenas)?;
                    let buffer = match which {
                        Arena::Params => &a.params,
                        Arena::Grads => &a.grads,
                        Arena::State(k) => a.state.get(k).ok_or_else(|| {
                            Error::Internal(format!("no optimizer state arena {k}"))
                        })?,
                        Arena::Step => &a.step,
                        Arena::Backup => &a.backup,
                        Arena::GradSq => &a.grad_sq,
                    };
                    Ok(whole(buffer))
                }
            }
        };

        let mut bind_groups = Vec::with_capacity(plan.ops.len());
        for (op, offset) in plan.ops.iter().zip(&offsets) {
            let (Op::Dispatch(d), Some(offset)) = (op, offset) else {
                bind_groups.push(None);
                continue;
            };
            let pipeline = ctx.pipelines.get(d.kernel)?;
            let mut entries = Vec::with_capacity(d.buffers.len() + 1);
            for (binding, b) in d.buffers.iter().enumerate() {
                entries.push(wgpu::BindGroupEntry {
                    binding: binding as u32,
                    resource: wgpu::BindingResource::Buffer(resolve(*b)?),
                });
            }
            entries.push(wgpu::BindGroupEntry {
                binding: d.buffers.len() as u32,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &params,
                    offset: *offset,
                    size: wgpu::BufferSize::new(UNIFORM_BLOCK),
                }),
            });
            bind_groups.push(Some(device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(d.kernel.name()),
                layout: &pipeline.layout,
                entries: &entries,
            })));
        }

        Ok(GpuPlan {
            plan,
            inputs,
            slots,
            readback,
            bind_groups,
            arenas: arenas.cloned(),
            _params: params,
        })
    }

    fn buffer(&self, b: BufRef) -> Option<&wgpu::Buffer> {
        match b {
            BufRef::Input(k) => self.inputs.get(k),
            BufRef::Slot(s) => self.slots.get(s),
            BufRef::Arena(Arena::Params) => self.arenas.as_ref().map(|a| &a.params),
            BufRef::Arena(Arena::Backup) => self.arenas.as_ref().map(|a| &a.backup),
            _ => None,
        }
    }

    /// Uploads one byte slice per model input (exactly each `PlanInput::bytes`), runs every op
    /// in one submit and reads back every output, in the plan's output order.
    pub async fn execute(&self, ctx: &DeviceContext, inputs: &[&[u8]]) -> Result<Vec<Vec<f32>>> {
        let recorded = self.record(ctx, inputs)?;
        let in_flight = self.submit(ctx, recorded);
        self.read(ctx, in_flight).await
    }

    /// Runs one batch like [`execute`](Self::execute) with every dispatch op in a compute pass
    /// of its own, timed by timestamp queries (the device needs `TIMESTAMP_QUERY`); returns the
    /// GPU time of each dispatch op in milliseconds, in plan order.
    // Natively only so far: `GpuRuntime::profile` blocks.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub async fn profile(&self, ctx: &DeviceContext, inputs: &[&[u8]]) -> Result<Vec<f64>> {
        let dispatches = self
            .plan
            .ops
            .iter()
            .filter(|op| matches!(op, Op::Dispatch(_)))
            .count();
        let timestamps = Timestamps::new(ctx, dispatches as u32);
        let recorded = self.record_with(ctx, inputs, Some(&timestamps))?;
        let in_flight = self.submit(ctx, recorded);
        self.read(ctx, in_flight).await?;
        let bytes = u64::from(timestamps.count) * 8;
        let raw = read_bytes(ctx, &timestamps.resolved, bytes).await?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&raw);
        let period_ns = f64::from(ctx.queue.get_timestamp_period());
        Ok(ticks
            .chunks_exact(2)
            .map(|t| t[1].saturating_sub(t[0]) as f64 * period_ns * 1e-6)
            .collect())
    }

    /// [`execute`](Self::execute)'s first half: queues the input uploads and records every op
    /// and the output copies, without submitting. The uploads take effect at the next submit,
    /// after all work submitted before, so a batch can be recorded while the previous one still
    /// runs on the GPU (that one has read its inputs by then).
    pub fn record(&self, ctx: &DeviceContext, inputs: &[&[u8]]) -> Result<Recorded> {
        self.record_with(ctx, inputs, None)
    }

    /// [`record`](Self::record), with each dispatch op in its own timed pass when `timestamps`.
    fn record_with(
        &self,
        ctx: &DeviceContext,
        inputs: &[&[u8]],
        timestamps: Option<&Timestamps>,
    ) -> Result<Recorded> {
        if inputs.len() != self.plan.inputs.len() {
            return Err(Error::Internal(format!(
                "{} inputs for a plan expecting {}",
                inputs.len(),
                self.plan.inputs.len()
            )));
        }
        for ((bytes, want), buffer) in inputs.iter().zip(&self.plan.inputs).zip(&self.inputs) {
            if bytes.len() as u64 != want.bytes {
                return Err(Error::Internal(format!(
                    "input of {} bytes for a plan expecting {}",
                    bytes.len(),
                    want.bytes
                )));
            }
            if !bytes.is_empty() {
                ctx.queue.write_buffer(buffer, 0, bytes);
            }
        }
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("wgnn batch"),
            });
        let mut pass: Option<wgpu::ComputePass<'static>> = None;
        let mut timed = 0u32;
        for (op, bind_group) in self.plan.ops.iter().zip(&self.bind_groups) {
            match (op, bind_group) {
                (Op::Clear { buffer, .. }, _) => {
                    drop(pass.take());
                    let buffer = self.buffer(*buffer).ok_or_else(|| {
                        Error::Gpu("internal: only activation buffers can be cleared".into())
                    })?;
                    encoder.clear_buffer(buffer, 0, None);
                }
                (
                    Op::Copy {
                        src, dst, bytes, ..
                    },
                    _,
                ) => {
                    drop(pass.take());
                    let (Some(src), Some(dst)) = (self.buffer(*src), self.buffer(*dst)) else {
                        return Err(Error::Internal(
                            "only activation buffers and the parameter arena can be copied".into(),
                        ));
                    };
                    if *bytes > 0 {
                        encoder.copy_buffer_to_buffer(src, 0, dst, 0, *bytes);
                    }
                }
                (Op::Dispatch(d), Some(bind_group)) => {
                    if timestamps.is_some() {
                        // A pass per dispatch, so that its two timestamps bracket only it.
                        drop(pass.take());
                    }
                    let pass = pass.get_or_insert_with(|| {
                        let timestamp_writes = timestamps.map(|t| t.writes(timed));
                        encoder
                            .begin_compute_pass(&wgpu::ComputePassDescriptor {
                                label: Some("wgnn layers"),
                                timestamp_writes,
                            })
                            .forget_lifetime()
                    });
                    timed += 1;
                    let pipeline = ctx.pipelines.get(d.kernel)?;
                    pass.set_pipeline(&pipeline.pipeline);
                    pass.set_bind_group(0, bind_group, &[]);
                    let [x, y, z] = d.grid;
                    pass.dispatch_workgroups(x, y, z);
                }
                (Op::Dispatch(d), None) => {
                    return Err(Error::Gpu(format!(
                        "internal: no bind group for {}",
                        d.kernel.name()
                    )))
                }
            }
        }
        drop(pass);
        if let Some(t) = timestamps {
            t.resolve(&mut encoder);
        }
        // Every output goes into one readback buffer, one after another.
        let mut at = 0u64;
        for output in &self.plan.outputs {
            let buffer = self.buffer(output.buffer).ok_or_else(|| {
                Error::Internal("a plan output is not an activation buffer".into())
            })?;
            if output.bytes > 0 {
                encoder.copy_buffer_to_buffer(buffer, 0, &self.readback, at, output.bytes);
            }
            at += output.bytes;
        }
        Ok(Recorded {
            commands: encoder.finish(),
            bytes: at,
        })
    }

    /// Submits a recorded batch; [`read`](Self::read) waits for it.
    pub fn submit(&self, ctx: &DeviceContext, recorded: Recorded) -> InFlight {
        InFlight {
            submission: ctx.queue.submit([recorded.commands]),
            bytes: recorded.bytes,
        }
    }

    /// Waits for a submitted batch and reads back every output, in the plan's output order.
    // A browser waits in its event loop, not through the device (see below).
    #[cfg_attr(target_arch = "wasm32", allow(unused_variables))]
    pub async fn read(&self, ctx: &DeviceContext, in_flight: InFlight) -> Result<Vec<Vec<f32>>> {
        let bytes = in_flight.bytes;
        // Waited on natively only (see below).
        #[cfg_attr(target_arch = "wasm32", allow(unused_variables))]
        let submission = in_flight.submission;
        let split = |values: Vec<f32>| {
            let mut parts = Vec::with_capacity(self.plan.outputs.len());
            let mut start = 0;
            for o in &self.plan.outputs {
                let n = (o.bytes / 4) as usize;
                parts.push(values[start..start + n].to_vec());
                start += n;
            }
            parts
        };
        if bytes == 0 {
            return Ok(split(Vec::new()));
        }

        let slice = self.readback.slice(..bytes);
        let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
        slice.map_async(wgpu::MapMode::Read, move |result| {
            // The receiver is gone only if we already returned with an error.
            let _ = sender.send(result);
        });
        // Natively the callback runs inside `poll`; a browser runs it from its event loop when
        // the mapping promise resolves, so there is nothing to wait for here.
        #[cfg(not(target_arch = "wasm32"))]
        ctx.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(submission),
                timeout: None,
            })
            .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))?;
        match receiver.receive().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(Error::Gpu(format!("reading the output back failed: {e}"))),
            None => return Err(Error::Gpu("reading the output back was cancelled".into())),
        }
        // Unmap even when reading fails, or the next batch could not map this buffer again.
        let values = slice
            .get_mapped_range()
            .map(|view| bytemuck::pod_collect_to_vec::<u8, f32>(&view));
        self.readback.unmap();
        let values =
            values.map_err(|e| Error::Gpu(format!("reading the output back failed: {e}")))?;
        Ok(split(values))
    }
}

/// A batch's uploads queued and its commands recorded, not yet submitted.
pub struct Recorded {
    commands: wgpu::CommandBuffer,
    // Bytes of outputs the commands copy into the readback buffer.
    bytes: u64,
}

/// A submitted batch whose outputs have not been read back yet.
pub struct InFlight {
    submission: wgpu::SubmissionIndex,
    bytes: u64,
}

/// Timestamp queries for [`GpuPlan::profile`]: a begin and an end per dispatch op, in query
/// sets of at most wgpu's 4096 queries, resolved into one buffer.
struct Timestamps {
    sets: Vec<wgpu::QuerySet>,
    resolved: wgpu::Buffer,
    /// Queries in all: two per dispatch op.
    count: u32,
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
impl Timestamps {
    const PER_SET: u32 = wgpu::QUERY_SET_MAX_QUERIES;

    fn new(ctx: &DeviceContext, dispatches: u32) -> Timestamps {
        let count = dispatches * 2;
        let sets = (0..count.div_ceil(Self::PER_SET))
            .map(|i| {
                ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("dispatch timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count: (count - i * Self::PER_SET).min(Self::PER_SET),
                })
            })
            .collect();
        let resolved = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("resolved timestamps"),
            size: padded(u64::from(count) * 8),
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Timestamps {
            sets,
            resolved,
            count,
        }
    }

    /// The begin and end writes of dispatch op `i` (PER_SET is even: both land in one set).
    fn writes(&self, i: u32) -> wgpu::ComputePassTimestampWrites<'_> {
        let first = i * 2;
        wgpu::ComputePassTimestampWrites {
            query_set: &self.sets[(first / Self::PER_SET) as usize],
            beginning_of_pass_write_index: Some(first % Self::PER_SET),
            end_of_pass_write_index: Some(first % Self::PER_SET + 1),
        }
    }

    fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        for (i, set) in self.sets.iter().enumerate() {
            let first = i as u32 * Self::PER_SET;
            let queries = (self.count - first).min(Self::PER_SET);
            encoder.resolve_query_set(set, 0..queries, &self.resolved, u64::from(first) * 8);
        }
    }
}

/// Reads the first `bytes` of `buffer` (which needs COPY_SRC) back to the host.
// GPU training (native-only for now) reads its arenas back with it.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub async fn read_buffer(
    ctx: &DeviceContext,
    buffer: &wgpu::Buffer,
    bytes: u64,
) -> Result<Vec<f32>> {
    let raw = read_bytes(ctx, buffer, bytes).await?;
    Ok(bytemuck::pod_collect_to_vec::<u8, f32>(&raw))
}

/// [`read_buffer`] as bytes.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
async fn read_bytes(ctx: &DeviceContext, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
    if bytes == 0 {
        return Ok(Vec::new());
    }
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("read back"),
        size: padded(bytes),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("read back"),
        });
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, bytes);
    #[cfg_attr(target_arch = "wasm32", allow(unused_variables))]
    let submission = ctx.queue.submit([encoder.finish()]);
    let slice = staging.slice(..bytes);
    let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
    slice.map_async(wgpu::MapMode::Read, move |result| {
        let _ = sender.send(result);
    });
    #[cfg(not(target_arch = "wasm32"))]
    ctx.device
        .poll(wgpu::PollType::Wait {
            submission_index: Some(submission),
            timeout: None,
        })
        .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))?;
    match receiver.receive().await {
        Some(Ok(())) => {}
        Some(Err(e)) => return Err(Error::Gpu(format!("reading a buffer back failed: {e}"))),
        None => return Err(Error::Gpu("reading a buffer back was cancelled".into())),
    }
    let values = slice.get_mapped_range().map(|view| view.to_vec());
    staging.unmap();
    values.map_err(|e| Error::Gpu(format!("reading a buffer back failed: {e}")))
}
