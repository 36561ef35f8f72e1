//! The optimizer step on the GPU: Keras 3's update rules (the CPU's `train::optim`) over
//! parameter *arenas*, one dispatch per rule for all parameters, plus three small reductions
//! when clipnorm or global_clipnorm needs gradient norms.
//!
//! Buffers (f32 unless said otherwise):
//! - `params`, `grads` and each state arena (`optimizer_state_arenas`) share one
//!   [`ArenaLayout`]: every trainable parameter concatenated, each starting at a multiple of
//!   [`ARENA_ALIGN`] floats, zeros between. A 64-float block therefore lies in one parameter,
//!   which the norm reduction relies on.
//! - `grad_sq`, only with lookup tables (Embedding): per element of each sparse parameter, the
//!   sum over the batch's lookups of the squared row gradient, in its own compact layout
//!   (`ArenaLayout::sq_offsets`). TensorFlow keeps such a gradient as unsummed rows
//!   (`IndexedSlices`); where an id repeats, Adam's, RMSprop's and Adagrad's squares and the
//!   clipping norms are of the rows, not of their sum, so the dense sum alone is not enough.
//! - `ctl` (u32 words): [`STEP_WORDS`] per-step words the CPU writes before each submit
//!   ([`step_words`]), then [`SEGMENT_WORDS`] per parameter (offset, len, grad_sq offset or
//!   u32::MAX, 0) written once ([`ArenaLayout::ctl_init`]), then each parameter's sum of squares
//!   and their total (written by the norm kernels). One buffer rather than three keeps the
//!   biggest kernel (Adam with amsgrad, RMSprop centered with momentum) at 7 storage bindings,
//!   under WebGPU's default of 8.

// Called by the training plan, which is not wired in yet.
use crate::error::{Error, Result};
use crate::gpu::kernels::{Kernel, LINEAR_THREADS};
use crate::gpu::plan::BufRef;
use crate::train::optim::{Clip, OptimizerSpec, Rule};

use super::{linear_workgroups, model_word, Emit};

/// Every parameter starts at a multiple of this many floats (256 bytes) in each arena.
pub(crate) const ARENA_ALIGN: usize = 64;
/// Per-step words at the start of `ctl`: [learning rate, Adam's step size, 0, ...] as f32 bits.
pub(crate) const STEP_WORDS: usize = 8;
/// Words per parameter in ctl's segment table.
pub(crate) const SEGMENT_WORDS: usize = 4;
const NO_SQ: u32 = u32::MAX;

/// Where each trainable parameter lives in the arenas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArenaLayout {
    pub offsets: Vec<usize>,
    pub lens: Vec<usize>,
    /// Floats per arena, a multiple of `ARENA_ALIGN`.
    pub total: usize,
    /// Each lookup table's start in the grad_sq buffer; None for a dense gradient.
    pub sq_offsets: Vec<Option<usize>>,
    /// Floats in the grad_sq buffer (0 without lookup tables).
    pub sq_total: usize,
}

impl ArenaLayout {
    /// Parameters of `lens` floats, all with dense gradients.
    #[cfg(test)]
    pub fn new(lens: &[usize]) -> Self {
        Self::with_sparse(lens, &vec![false; lens.len()])
    }

    /// Parameters of `lens` floats; `sparse[k]` marks a lookup table whose gradient comes with
    /// its sums of squares in grad_sq.
    pub fn with_sparse(lens: &[usize], sparse: &[bool]) -> Self {
        assert_eq!(lens.len(), sparse.len(), "one sparse flag per parameter");
        let mut offsets = Vec::with_capacity(lens.len());
        let mut sq_offsets = Vec::with_capacity(lens.len());
        let (mut total, mut sq_total) = (0, 0);
        for (&len, &sparse) in lens.iter().zip(sparse) {
            offsets.push(total);
            total += len.next_multiple_of(ARENA_ALIGN);
            sq_offsets.push(sparse.then_some(sq_total));
            if sparse {
                sq_total += len.next_multiple_of(ARENA_ALIGN);
            }
        }
        ArenaLayout {
            offsets,
            lens: lens.to_vec(),
            total,
            sq_offsets,
            sq_total,
        }
    }

    /// Where the per-parameter sums of squares start in ctl; their total follows them.
    pub fn norms_at(&self) -> usize {
        STEP_WORDS + SEGMENT_WORDS * self.lens.len()
    }

    /// Words in the ctl buffer.
    pub fn ctl_words(&self) -> usize {
        self.norms_at() + self.lens.len() + 1
    }

    /// ctl before the first step: zero step words, the segment table, zero norms. `active`
    /// (one flag per parameter, None: all) leaves out parameters without a gradient in this
    /// plan: they keep their values and state, as the CPU's `Optimizer::apply` leaves them.
    pub fn ctl_init(&self, active: Option<&[bool]>) -> Vec<u32> {
        let mut words = vec![0u32; self.ctl_words()];
        for k in 0..self.lens.len() {
            let on = active.is_none_or(|a| a[k]);
            let at = STEP_WORDS + SEGMENT_WORDS * k;
            words[at] = self.offsets[k] as u32;
            words[at + 1] = if on { self.lens[k] as u32 } else { 0 };
            words[at + 2] = self.sq_offsets[k].map_or(NO_SQ, |o| o as u32);
        }
        words
    }

    /// One arena holding `values[k]` at parameter k's place, zeros elsewhere.
    pub fn pack(&self, values: &[&[f32]]) -> Vec<f32> {
        assert_eq!(values.len(), self.lens.len(), "one value per parameter");
        let mut arena = vec![0f32; self.total];
        for (k, v) in values.iter().enumerate() {
            assert_eq!(v.len(), self.lens[k], "parameter {k}'s length");
            arena[self.offsets[k]..self.offsets[k] + v.len()].copy_from_slice(v);
        }
        arena
    }

    /// Parameter k's values in an arena.
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    pub fn unpack<'a>(&self, arena: &'a [f32], k: usize) -> &'a [f32] {
        &arena[self.offsets[k]..self.offsets[k] + self.lens[k]]
    }
}

/// The state arenas `spec`'s rule keeps, in binding order, with their initial values: Keras's
/// slot names, in the order of the CPU `Optimizer`'s slots (`keras_variables` names them
/// `<variable>_<slot>`).
pub(crate) fn optimizer_state_arenas(spec: &OptimizerSpec) -> Vec<(&'static str, f32)> {
    match spec.rule {
        Rule::Sgd { momentum, .. } if momentum != 0.0 => vec![("momentum", 0.0)],
        Rule::Sgd { .. } => vec![],
        Rule::Adam(p) | Rule::AdamW(p) => {
            let mut s = vec![("momentum", 0.0), ("velocity", 0.0)];
            if p.amsgrad {
                s.push(("velocity_hat", 0.0));
            }
            s
        }
        Rule::RmsProp {
            momentum, centered, ..
        } => {
            let mut s = vec![("velocity", 0.0)];
            if momentum > 0.0 {
                s.push(("momentum", 0.0));
            }
            if centered {
                s.push(("average_gradient", 0.0));
            }
            s
        }
        Rule::Adagrad {
            initial_accumulator_value,
            ..
        } => vec![("accumulator", initial_accumulator_value as f32)],
    }
}

/// ctl's first `STEP_WORDS` words for the step after `iterations` completed ones (the CPU
/// `Optimizer::iterations()`): the learning rate (the constant, or the schedule at
/// `iterations`) and Adam's `lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)`, computed exactly as
/// `train::optim` does. Write them to ctl at offset 0 before each submit.
pub(crate) fn step_words(spec: &OptimizerSpec, iterations: i64) -> Vec<u32> {
    let lr = spec.learning_rate.at(iterations);
    let alpha = match spec.rule {
        Rule::Adam(p) | Rule::AdamW(p) => {
            let local_step = (iterations + 1) as f32;
            let beta_1_power = (p.beta_1 as f32).powf(local_step);
            let beta_2_power = (p.beta_2 as f32).powf(local_step);
            lr * (1.0 - beta_2_power).sqrt() / (1.0 - beta_1_power)
        }
        _ => 0.0,
    };
    let mut words = vec![0u32; STEP_WORDS];
    words[0] = lr.to_bits();
    words[1] = alpha.to_bits();
    words
}

/// The clip kind as the kernels code it (a bound that is not positive clips nothing).
fn clip_code(clip: Clip) -> (u32, f64) {
    match clip {
        Clip::Norm(c) if c > 0.0 => (1, c),
        Clip::GlobalNorm(c) if c > 0.0 => (2, c),
        Clip::Value(c) if c > 0.0 => (3, c),
        _ => (0, 0.0),
    }
}

/// Appends one optimizer step over the arenas: the norm reductions clipnorm or
/// global_clipnorm needs, then the rule's update (clipping, weight decay, update), all on
/// `layout`. `state` are the arenas of `optimizer_state_arenas(spec)` in that order; `grad_sq`
/// is required when the layout has lookup tables. The caller writes `step_words` into ctl
/// before each submit; Keras's iteration count is the caller's to advance.
#[allow(clippy::too_many_arguments)]
pub(crate) fn optimizer_update(
    e: &mut dyn Emit,
    spec: &OptimizerSpec,
    layout: &ArenaLayout,
    params: BufRef,
    grads: BufRef,
    grad_sq: Option<BufRef>,
    state: &[BufRef],
    ctl: BufRef,
) -> Result<()> {
    let who = format!("optimizer '{}'", spec.name);
    let arenas = optimizer_state_arenas(spec);
    if state.len() != arenas.len() {
        return Err(Error::Internal(format!(
            "{who}: {} keeps {} state arenas, given {}",
            spec.rule.class_name(),
            arenas.len(),
            state.len()
        )));
    }
    let sparse = layout.sq_offsets.iter().any(Option::is_some);
    if sparse && grad_sq.is_none() {
        return Err(Error::Internal(format!(
            "{who}: a lookup table's gradient needs its sums of squares (grad_sq)"
        )));
    }
    let (clip_mode, c) = clip_code(spec.clip);
    if sparse && clip_mode == 3 {
        // TensorFlow clamps each lookup's row before they are summed; the summed gradient
        // cannot be clamped after the fact.
        return Err(Error::Train(format!(
            "{who}: clipvalue on an Embedding's gradient is not supported on the GPU (train on the CPU, or use clipnorm or global_clipnorm)"
        )));
    }
    if layout.total == 0 {
        return Ok(());
    }
    let limits = e.limits();
    let bytes = 4 * layout.total.max(layout.sq_total) as u64;
    if bytes > limits.max_binding_bytes {
        return Err(Error::Gpu(format!(
            "{who}: the parameters take {bytes} bytes, more than one buffer binding allows ({})",
            limits.max_binding_bytes
        )));
    }
    let total = model_word(&who, "parameters", layout.total)?;
    let segments = model_word(&who, "parameter count", layout.lens.len())?;
    let norms_at = model_word(&who, "control words", layout.ctl_words())? - segments - 1;
    let sq = grad_sq.unwrap_or(grads);
    let blocks = layout.total / ARENA_ALIGN;

    if clip_mode == 1 || clip_mode == 2 {
        let partials = e.scratch(usize::MAX, "optimizer clip partial sums", blocks);
        let norm_params = vec![segments, blocks as u32, norms_at];
        let buffers = vec![grads, sq, partials, ctl];
        e.dispatch_model(
            &who,
            Kernel::OptimBlockSums,
            buffers.clone(),
            norm_params.clone(),
            blocks as u64,
            format!("sums of squares of {blocks} gradient blocks"),
        )?;
        e.dispatch_model(
            &who,
            Kernel::OptimSegmentSums,
            buffers.clone(),
            norm_params.clone(),
            u64::from(segments),
            format!("the gradient norms of {segments} parameters"),
        )?;
        if clip_mode == 2 {
            e.dispatch_model(
                &who,
                Kernel::OptimTotal,
                buffers,
                norm_params,
                1,
                "the global gradient norm".into(),
            )?;
        }
        e.release(partials);
    }

    // k0..k3: the rule's constants, cast as train::optim::update casts them.
    let (kernel, nesterov, k) = match spec.rule {
        Rule::Sgd { momentum, nesterov } => (
            Kernel::OptimSgd {
                momentum: momentum != 0.0,
            },
            nesterov,
            [momentum as f32, 0.0, 0.0, 0.0],
        ),
        Rule::Adam(p) | Rule::AdamW(p) => (
            Kernel::OptimAdam { amsgrad: p.amsgrad },
            false,
            [
                (1.0 - p.beta_1) as f32,
                (1.0 - p.beta_2) as f32,
                p.epsilon as f32,
                0.0,
            ],
        ),
        Rule::RmsProp {
            rho,
            momentum,
            epsilon,
            centered,
        } => (
            Kernel::OptimRmsProp {
                momentum: momentum > 0.0,
                centered,
            },
            false,
            [
                rho as f32,
                (1.0 - rho) as f32,
                epsilon as f32,
                momentum as f32,
            ],
        ),
        Rule::Adagrad { epsilon, .. } => {
            (Kernel::OptimAdagrad, false, [0.0, 0.0, epsilon as f32, 0.0])
        }
    };
    let inv = if c > 0.0 { (1.0 / c) as f32 } else { 0.0 };
    let params_words = vec![
        segments,
        total,
        norms_at,
        clip_mode,
        (c as f32).to_bits(),
        inv.to_bits(),
        u32::from(spec.weight_decay.is_some()),
        (spec.weight_decay.unwrap_or(0.0) as f32).to_bits(),
        u32::from(nesterov),
        k[0].to_bits(),
        k[1].to_bits(),
        k[2].to_bits(),
        k[3].to_bits(),
    ];
    let mut buffers = vec![params, grads, sq, ctl];
    buffers.extend_from_slice(state);
    e.dispatch_model(
        &who,
        kernel,
        buffers,
        params_words,
        linear_workgroups(layout.total, LINEAR_THREADS),
        format!(
            "{} update of {} parameters ({} floats)",
            spec.rule.class_name(),
            segments,
            layout.total
        ),
    )
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use ndarray::{ArrayD, IxDyn};
    use serde_json::{json, Value};

    use super::*;
    use crate::gpu::grad::test_emit::TestEmit;
    use crate::gpu::testing::runner;
    use crate::graph::ParamStore;
    use crate::train::optim::Optimizer;
    use crate::train::{ParamGrads, Rng};

    /// Lengths not multiples of 64; the last is a 30x10 table in the sparse cases.
    const SHAPES: [&[usize]; 3] = [&[1], &[7, 10], &[30, 10]];
    const STEPS: i64 = 3;

    fn spec(v: Value) -> OptimizerSpec {
        OptimizerSpec::from_keras(&v, std::path::Path::new("test")).expect("optimizer spec")
    }

    fn cases() -> Vec<(&'static str, OptimizerSpec, bool)> {
        let c = |class: &str, config: Value| spec(json!({"class_name": class, "config": config}));
        let schedule = json!({"module": "keras.optimizers.schedules", "class_name": "ExponentialDecay",
            "config": {"initial_learning_rate": 0.01, "decay_steps": 2, "decay_rate": 0.5}});
        vec![
            ("sgd", c("SGD", json!({})), false),
            ("sgd momentum", c("SGD", json!({"momentum": 0.9})), false),
            (
                "sgd nesterov",
                c("SGD", json!({"momentum": 0.9, "nesterov": true})),
                false,
            ),
            ("adam", c("Adam", json!({})), false),
            ("adam amsgrad", c("Adam", json!({"amsgrad": true})), false),
            ("adamw", c("AdamW", json!({})), false),
            ("rmsprop", c("RMSprop", json!({})), false),
            (
                "rmsprop momentum",
                c("RMSprop", json!({"momentum": 0.5})),
                false,
            ),
            (
                "rmsprop centered",
                c("RMSprop", json!({"centered": true})),
                false,
            ),
            (
                "rmsprop centered momentum",
                c("RMSprop", json!({"centered": true, "momentum": 0.5})),
                false,
            ),
            ("adagrad", c("Adagrad", json!({})), false),
            (
                "adam clipvalue",
                c("Adam", json!({"clipvalue": 0.3})),
                false,
            ),
            ("adam clipnorm", c("Adam", json!({"clipnorm": 2.0})), false),
            (
                "sgd momentum global_clipnorm",
                c("SGD", json!({"momentum": 0.9, "global_clipnorm": 2.0})),
                false,
            ),
            (
                "rmsprop weight decay",
                c("RMSprop", json!({"weight_decay": 0.05})),
                false,
            ),
            (
                "adam schedule",
                c("Adam", json!({"learning_rate": schedule.clone()})),
                false,
            ),
            (
                "sgd schedule weight decay",
                c(
                    "SGD",
                    json!({"learning_rate": schedule, "weight_decay": 0.1}),
                ),
                false,
            ),
            ("sparse sgd", c("SGD", json!({})), true),
            (
                "sparse sgd momentum",
                c("SGD", json!({"momentum": 0.9})),
                true,
            ),
            ("sparse adam", c("Adam", json!({})), true),
            (
                "sparse adam amsgrad",
                c("Adam", json!({"amsgrad": true})),
                true,
            ),
            (
                "sparse rmsprop centered momentum",
                c("RMSprop", json!({"centered": true, "momentum": 0.5})),
                true,
            ),
            ("sparse adagrad", c("Adagrad", json!({})), true),
            (
                "sparse adam clipnorm",
                c("Adam", json!({"clipnorm": 2.0})),
                true,
            ),
            (
                "sparse adamw global_clipnorm",
                c("AdamW", json!({"global_clipnorm": 2.0})),
                true,
            ),
        ]
    }

    fn close(what: &str, got: &[f32], want: &[f32]) -> f32 {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let mut worst = 0f32;
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let err = (g - w).abs();
            assert!(
                err <= 1e-4 * (1.0 + w.abs()),
                "{what}[{i}]: GPU {g}, CPU {w}"
            );
            worst = worst.max(err / (1.0 + w.abs()));
        }
        worst
    }

    /// Every rule and option, 3 steps on the CPU `Optimizer` and on the GPU from the same
    /// weights and gradients: the weights and every state arena agree.
    #[test]
    fn optimizer_updates_match_the_cpu() {
        let Some(mut r) = runner() else { return };
        for (name, spec, sparse) in cases() {
            let mut rng = Rng::new(7);
            let mut store = ParamStore::default();
            let mut ids = Vec::new();
            for (k, shape) in SHAPES.iter().enumerate() {
                let n: usize = shape.iter().product();
                let v: Vec<f32> = (0..n).map(|_| rng.normal() * 0.5).collect();
                ids.push(store.add(
                    format!("p{k}"),
                    ArrayD::from_shape_vec(IxDyn(shape), v).unwrap(),
                    true,
                ));
            }
            let lens: Vec<usize> = SHAPES.iter().map(|s| s.iter().product()).collect();
            let layout = ArenaLayout::with_sparse(&lens, &[false, false, sparse]);
            let values: Vec<&[f32]> = ids.iter().map(|&id| store.slice(id)).collect();
            let mut params = layout.pack(&values);
            let arenas = optimizer_state_arenas(&spec);
            let mut state: Vec<Vec<f32>> = arenas
                .iter()
                .map(|&(_, init)| {
                    let mut a = vec![0f32; layout.total];
                    for k in 0..lens.len() {
                        let at = layout.offsets[k];
                        a[at..at + lens[k]].fill(init);
                    }
                    a
                })
                .collect();
            let mut cpu = Optimizer::new(spec.clone(), &store);
            let mut worst = 0f32;
            for step in 0..STEPS {
                // The same gradients for both; the table's as lookups with repeated ids.
                let mut grads = ParamGrads::new(&store);
                let mut sq = vec![0f32; layout.sq_total.max(1)];
                for (k, &id) in ids.iter().enumerate() {
                    if sparse && k == 2 {
                        let lookups = [3usize, 7, 3, 29, 3, 12, 7];
                        let vals: Vec<f32> =
                            (0..lookups.len() * 10).map(|_| rng.normal()).collect();
                        grads.add_rows(id, SHAPES[k], &lookups, &vals);
                        let at = layout.sq_offsets[k].unwrap();
                        for (s, &row) in lookups.iter().enumerate() {
                            for j in 0..10 {
                                let g = vals[s * 10 + j];
                                sq[at + row * 10 + j] += g * g;
                            }
                        }
                    } else {
                        let g: Vec<f32> = (0..lens[k]).map(|_| rng.normal()).collect();
                        grads.add(id, ArrayD::from_shape_vec(IxDyn(SHAPES[k]), g).unwrap());
                    }
                }
                let dense: Vec<&[f32]> = ids
                    .iter()
                    .map(|&id| grads.get(id).unwrap().as_slice().unwrap())
                    .collect();
                let grad_arena = layout.pack(&dense);
                let mut ctl = layout.ctl_init(None);
                ctl[..STEP_WORDS].copy_from_slice(&step_words(&spec, cpu.iterations()));
                let ctl: Vec<f32> = ctl.into_iter().map(f32::from_bits).collect();

                let mut buffers = vec![params.clone(), grad_arena, sq, ctl];
                buffers.extend(state.iter().cloned());
                let mut e = TestEmit::new(r.limits, buffers.len());
                let state_refs: Vec<BufRef> = (4..buffers.len()).map(BufRef::Input).collect();
                optimizer_update(
                    &mut e,
                    &spec,
                    &layout,
                    BufRef::Input(0),
                    BufRef::Input(1),
                    sparse.then_some(BufRef::Input(2)),
                    &state_refs,
                    BufRef::Input(3),
                )
                .unwrap();
                let out = e.run(&mut r, &buffers).unwrap();
                params = out[0].clone();
                state = out[4..].to_vec();
                cpu.apply(&mut store, &mut grads).unwrap();

                for (k, &id) in ids.iter().enumerate() {
                    let what = format!("{name}, step {step}, p{k}");
                    worst = worst.max(close(&what, layout.unpack(&params, k), store.slice(id)));
                }
                let vars = cpu.keras_variables();
                for (j, &(slot, _)) in arenas.iter().enumerate() {
                    for k in 0..lens.len() {
                        let label = format!("p{k}_{slot}");
                        let want = &vars.iter().find(|(n, _)| *n == label).unwrap().1;
                        let what = format!("{name}, step {step}, {label}");
                        let got = layout.unpack(&state[j], k);
                        worst = worst.max(close(&what, got, want.as_slice().unwrap()));
                    }
                }
                // Padding stays zero.
                assert!(
                    (0..lens.len()).all(|k| params[layout.offsets[k] + lens[k]
                        ..layout.offsets[k] + lens[k].next_multiple_of(64)]
                        .iter()
                        .all(|&v| v == 0.0)),
                    "{name}: padding"
                );
            }
            eprintln!("{name}: worst relative error {worst:e}");
        }
    }

    /// A parameter left out of ctl's table (no gradient in the plan) keeps its value and
    /// state, as `Optimizer::apply` leaves a parameter without a gradient; the others update.
    #[test]
    fn parameters_left_out_are_untouched() {
        let Some(mut r) = runner() else { return };
        let spec = spec(json!({"class_name": "AdamW", "config": {"clipnorm": 0.5}}));
        let mut store = ParamStore::default();
        let a = store.add("a", ArrayD::from_elem(IxDyn(&[5]), 0.7), true);
        let b = store.add("b", ArrayD::from_elem(IxDyn(&[70]), -0.3), true);
        let layout = ArenaLayout::new(&[5, 70]);
        let params = layout.pack(&[store.slice(a), store.slice(b)]);
        let mut grads = ParamGrads::new(&store);
        let g: Vec<f32> = (0..70).map(|i| (i as f32 * 0.37).sin()).collect();
        grads.add(b, ArrayD::from_shape_vec(IxDyn(&[70]), g.clone()).unwrap());
        // The left-out parameter's gradient is garbage the kernels must not read.
        let grad_arena = layout.pack(&[&[9.0; 5], &g]);
        let mut ctl = layout.ctl_init(Some(&[false, true]));
        let mut cpu = Optimizer::new(spec.clone(), &store);
        ctl[..STEP_WORDS].copy_from_slice(&step_words(&spec, cpu.iterations()));
        let ctl: Vec<f32> = ctl.into_iter().map(f32::from_bits).collect();
        // Marked state in the left-out parameter, the CPU's zeros in the other.
        let m0 = layout.pack(&[&[0.25; 5], &[0.0; 70]]);
        let buffers = vec![params, grad_arena, vec![0.0], ctl, m0.clone(), m0];
        let mut e = TestEmit::new(r.limits, buffers.len());
        let state = [BufRef::Input(4), BufRef::Input(5)];
        let (p, g, c) = (BufRef::Input(0), BufRef::Input(1), BufRef::Input(3));
        optimizer_update(&mut e, &spec, &layout, p, g, None, &state, c).unwrap();
        let out = e.run(&mut r, &buffers).unwrap();
        cpu.apply(&mut store, &mut grads).unwrap();
        assert_eq!(
            layout.unpack(&out[0], 0),
            store.slice(a),
            "left out: weights"
        );
        assert!(
            layout.unpack(&out[4], 0).iter().all(|&m| m == 0.25),
            "left out: momentum"
        );
        close("updated", layout.unpack(&out[0], 1), store.slice(b));
    }

    /// Every CPU slot has its arena, in the CPU's order.
    #[test]
    fn state_arenas_are_the_cpu_slots() {
        for (name, spec, _) in cases() {
            let mut store = ParamStore::default();
            store.add("w", ArrayD::zeros(IxDyn(&[2])), true);
            let cpu = Optimizer::new(spec.clone(), &store);
            let slots: Vec<String> = cpu
                .keras_variables()
                .into_iter()
                .filter_map(|(n, _)| n.strip_prefix("w_").map(str::to_string))
                .collect();
            let arenas: Vec<String> = optimizer_state_arenas(&spec)
                .iter()
                .map(|(n, _)| n.to_string())
                .collect();
            assert_eq!(arenas, slots, "{name}");
        }
    }

    #[test]
    fn layout_aligns_every_parameter() {
        let l = ArenaLayout::with_sparse(&[1, 70, 300, 64], &[false, true, false, true]);
        assert_eq!(l.offsets, [0, 64, 192, 512]);
        assert_eq!(l.total, 576);
        assert_eq!(l.sq_offsets, [None, Some(0), None, Some(128)]);
        assert_eq!(l.sq_total, 192);
        assert_eq!(ArenaLayout::new(&[3]).sq_offsets, [None]);
        let ctl = l.ctl_init(Some(&[true, true, false, true]));
        assert_eq!(ctl.len(), 8 + 16 + 5);
        assert_eq!(
            &ctl[8..24],
            &[0, 1, NO_SQ, 0, 64, 70, 0, 0, 192, 0, NO_SQ, 0, 512, 64, 128, 0]
        );
    }

    #[test]
    fn clipvalue_with_a_lookup_table_is_refused() {
        let spec = spec(json!({"class_name": "Adam", "config": {"clipvalue": 1.0}}));
        let layout = ArenaLayout::with_sparse(&[10], &[true]);
        let limits = crate::gpu::plan::PlanLimits {
            max_binding_bytes: 1 << 30,
            max_workgroups_per_dim: 65535,
            max_storage_buffers_per_stage: 8,
            fold_batch_norm: true,
            loop_iterations: None,
        };
        let mut e = TestEmit::new(limits, 5);
        let state = [BufRef::Input(3), BufRef::Input(4)];
        let err = optimizer_update(
            &mut e,
            &spec,
            &layout,
            BufRef::Input(0),
            BufRef::Input(1),
            Some(BufRef::Input(2)),
            &state,
            BufRef::Input(5),
        )
        .unwrap_err();
        assert!(err.to_string().contains("clipvalue"), "{err}");
    }
}
