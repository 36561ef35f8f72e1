// The optimizer update rules over the whole parameter arena, one thread per element (after
// common.wgsl, a header the Rust side writes per kernel — the flags, the state arenas, the
// uniform `p` — and optim_common.wgsl). Each element: gradient clipping, weight decay, then
// the rule, in the float32 operation order of src/train/optim/update.rs (Keras 3's
// update_step). The per-step learning rate and Adam's bias-corrected step size come from ctl,
// where the CPU writes them before each submit; elements of no segment (padding) are left alone.

struct OptimParams {
    segments: u32,
    total: u32,
    norms_at: u32,
    // 0 none, 1 clipnorm (per segment), 2 global_clipnorm, 3 clipvalue.
    clip_mode: u32,
    clip: f32,
    // (1 / clip) in f64, cast to f32, as Keras's global clip computes it.
    clip_inv: f32,
    decay: u32,
    wd: f32,
    nesterov: u32,
    // The rule's constants (see optimizer_update in gpu/grad/optim.rs).
    k0: f32,
    k1: f32,
    k2: f32,
    k3: f32,
}

@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read> grad_sq: array<f32>;
@group(0) @binding(3) var<storage, read> ctl: array<u32>;

const CLIP_NORM: u32 = 1u;
const CLIP_GLOBAL: u32 = 2u;
const CLIP_VALUE: u32 = 3u;

fn step_lr() -> f32 {
    return bitcast<f32>(ctl[0]);
}

fn step_alpha() -> f32 {
    return bitcast<f32>(ctl[1]);
}

// One element's gradient after clipping, and its square: g*g, or for a lookup table's
// segment the clipped sum over lookups of each row's squares (grad_sq).
struct Elem {
    ok: bool,
    sparse: bool,
    g: f32,
    gg: f32,
}

// Loads element i's gradient, clips it and decays the parameter; ok is false outside segments.
fn prepare(i: u32) -> Elem {
    var e = Elem(false, false, 0.0, 0.0);
    if (i >= p.total) {
        return e;
    }
    let k = segment_of(i);
    if (k == NO_SEGMENT) {
        return e;
    }
    e.ok = true;
    var g = grad[i];
    let sq_at = segment_sq(k);
    e.sparse = sq_at != NO_SQ;
    var sq = 0.0;
    if (e.sparse) {
        sq = grad_sq[sq_at + (i - segment_offset(k))];
    }
    let c = p.clip;
    if (p.clip_mode == CLIP_NORM) {
        // tf.clip_by_norm: g * c / max(norm, c).
        let l2sum = bitcast<f32>(ctl[p.norms_at + k]);
        let norm = select(l2sum, sqrt(l2sum), l2sum > 0.0);
        let bound = max(norm, c);
        g = (g * c) / bound;
        let s = c / bound;
        sq = sq * (s * s);
    } else if (p.clip_mode == CLIP_GLOBAL) {
        // c * min(1 / norm, 1 / c), NaN when the norm is not finite.
        let norm = sqrt(bitcast<f32>(ctl[p.norms_at + p.segments]));
        var inv = p.clip_inv;
        if (norm != 0.0) {
            inv = min(1.0 / norm, p.clip_inv);
        }
        var scale = c * inv;
        if (!is_finite_f32(norm)) {
            scale = nan_f32();
        }
        g = g * scale;
        sq = sq * (scale * scale);
    } else if (p.clip_mode == CLIP_VALUE) {
        // tf.clip_by_value, NaN staying NaN (sparse segments are refused on the Rust side).
        if (!is_nan_f32(g)) {
            g = max(min(g, c), -c);
        }
    }
    e.g = g;
    e.gg = select(g * g, sq, e.sparse);
    if (p.decay != 0u) {
        let x = param[i];
        param[i] = x - x * p.wd * step_lr();
    }
    return e;
}

@compute @workgroup_size(64, 1, 1)
fn optim_sgd(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    let e = prepare(i);
    if (!e.ok) {
        return;
    }
    let lr = step_lr();
    if (SGD_MOMENTUM) {
        // m = m * momentum - g * lr; var += m, or m * momentum - g * lr with Nesterov.
        let mom = p.k0;
        let g_lr = e.g * lr;
        let m = sgd_momentum[i] * mom - g_lr;
        sgd_momentum[i] = m;
        if (p.nesterov != 0u) {
            param[i] = param[i] + (m * mom - g_lr);
        } else {
            param[i] = param[i] + m;
        }
    } else {
        param[i] = param[i] - e.g * lr;
    }
}

@compute @workgroup_size(64, 1, 1)
fn optim_adam(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    let e = prepare(i);
    if (!e.ok) {
        return;
    }
    // k0 = 1 - beta_1, k1 = 1 - beta_2, k2 = epsilon (outside the square root, as Keras).
    var m = adam_m[i];
    m = m + (e.g - m) * p.k0;
    adam_m[i] = m;
    var v = adam_v[i];
    v = v + (e.gg - v) * p.k1;
    adam_v[i] = v;
    var vv = v;
    if (AMSGRAD) {
        vv = max(adam_vhat[i], v);
        adam_vhat[i] = vv;
    }
    param[i] = param[i] - (m * step_alpha()) / (sqrt(vv) + p.k2);
}

@compute @workgroup_size(64, 1, 1)
fn optim_rmsprop(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    let e = prepare(i);
    if (!e.ok) {
        return;
    }
    // k0 = rho, k1 = 1 - rho, k2 = epsilon, k3 = momentum.
    let rho = p.k0;
    let c = p.k1;
    let velocity = rho * rms_velocity[i] + c * e.gg;
    rms_velocity[i] = velocity;
    var denominator = velocity + p.k2;
    if (RMS_CENTERED) {
        let avg = rho * rms_average[i] + c * e.g;
        rms_average[i] = avg;
        denominator = velocity - avg * avg + p.k2;
    }
    let inc = (step_lr() * e.g) / sqrt(denominator);
    if (RMS_MOMENTUM) {
        let m = p.k3 * rms_momentum[i] + inc;
        rms_momentum[i] = m;
        param[i] = param[i] - m;
    } else {
        param[i] = param[i] - inc;
    }
}

@compute @workgroup_size(64, 1, 1)
fn optim_adagrad(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    let e = prepare(i);
    if (!e.ok) {
        return;
    }
    // k2 = epsilon.
    let acc = adagrad_accumulator[i] + e.gg;
    adagrad_accumulator[i] = acc;
    param[i] = param[i] - (step_lr() * e.g) / sqrt(acc + p.k2);
}
