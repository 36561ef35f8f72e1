//! GPU backend: wgpu compute shaders (WGSL, one file per op family under `shaders/`).
//!
//! How the pieces fit:
//! - [`GpuRuntime::new`] picks an adapter, creates the device with the adapter's own limits,
//!   uploads every weight once (`weights.rs`) and compiles the kernels the model uses
//!   (`kernels.rs`).
//! - `plan.rs` lowers the `Graph` for one batch size into a plain-data `Plan`: an ordered list
//!   of dispatches (kernel, bound buffers, uniform parameters, workgroup grid) over pooled
//!   activation buffers. It needs only the adapter's limits, so `describe_plan` prints it without
//!   a device.
//! - `executor.rs` makes a `Plan` concrete once (`GpuPlan`: buffers, one uniform buffer holding
//!   every dispatch's parameters, bind groups) and replays it: upload the input, encode every
//!   dispatch into one command encoder, submit once, read back only the final output.
//! - The runtime caches a `GpuPlan` per batch size, so repeated predictions build nothing.
//! - Asking for the adapter and device, popping error scopes and mapping the readback buffer are
//!   asynchronous (`*_async`): in a browser they are JavaScript promises and must not block its
//!   thread. Native callers get the same code through blocking wrappers (`pollster`).
//!   Batches larger than the biggest one whose buffers fit `max_storage_buffer_binding_size`
//!   run as consecutive sub-batches.

mod executor;
mod grad;
mod kernels;
mod plan;
#[cfg(all(test, not(target_arch = "wasm32")))]
mod testing;
// GPU training runs natively only for now: in the browser its blocking helpers are absent.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub mod train;
mod weights;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, Result};
use crate::graph::{DType, Graph};
use crate::input::PreparedInput;

use executor::{DeviceContext, GpuPlan};
use kernels::{Kernel, Pipelines};
use plan::{bytes_text, Op, Plan, PlanLimits};

const NO_ADAPTER: &str = "no GPU adapter found";

/// True when a GPU error message means "there is no adapter" (so `--backend auto` falls back).
pub fn is_no_adapter(message: &str) -> bool {
    message.starts_with(NO_ADAPTER)
}

/// One adapter as `wgnn info --adapters` lists it.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    pub name: String,
    /// Vulkan, Metal, Dx12, Gl, ...
    pub backend: String,
    /// discrete, integrated, virtual, cpu or other.
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    /// False when the adapter cannot run these kernels (no compute shaders, as on some GL
    /// drivers, or too-small workgroup limits); never chosen.
    pub compute: bool,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_storage_buffers_per_shader_stage: u32,
    pub max_compute_workgroups_per_dimension: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroup_storage_size: u32,
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, {}; driver {} {}): max storage binding {}, max buffer {}, {} storage buffers/stage, {} workgroups/dim, {} invocations/workgroup, {} workgroup memory{}",
            self.name,
            self.backend,
            self.device_type,
            self.driver,
            self.driver_info,
            bytes_text(self.max_storage_buffer_binding_size),
            bytes_text(self.max_buffer_size),
            self.max_storage_buffers_per_shader_stage,
            self.max_compute_workgroups_per_dimension,
            self.max_compute_invocations_per_workgroup,
            bytes_text(u64::from(self.max_compute_workgroup_storage_size)),
            if self.compute {
                ""
            } else {
                "; cannot run wgnn's compute kernels"
            }
        )
    }
}

fn device_type_name(t: wgpu::DeviceType) -> &'static str {
    match t {
        wgpu::DeviceType::DiscreteGpu => "discrete",
        wgpu::DeviceType::IntegratedGpu => "integrated",
        wgpu::DeviceType::VirtualGpu => "virtual",
        wgpu::DeviceType::Cpu => "cpu",
        wgpu::DeviceType::Other => "other",
    }
}

fn summarize(adapter: &wgpu::Adapter) -> AdapterSummary {
    let info = adapter.get_info();
    let limits = adapter.limits();
    AdapterSummary {
        name: info.name,
        backend: format!("{:?}", info.backend),
        device_type: device_type_name(info.device_type).to_string(),
        driver: info.driver,
        driver_info: info.driver_info,
        compute: supports_compute(adapter),
        max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
        max_buffer_size: limits.max_buffer_size,
        max_storage_buffers_per_shader_stage: limits.max_storage_buffers_per_shader_stage,
        max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
        max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
        max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
    }
}

fn adapter_label(info: &wgpu::AdapterInfo) -> String {
    format!(
        "{} ({:?}, {})",
        info.name,
        info.backend,
        device_type_name(info.device_type)
    )
}

fn supports_compute(adapter: &wgpu::Adapter) -> bool {
    adapter
        .get_downlevel_capabilities()
        .flags
        .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        && runs_our_kernels(&adapter.limits())
}

fn enumerate(backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    // One instance per backend set for the whole process: creating instances is slow and some
    // drivers print a warning each time.
    static INSTANCES: Mutex<Vec<(wgpu::Backends, Arc<wgpu::Instance>)>> = Mutex::new(Vec::new());
    let instance = match INSTANCES.lock() {
        Ok(mut instances) => match instances.iter().find(|(b, _)| *b == backends) {
            Some((_, instance)) => Arc::clone(instance),
            None => {
                let instance = Arc::new(new_instance(backends));
                instances.push((backends, Arc::clone(&instance)));
                instance
            }
        },
        Err(_) => Arc::new(new_instance(backends)),
    };
    pollster::block_on(instance.enumerate_adapters(backends))
}

fn new_instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// Adapters to choose from. GL probing is noisy (EGL complains on headless machines) and GL is
/// rarely the best choice, so it is only searched when no native API (Vulkan, Metal, DX12)
/// offers a compute-capable adapter. `WGPU_BACKEND` overrides this.
fn candidate_adapters() -> Vec<wgpu::Adapter> {
    if let Some(backends) = wgpu::Backends::from_env() {
        return enumerate(backends);
    }
    let native = enumerate(wgpu::Backends::PRIMARY);
    if native.iter().any(supports_compute) {
        native
    } else {
        enumerate(wgpu::Backends::all())
    }
}

/// Every adapter wgpu can see, best first.
pub fn list_adapters() -> Vec<AdapterSummary> {
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    let mut adapters = enumerate(backends);
    adapters.sort_by_key(rank);
    adapters.iter().map(summarize).collect()
}

/// Lower is better: discrete > integrated > virtual > other > cpu, native APIs before GL.
fn rank(adapter: &wgpu::Adapter) -> (u8, u8) {
    let info = adapter.get_info();
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    (kind, u8::from(info.backend == wgpu::Backend::Gl))
}

/// For `--backend auto`: the name of the adapter that would be chosen when it is a software
/// rasterizer (llvmpipe, WARP ...), which runs compute shaders far slower than wgnn's CPU path.
/// `None` when a hardware adapter would be chosen, when one was named explicitly (argument or
/// env `WGNN_ADAPTER`), or when there is no adapter at all.
pub fn auto_adapter_is_software(wanted: Option<&str>) -> Option<String> {
    let named = wanted.is_some()
        || std::env::var("WGNN_ADAPTER")
            .ok()
            .is_some_and(|s| !s.trim().is_empty());
    if named {
        return None;
    }
    let info = choose_adapter(None).ok()?.get_info();
    (info.device_type == wgpu::DeviceType::Cpu).then_some(info.name)
}

/// The adapter a runtime is created on: natively [`choose_adapter`]; in a browser the one
/// `navigator.gpu.requestAdapter()` gives (there is no list to choose from).
async fn find_adapter(wanted: Option<&str>) -> Result<wgpu::Adapter> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        choose_adapter(wanted)
    }
    #[cfg(target_arch = "wasm32")]
    {
        browser_adapter(wanted).await
    }
}

/// The browser's WebGPU adapter (high-performance preference); `wanted` must be part of its
/// name when given. No `navigator.gpu` (a browser without WebGPU) is "no GPU adapter found", so
/// `Backend::Auto` runs on the CPU.
#[cfg(target_arch = "wasm32")]
async fn browser_adapter(wanted: Option<&str>) -> Result<wgpu::Adapter> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::BROWSER_WEBGPU;
    let instance = wgpu::Instance::new(desc);
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..wgpu::RequestAdapterOptions::default()
        })
        .await
        .map_err(|_| {
            Error::Gpu(format!(
                "{NO_ADAPTER}: the browser offers no WebGPU adapter (navigator.gpu is absent or \
                 requestAdapter() found none)"
            ))
        })?;
    let name = adapter.get_info().name;
    if let Some(w) = wanted {
        if !name.to_lowercase().contains(&w.to_lowercase()) {
            return Err(Error::Gpu(format!(
                "{NO_ADAPTER} matching '{w}' (the browser's adapter is '{name}')"
            )));
        }
    }
    if !supports_compute(&adapter) {
        return Err(Error::Gpu(format!(
            "{NO_ADAPTER} that can run wgnn's compute kernels (the browser's adapter '{name}' has too small limits)"
        )));
    }
    Ok(adapter)
}

/// The adapter named by `wanted` (a case-insensitive substring), else by env `WGNN_ADAPTER`,
/// else the best one that runs wgnn's kernels.
fn choose_adapter(wanted: Option<&str>) -> Result<wgpu::Adapter> {
    let from_env = std::env::var("WGNN_ADAPTER")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let wanted = wanted.map(str::to_string).or(from_env);
    let mut adapters = candidate_adapters();
    adapters.sort_by_key(rank);
    let names = adapters
        .iter()
        .map(|a| format!("{} ({:?})", a.get_info().name, a.get_info().backend))
        .collect::<Vec<_>>();
    let usable = adapters.into_iter().filter(supports_compute);
    let chosen = match &wanted {
        Some(w) => {
            let w = w.to_lowercase();
            usable
                .into_iter()
                .find(|a| a.get_info().name.to_lowercase().contains(&w))
        }
        None => usable.into_iter().next(),
    };
    chosen.ok_or_else(|| {
        let available = if names.is_empty() {
            "wgpu sees no adapters".to_string()
        } else {
            format!("available: {}", names.join(", "))
        };
        match wanted {
            Some(w) => Error::Gpu(format!(
                "{NO_ADAPTER} matching '{w}' that can run wgnn's compute kernels ({available})"
            )),
            None => Error::Gpu(format!(
                "{NO_ADAPTER} that can run wgnn's compute kernels ({available})"
            )),
        }
    })
}

/// Caps below the adapter's own limits, so batch splitting and folded dispatch grids can be
/// exercised (and tested) on any machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitOverrides {
    /// Largest buffer any binding may cover.
    pub max_buffer_bytes: Option<u64>,
    /// Largest workgroup count per dispatch dimension.
    pub max_workgroups_per_dimension: Option<u32>,
    /// Keep every BatchNormalization as its own kernel (tests compare both ways).
    pub no_batch_norm_folding: bool,
    /// Cap the loop iterations of one invocation, as llvmpipe does (tests split recurrent time
    /// loops on any adapter).
    pub loop_iterations: Option<u32>,
}

/// llvmpipe (lavapipe) ends every loop of an invocation once all its loops together have run
/// 65,535 iterations (gallivm's `LP_MAX_TGSI_LOOP_ITERATIONS`), silently: longer time loops
/// would compute wrong values there.
const LLVMPIPE_LOOP_ITERATIONS: u32 = 65_535;

/// The loop-iteration cap of the adapter `info` describes, if it has one.
fn loop_iteration_cap(info: &wgpu::AdapterInfo) -> Option<u32> {
    let llvmpipe = [&info.name, &info.driver]
        .iter()
        .any(|s| s.to_ascii_lowercase().contains("llvmpipe"));
    llvmpipe.then_some(LLVMPIPE_LOOP_ITERATIONS)
}

fn plan_limits(
    limits: &wgpu::Limits,
    info: Option<&wgpu::AdapterInfo>,
    overrides: LimitOverrides,
) -> PlanLimits {
    let mut max_binding = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size)
        // Shaders index with u32 elements of 4 bytes.
        .min(u64::from(u32::MAX));
    if let Some(cap) = overrides.max_buffer_bytes {
        max_binding = max_binding.min(cap);
    }
    let mut max_workgroups = limits.max_compute_workgroups_per_dimension;
    if let Some(cap) = overrides.max_workgroups_per_dimension {
        max_workgroups = max_workgroups.min(cap.max(1));
    }
    PlanLimits {
        max_binding_bytes: max_binding,
        max_workgroups_per_dim: max_workgroups,
        max_storage_buffers_per_stage: limits.max_storage_buffers_per_shader_stage,
        fold_batch_norm: !overrides.no_batch_norm_folding,
        loop_iterations: [info.and_then(loop_iteration_cap), overrides.loop_iterations]
            .into_iter()
            .flatten()
            .min(),
    }
}

/// What the kernels need beyond WebGPU's downlevel defaults: 16x16 GEMM workgroups, 12,800
/// bytes of workgroup memory (the recurrent training loop's staged state and mask starts; the
/// GEMM tiles take 8,320) and 5 storage buffers in the recurrent inference loop.
fn runs_our_kernels(limits: &wgpu::Limits) -> bool {
    limits.max_compute_invocations_per_workgroup >= 256
        && limits.max_compute_workgroup_size_x >= 64
        && limits.max_compute_workgroup_size_y >= 16
        && limits.max_compute_workgroup_storage_size >= 12800
        && limits.max_storage_buffers_per_shader_stage >= 5
}

/// A model's GPU state: device, kernels, weights, and a plan per batch size.
/// `Send + Sync`; concurrent `run` calls take turns on the plan cache.
pub struct GpuRuntime {
    ctx: DeviceContext,
    adapter: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    plan_limits: PlanLimits,
    /// Items per submit; larger batches are split.
    max_items: usize,
    model_name: String,
    node_count: usize,
    /// Held across a batch's readback: an `async` lock (see `Model`).
    plans: futures_intrusive::sync::Mutex<HashMap<usize, GpuPlan>>,
    /// Errors reported outside error scopes (device lost, uncaptured validation errors).
    device_errors: Arc<Mutex<Vec<String>>>,
}

impl GpuRuntime {
    /// Creates the device on the chosen adapter, uploads the weights and compiles the kernels.
    /// Blocks until the device is ready ([`GpuRuntime::new_async`] is the same without blocking).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(graph: &Graph, adapter: Option<&str>) -> Result<Self> {
        Self::with_limits(graph, adapter, LimitOverrides::default())
    }

    /// [`GpuRuntime::new`] as a future: what a browser awaits.
    pub async fn new_async(graph: &Graph, adapter: Option<&str>) -> Result<Self> {
        Self::with_limits_async(graph, adapter, LimitOverrides::default()).await
    }

    /// Like `new`, but no buffer may exceed `bytes` (for exercising batch splitting).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_max_buffer_bytes(graph: &Graph, adapter: Option<&str>, bytes: u64) -> Result<Self> {
        let overrides = LimitOverrides {
            max_buffer_bytes: Some(bytes),
            ..LimitOverrides::default()
        };
        Self::with_limits(graph, adapter, overrides)
    }

    /// Like `new`, with limits capped below the adapter's own.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_limits(
        graph: &Graph,
        adapter: Option<&str>,
        overrides: LimitOverrides,
    ) -> Result<Self> {
        pollster::block_on(Self::with_limits_async(graph, adapter, overrides))
    }

    /// [`GpuRuntime::with_limits`] as a future.
    pub async fn with_limits_async(
        graph: &Graph,
        adapter: Option<&str>,
        overrides: LimitOverrides,
    ) -> Result<Self> {
        let adapter = find_adapter(adapter).await?;
        let mut info = adapter.get_info();
        if info.name.is_empty() {
            // Browsers may withhold the adapter's description.
            info.name = if info.device_type == wgpu::DeviceType::Cpu {
                "unnamed fallback (software) adapter".into()
            } else {
                "unnamed adapter".into()
            };
        }
        let limits = adapter.limits();
        let plan_limits = plan_limits(&limits, Some(&info), overrides);
        // Fails early, naming the layer, if one item does not fit.
        let max_items = Plan::max_items(graph, plan_limits)?;

        let (device, queue, device_errors) = open_device(&adapter, &limits, &info.name).await?;

        let scope = ErrorScopes::push(&device);
        let weights = upload_weights(&device, graph, plan_limits)?;
        let dummy = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("unused binding"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let mut pipelines = Pipelines::new();
        for kernel in kernels_used(&Plan::build(graph, 1, plan_limits)?) {
            pipelines.ensure(&device, kernel);
        }
        scope
            .check("compiling kernels and uploading weights")
            .await?;

        let runtime = GpuRuntime {
            ctx: DeviceContext {
                device,
                queue,
                pipelines,
                weights,
                dummy,
                uniform_stride: executor::uniform_stride(&limits),
            },
            adapter: info,
            limits,
            plan_limits,
            max_items,
            model_name: graph.name.clone(),
            node_count: graph.nodes.len(),
            plans: futures_intrusive::sync::Mutex::new(HashMap::new(), false),
            device_errors,
        };
        runtime.check_device()?;
        Ok(runtime)
    }

    /// The adapter's name and backend, e.g. `NVIDIA GeForce RTX 4090 (Vulkan)`.
    pub fn adapter_name(&self) -> String {
        format!("{} ({:?})", self.adapter.name, self.adapter.backend)
    }

    /// Items per submit before a batch is split.
    pub fn max_batch_per_submit(&self) -> usize {
        self.max_items
    }

    /// Batch sizes with a built plan, ascending (each is built once, then reused).
    pub fn cached_batch_sizes(&self) -> Vec<usize> {
        let mut sizes: Vec<usize> = pollster::block_on(self.plans.lock())
            .keys()
            .copied()
            .collect();
        sizes.sort_unstable();
        sizes
    }

    /// The plan this runtime would run for `batch` items (one sub-batch), as text.
    pub fn describe_plan(&self, graph: &Graph, batch: usize) -> Result<String> {
        let label = adapter_label(&self.adapter);
        describe(
            graph,
            batch,
            &label,
            &self.limits,
            self.plan_limits,
            self.max_items,
        )
    }

    /// Runs `graph` (the model this runtime was created for) on prepared batches, one per
    /// graph input; returns every output. Blocks until the GPU is done ([`GpuRuntime::run_async`]
    /// is the same without blocking).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn run(&self, graph: &Graph, inputs: &[PreparedInput]) -> Result<Vec<ArrayD<f32>>> {
        pollster::block_on(self.run_async(graph, inputs))
    }

    /// [`GpuRuntime::run`] as a future. Calls take turns on the plan cache (a lock held across
    /// the readback): in a single-threaded browser, await one before starting the next.
    pub async fn run_async(
        &self,
        graph: &Graph,
        inputs: &[PreparedInput],
    ) -> Result<Vec<ArrayD<f32>>> {
        self.check_graph(graph)?;
        check_inputs(graph, inputs)?;
        let batch = crate::input::common_batch(inputs)?;
        let mut values: Vec<Vec<f32>> = graph
            .outputs
            .iter()
            .map(|p| Vec::with_capacity(batch * graph.value(p.value).elements()))
            .collect();

        let mut plans = self.plans.lock().await;
        let chunk = self.max_items.max(1);
        let mut start = 0;
        while start < batch {
            let end = (start + chunk).min(batch);
            let parts;
            let sub = if start == 0 && end == batch {
                inputs
            } else {
                parts = inputs
                    .iter()
                    .map(|x| x.slice(start, end))
                    .collect::<Vec<_>>();
                &parts[..]
            };
            let outs = self.run_chunk(&mut plans, graph, sub).await?;
            for (all, part) in values.iter_mut().zip(outs) {
                all.extend_from_slice(&part);
            }
            start = end;
        }
        drop(plans);
        graph
            .outputs
            .iter()
            .zip(values)
            .map(|(p, v)| {
                let mut shape = vec![batch];
                shape.extend_from_slice(&graph.value(p.value).shape);
                ArrayD::from_shape_vec(IxDyn(&shape), v)
                    .map_err(|e| Error::Internal(format!("output of the wrong size: {e}")))
            })
            .collect()
    }

    /// GPU time of each dispatch op of one batch of `inputs` (at most one submit's worth of
    /// items), in plan order, with the op's layer and kernel: what `wgnn bench --profile`
    /// prints. Needs an adapter with timestamp queries.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile(&self, graph: &Graph, inputs: &[PreparedInput]) -> Result<Vec<DispatchTime>> {
        if !self
            .ctx
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            return Err(Error::Gpu(format!(
                "adapter {} has no timestamp queries: dispatches cannot be timed",
                self.adapter_name()
            )));
        }
        self.check_graph(graph)?;
        check_inputs(graph, inputs)?;
        let batch = crate::input::common_batch(inputs)?.min(self.max_items.max(1));
        let sub: Vec<_> = inputs.iter().map(|x| x.slice(0, batch)).collect();
        let mut plans = pollster::block_on(self.plans.lock());
        let scope = ErrorScopes::push(&self.ctx.device);
        let plan = self.plan_for(&mut plans, graph, batch)?;
        let bytes = input_bytes(&sub)?;
        let times = pollster::block_on(plan.profile(&self.ctx, &bytes));
        pollster::block_on(scope.check(&format!("timing a batch of {batch}")))?;
        self.check_device()?;
        let times = times?;
        let dispatches = plan.plan.ops.iter().filter_map(|op| match op {
            plan::Op::Dispatch(d) => Some(d),
            _ => None,
        });
        Ok(dispatches
            .zip(times)
            .map(|(d, ms)| DispatchTime {
                layer: graph
                    .nodes
                    .get(d.node)
                    .map_or_else(String::new, |n| n.name.clone()),
                kernel: d.kernel.name().to_string(),
                grid: d.grid,
                batch,
                ms,
            })
            .collect())
    }

    /// `graph` is the model this runtime holds the weights of.
    fn check_graph(&self, graph: &Graph) -> Result<()> {
        if graph.name != self.model_name || graph.nodes.len() != self.node_count {
            return Err(Error::Gpu(format!(
                "this GPU runtime was created for model '{}', not '{}'",
                self.model_name, graph.name
            )));
        }
        Ok(())
    }

    /// The plan for `batch` items, built and cached on first use.
    fn plan_for<'p>(
        &self,
        plans: &'p mut HashMap<usize, GpuPlan>,
        graph: &Graph,
        batch: usize,
    ) -> Result<&'p GpuPlan> {
        Ok(match plans.entry(batch) {
            std::collections::hash_map::Entry::Occupied(cached) => cached.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                let plan = Plan::build(graph, batch, self.plan_limits)?;
                slot.insert(GpuPlan::new(&self.ctx, plan)?)
            }
        })
    }

    async fn run_chunk(
        &self,
        plans: &mut HashMap<usize, GpuPlan>,
        graph: &Graph,
        inputs: &[PreparedInput],
    ) -> Result<Vec<Vec<f32>>> {
        let batch = crate::input::common_batch(inputs)?;
        let scope = ErrorScopes::push(&self.ctx.device);
        let plan = self.plan_for(plans, graph, batch)?;
        let bytes = input_bytes(inputs)?;
        let result = plan.execute(&self.ctx, &bytes).await;
        let scoped = scope.check(&format!("running a batch of {batch}")).await;
        self.check_device()?;
        scoped?;
        result
    }

    fn check_device(&self) -> Result<()> {
        check_device(&self.device_errors, &self.adapter.name)
    }
}

/// One timed dispatch op of [`GpuRuntime::profile`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct DispatchTime {
    /// The graph node (layer) it belongs to.
    pub layer: String,
    pub kernel: String,
    /// Workgroups in x, y, z.
    pub grid: [u32; 3],
    /// Items in the timed batch.
    pub batch: usize,
    /// GPU time between the pass's two timestamps.
    pub ms: f64,
}

/// Each prepared input's bytes, as the plan uploads them.
fn input_bytes(inputs: &[PreparedInput]) -> Result<Vec<&[u8]>> {
    inputs
        .iter()
        .map(|input| -> Result<&[u8]> {
            Ok(match input {
                PreparedInput::Float(x) => {
                    let x = x.as_slice().ok_or_else(|| {
                        Error::Input("float input is not in standard layout".into())
                    })?;
                    bytemuck::cast_slice(x)
                }
                PreparedInput::Ids(ids) => {
                    let ids = ids.as_slice().ok_or_else(|| {
                        Error::Input("token ids are not in standard layout".into())
                    })?;
                    bytemuck::cast_slice(ids)
                }
            })
        })
        .collect()
}

/// The device and queue on `adapter` with its own limits, and the log that errors outside an
/// error scope (and a lost device) are written to.
async fn open_device(
    adapter: &wgpu::Adapter,
    limits: &wgpu::Limits,
    name: &str,
) -> Result<(wgpu::Device, wgpu::Queue, Arc<Mutex<Vec<String>>>)> {
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: Some("wgnn"),
            // Timestamps where the adapter has them, for `wgnn bench --profile`.
            required_features: adapter.features() & wgpu::Features::TIMESTAMP_QUERY,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        })
        .await
        .map_err(|e| Error::Gpu(format!("creating a device on {name}: {e}")))?;
    let device_errors = Arc::new(Mutex::new(Vec::new()));
    // Without a handler wgpu panics on errors outside an error scope.
    let errors = Arc::clone(&device_errors);
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
        if let Ok(mut errors) = errors.lock() {
            errors.push(one_line(&e));
        }
    }));
    let errors = Arc::clone(&device_errors);
    device.set_device_lost_callback(move |reason, message| {
        if let Ok(mut errors) = errors.lock() {
            errors.push(format!("device lost ({reason:?}): {message}"));
        }
    });
    Ok((device, queue, device_errors))
}

/// The first error the device logged since the last check, as an `Error::Gpu`.
fn check_device(device_errors: &Mutex<Vec<String>>, adapter: &str) -> Result<()> {
    let errors = match device_errors.lock() {
        Ok(mut errors) => std::mem::take(&mut *errors),
        Err(_) => return Err(Error::Gpu("GPU error log poisoned".into())),
    };
    match errors.first() {
        None => Ok(()),
        Some(first) => Err(Error::Gpu(format!(
            "{} on {adapter}: {first}",
            if first.starts_with("device lost") {
                "the GPU device was lost"
            } else {
                "GPU error"
            }
        ))),
    }
}

/// Validation and out-of-memory error scopes around a piece of work; `check` turns what they
/// caught into an `Error::Gpu` instead of a panic.
struct ErrorScopes {
    // Fields drop in declaration order, and a guard dropped on an early return pops its
    // scope: the scope pushed last comes first.
    out_of_memory: wgpu::ErrorScopeGuard,
    validation: wgpu::ErrorScopeGuard,
}

impl ErrorScopes {
    fn push(device: &wgpu::Device) -> Self {
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out_of_memory = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        ErrorScopes {
            validation,
            out_of_memory,
        }
    }

    async fn check(self, doing: &str) -> Result<()> {
        // Popped in reverse order of pushing.
        let oom = self.out_of_memory.pop().await;
        let validation = self.validation.pop().await;
        if let Some(e) = oom {
            return Err(Error::Gpu(format!(
                "out of GPU memory while {doing}: {}",
                one_line(&e)
            )));
        }
        if let Some(e) = validation {
            return Err(Error::Gpu(format!(
                "GPU validation error while {doing}: {}",
                one_line(&e)
            )));
        }
        Ok(())
    }
}

/// wgpu errors span several lines ("Validation Error", then the cause chain); messages here are
/// one line.
fn one_line(e: &wgpu::Error) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "Validation Error")
        .collect::<Vec<_>>()
        .join("; ")
}

fn kernels_used(plan: &Plan) -> Vec<Kernel> {
    let mut kernels: Vec<Kernel> = plan
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::Dispatch(d) => Some(d.kernel),
            Op::Clear { .. } | Op::Copy { .. } => None,
        })
        .collect();
    kernels.sort();
    kernels.dedup();
    kernels
}

fn upload_weights(
    device: &wgpu::Device,
    graph: &Graph,
    limits: PlanLimits,
) -> Result<HashMap<weights::WeightKey, wgpu::Buffer>> {
    let mut buffers = HashMap::new();
    for spec in weights::weight_specs(graph, limits.fold_batch_norm) {
        let layer = &graph.nodes[spec.key.node];
        let bytes = 4 * spec.len as u64;
        if bytes > limits.max_binding_bytes {
            return Err(Error::Gpu(format!(
                "layer '{}' ({}): {} weights need {}, above the adapter's limit of {} per buffer",
                layer.name,
                layer.class,
                spec.key.role.name(),
                bytes_text(bytes),
                bytes_text(limits.max_binding_bytes)
            )));
        }
        let values = weights::weight_values(graph, spec.key, limits.fold_batch_norm)?;
        let mut contents: Vec<u8> = bytemuck::cast_slice(&values).to_vec();
        // Empty or tiny arrays still need a valid 16-byte binding.
        contents.resize(contents.len().max(16).div_ceil(16) * 16, 0);
        let label = format!("{}.{}", layer.name, spec.key.role.name());
        let buffer = wgpu::util::DeviceExt::create_buffer_init(
            device,
            &wgpu::util::BufferInitDescriptor {
                label: Some(&label),
                contents: &contents,
                usage: wgpu::BufferUsages::STORAGE,
            },
        );
        buffers.insert(spec.key, buffer);
    }
    Ok(buffers)
}

fn check_inputs(graph: &Graph, inputs: &[PreparedInput]) -> Result<()> {
    if inputs.len() != graph.inputs.len() {
        return Err(Error::Input(format!(
            "model '{}' takes {} input(s), got {}",
            graph.name,
            graph.inputs.len(),
            inputs.len()
        )));
    }
    for (port, input) in graph.inputs.iter().zip(inputs) {
        let info = graph.value(port.value);
        let (shape, dtype) = match input {
            PreparedInput::Float(x) => (x.shape(), DType::F32),
            PreparedInput::Ids(ids) => (ids.shape(), DType::Ids),
        };
        if dtype != info.dtype || shape.get(1..) != Some(info.shape.as_slice()) {
            return Err(Error::Input(format!(
                "model '{}' input '{}' expects {} shaped (N, {:?}), found {} shaped {shape:?}",
                graph.name,
                port.name,
                info.dtype.name(),
                info.shape,
                dtype.name()
            )));
        }
    }
    Ok(())
}

fn describe(
    graph: &Graph,
    batch: usize,
    adapter: &str,
    limits: &wgpu::Limits,
    plan_limits: PlanLimits,
    max_items: usize,
) -> Result<String> {
    let batch = batch.max(1);
    let per_submit = batch.min(max_items.max(1));
    let plan = Plan::build(graph, per_submit, plan_limits)?;
    let submits = batch.div_ceil(per_submit);
    let header = format!(
        "GPU plan for model '{}', batch {batch}{}\nadapter: {adapter}; max storage binding {}, {} workgroups/dim; up to {} items per submit",
        graph.name,
        if submits > 1 {
            format!(" as {submits} submits of up to {per_submit} items")
        } else {
            String::new()
        },
        bytes_text(plan_limits.max_binding_bytes),
        plan_limits.max_workgroups_per_dim,
        max_items
    );
    Ok(plan.describe(graph, &header, executor::uniform_stride(limits)))
}

/// The plan `wgnn info MODEL --plan` prints: per layer the kernels, workgroup grids and buffers,
/// then buffer sizes and total GPU memory. Uses the chosen adapter's limits (no device is
/// created); without an adapter, WebGPU's default limits.
pub fn describe_plan(graph: &Graph, batch: usize, adapter: Option<&str>) -> Result<String> {
    let (info, limits) = match choose_adapter(adapter) {
        Ok(a) => (Some(a.get_info()), a.limits()),
        Err(Error::Gpu(msg)) if is_no_adapter(&msg) && adapter.is_none() => {
            (None, wgpu::Limits::default())
        }
        Err(e) => return Err(e),
    };
    let label = info.as_ref().map_or_else(
        || "no adapter found: WebGPU default limits".to_string(),
        adapter_label,
    );
    let plan_limits = plan_limits(&limits, info.as_ref(), LimitOverrides::default());
    let max_items = Plan::max_items(graph, plan_limits)?;
    describe(graph, batch, &label, &limits, plan_limits, max_items)
}
