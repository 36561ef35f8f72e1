// SimpleRNN / LSTM / GRU training on the GPU (concatenated after common.wgsl and
// act_grad.wgsl; lowered by gpu/grad/recurrent.rs, which matches cpu/grad/recurrent).
//
// The input projections x·W + b of every step and direction come from one GEMM before the
// forward's time loop; `rnn_train_forward` then runs the WHOLE time loop in one dispatch: each
// workgroup owns `rows_per_group` sequences of one direction (direction = workgroup index /
// groups), keeps their h in workgroup memory (ping-pong planes; or, when the units do not fit,
// reads it back from `saved`, which holds it anyway), and steps with barriers between steps.
// `rnn_train_backward` is its mirror image: backpropagation through time in one dispatch,
// writing dL/d(pre-activations) dZ for every step, from which dW, dR, db and dx are GEMMs and
// column sums over all steps. No atomics: every value has one writer, so runs are
// deterministic.
//
// Layouts ([n][t][d][...]: batch row, time step in TIME order, direction):
//   saved: Z [n][t][d][gate][unit] at 0: the pre-activations. SimpleRNN / LSTM: x·W + b + h·R.
//          GRU: z and r blocks x·W + b + h·R (+ b_rec); h block x·W + b_in only.
//          h_in [n][t][d][unit] at hin_off: the state each step started from.
//          c_in (LSTM) at cin_off: the carry each step started from.
//          hr (GRU) at hr_off: reset_after h·R_h + b_rh; reset_after=False (r ⊙ h)·R_h.
//          rh (GRU reset_after=False) at rh_off: r ⊙ h_in, the operand of R_h.
//   recurrent_kernel: [k][d][gate][unit] (one direction: Keras's (units, gates*units)).
//   bias: [d][gate][unit] input biases, then (has_rec_bias) [d][gate][unit] recurrent ones.
//   y / dy: return_sequences [n][pos][d][unit] (pos: processing step, or T-1-step where
//          reverse_bits has d), else [n][d][unit]; dy_merged: no [d] (sum / average merges).
//   dz: like Z; aux: dZ of a reset_after GRU's recurrent side (h block scaled by r) at 0, then
//          the running dh [n][d][unit], dc, and the carried dL/d(previous output) at
//          dstate_off.
//   cell_masks: the cell's dropout masks drawn on the host for this step (binding 6, both loops):
//          the recurrent ones [d][block][n][unit] at rec_mask_off, rec_blocks per direction
//          (0: none, 1: one shared by every gate block, else one per gate block). h_prev is
//          multiplied by its block's mask before each recurrent kernel block; the input masks
//          are applied to x before the input projection (`rnn_dropout` and recurrent_gemm.wgsl).

struct RnnTrainParams {
    act: Act,
    ract: Act,
    batch: u32,
    timesteps: u32,
    units: u32,
    gates: u32,
    dirs: u32,
    rows_per_group: u32,
    // 0 SimpleRNN, 1 LSTM, 2 GRU reset_after, 3 GRU reset_after=False.
    cell: u32,
    // 1 masked (token id 0 at (n, t)), 2 zeros at masked steps (else the previous output),
    // 4 return_sequences, 8 staged in workgroup memory, 16 recurrent bias, 32 dy merged,
    // 64 initial states given (in saved's first steps), 128 final states wanted (forward: into
    // saved at dstate_off), 256 final states' gradients given (backward: in aux's dh, dc).
    flags: u32,
    backwards_bits: u32,
    reverse_bits: u32,
    hin_off: u32,
    cin_off: u32,
    hr_off: u32,
    rh_off: u32,
    dy_scale: f32,
    dstate_off: u32,
    rec_blocks: u32,
    rec_mask_off: u32,
    // This dispatch's processing steps [step_begin, step_end): the plan splits a loop where
    // the adapter caps one invocation's loop iterations (llvmpipe); the steps hand over
    // through `saved` (forward) and aux's running dh, dc (backward).
    step_begin: u32,
    step_end: u32,
}

const THREADS: u32 = 128u;
const WG_FLOATS: u32 = 3072u;

const MASKED: u32 = 1u;
const ZERO_MASKED: u32 = 2u;
const SEQUENCES: u32 = 4u;
const STAGED: u32 = 8u;
const REC_BIAS: u32 = 16u;
const DY_MERGED: u32 = 32u;
const INIT_STATE: u32 = 64u;
const FINAL_STATE: u32 = 128u;
const STATE_GRADS: u32 = 256u;

@group(0) @binding(0) var<storage, read_write> saved: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read> rk: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read> cell_masks: array<f32>;
@group(0) @binding(7) var<uniform> p: RnnTrainParams;

var<workgroup> stage: array<f32, 3072>;
// Forward with a mask: each group row's first live processing step (timesteps if none). Before
// it a masked step outputs zeros, even when an initial state is given; after it, the state.
var<workgroup> first_live: array<u32, 128>;

fn flag(bit: u32) -> bool {
    return (p.flags & bit) != 0u;
}

fn timestep(s: u32, d: u32) -> u32 {
    return select(s, p.timesteps - 1u - s, ((p.backwards_bits >> d) & 1u) != 0u);
}

fn out_pos(s: u32, d: u32) -> u32 {
    return select(s, p.timesteps - 1u - s, ((p.reverse_bits >> d) & 1u) != 0u);
}

fn live_at(n: u32, t: u32) -> bool {
    if (!flag(MASKED)) {
        return true;
    }
    return ids[n * p.timesteps + t] != 0u;
}

fn unit_row(n: u32, t: u32, d: u32) -> u32 {
    return ((n * p.timesteps + t) * p.dirs + d) * p.units;
}

fn gate_row(n: u32, t: u32, d: u32) -> u32 {
    return ((n * p.timesteps + t) * p.dirs + d) * p.gates * p.units;
}

fn rk_at(k: u32, d: u32, col: u32) -> f32 {
    return rk[(k * p.dirs + d) * p.gates * p.units + col];
}

// The recurrent dropout mask gate block q multiplies unit k of row n's h_prev by (1 without).
fn rec_mask(n: u32, d: u32, q: u32, k: u32) -> f32 {
    if (p.rec_blocks == 0u) {
        return 1.0;
    }
    let blk = d * p.rec_blocks + min(q, p.rec_blocks - 1u);
    return cell_masks[p.rec_mask_off + (blk * p.batch + n) * p.units + k];
}

// ---- forward ------------------------------------------------------------------------------

// h_prev[k] of group row r at step parity `parity`.
fn f_h(r: u32, k: u32, n: u32, t: u32, d: u32, parity: u32) -> f32 {
    if (flag(STAGED)) {
        return stage[(parity * p.rows_per_group + r) * p.units + k];
    }
    return saved[p.hin_off + unit_row(n, t, d) + k];
}

// h_prev · R for columns j + g * units, g < count (h_prev times gate block g's recurrent
// dropout mask, if any).
fn f_dots(r: u32, n: u32, t: u32, d: u32, parity: u32, j: u32, count: u32) -> vec4<f32> {
    var acc = vec4<f32>(0.0);
    let u = p.units;
    let masked = p.rec_blocks != 0u;
    for (var k = 0u; k < u; k++) {
        var h = vec4<f32>(f_h(r, k, n, t, d, parity));
        if (masked) {
            h *= vec4<f32>(
                rec_mask(n, d, 0u, k),
                rec_mask(n, d, 1u, k),
                rec_mask(n, d, 2u, k),
                rec_mask(n, d, 3u, k),
            );
        }
        let base = (k * p.dirs + d) * p.gates * u + j;
        acc.x = fma(h.x, rk[base], acc.x);
        if (count > 1u) {
            acc.y = fma(h.y, rk[base + u], acc.y);
        }
        if (count > 2u) {
            acc.z = fma(h.z, rk[base + 2u * u], acc.z);
        }
        if (count > 3u) {
            acc.w = fma(h.w, rk[base + 3u * u], acc.w);
        }
    }
    return acc;
}

fn barriers() {
    storageBarrier();
    workgroupBarrier();
}

@compute @workgroup_size(128, 1, 1)
fn rnn_train_forward(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let rpg = p.rows_per_group;
    let u = p.units;
    let groups = (p.batch + rpg - 1u) / rpg;
    let block = linear_workgroup(wg, nwg);
    if (block >= groups * p.dirs) {
        return;
    }
    let d = block / groups;
    let n0 = (block % groups) * rpg;
    let items = min(rpg, p.batch - n0) * u;
    let lstm = p.cell == 1u;
    let g_cols = p.gates * u;

    let t0 = timestep(p.step_begin, d);
    for (var it = li; it < items; it += THREADS) {
        let r = it / u;
        let j = it % u;
        let n = n0 + r;
        var h0 = 0.0;
        if (flag(INIT_STATE) || p.step_begin > 0u) {
            // The given initial state, or where the previous dispatch left off.
            h0 = saved[p.hin_off + unit_row(n, t0, d) + j];
        } else {
            saved[p.hin_off + unit_row(n, t0, d) + j] = 0.0;
            if (lstm) {
                saved[p.cin_off + unit_row(n, t0, d) + j] = 0.0;
            }
        }
        if (flag(STAGED)) {
            stage[((p.step_begin % 2u) * rpg + r) * u + j] = h0;
        }
    }
    if (flag(MASKED)) {
        for (var r = li; r < min(rpg, p.batch - n0); r += THREADS) {
            var first = p.timesteps;
            for (var s = 0u; s < p.timesteps; s++) {
                if (live_at(n0 + r, timestep(s, d))) {
                    first = s;
                    break;
                }
            }
            first_live[r] = first;
        }
    }
    barriers();

    for (var s = p.step_begin; s < p.step_end; s++) {
        let t = timestep(s, d);
        let parity = s % 2u;
        if (p.cell == 3u) {
            // GRU reset_after=False: z and r first; the candidate needs r ⊙ h of every unit.
            for (var it = li; it < items; it += THREADS) {
                let r = it / u;
                let j = it % u;
                let n = n0 + r;
                let zb = gate_row(n, t, d);
                let acc = f_dots(r, n, t, d, parity, j, 2u);
                let pz = saved[zb + j] + acc.x;
                let pr = saved[zb + u + j] + acc.y;
                saved[zb + j] = pz;
                saved[zb + u + j] = pr;
                let h_rec = f_h(r, j, n, t, d, parity) * rec_mask(n, d, 2u, j);
                let rh = activate(pr, p.ract) * h_rec;
                saved[p.rh_off + unit_row(n, t, d) + j] = rh;
            }
            barriers();
        }
        for (var it = li; it < items; it += THREADS) {
            let r = it / u;
            let j = it % u;
            let n = n0 + r;
            let zb = gate_row(n, t, d);
            let ub = unit_row(n, t, d);
            let hp = f_h(r, j, n, t, d, parity);
            var hn = 0.0;
            var cp = 0.0;
            var cn = 0.0;
            switch p.cell {
                case 0u: {
                    let pre = saved[zb + j] + f_dots(r, n, t, d, parity, j, 1u).x;
                    saved[zb + j] = pre;
                    hn = activate(pre, p.act);
                }
                case 1u: {
                    let acc = f_dots(r, n, t, d, parity, j, 4u);
                    let zi = saved[zb + j] + acc.x;
                    let zf = saved[zb + u + j] + acc.y;
                    let zc = saved[zb + 2u * u + j] + acc.z;
                    let zo = saved[zb + 3u * u + j] + acc.w;
                    saved[zb + j] = zi;
                    saved[zb + u + j] = zf;
                    saved[zb + 2u * u + j] = zc;
                    saved[zb + 3u * u + j] = zo;
                    cp = saved[p.cin_off + ub + j];
                    cn = activate(zf, p.ract) * cp + activate(zi, p.ract) * activate(zc, p.act);
                    hn = activate(zo, p.ract) * activate(cn, p.act);
                }
                case 2u: {
                    let acc = f_dots(r, n, t, d, parity, j, 3u);
                    var b = vec3<f32>(0.0);
                    if (flag(REC_BIAS)) {
                        let rb = (p.dirs + d) * g_cols + j;
                        b = vec3<f32>(bias[rb], bias[rb + u], bias[rb + 2u * u]);
                    }
                    let pz = saved[zb + j] + acc.x + b.x;
                    let pr = saved[zb + u + j] + acc.y + b.y;
                    let hr = acc.z + b.z;
                    saved[zb + j] = pz;
                    saved[zb + u + j] = pr;
                    saved[p.hr_off + ub + j] = hr;
                    let zg = activate(pz, p.ract);
                    let rg = activate(pr, p.ract);
                    let hh = activate(saved[zb + 2u * u + j] + rg * hr, p.act);
                    hn = zg * hp + (1.0 - zg) * hh;
                }
                default: {
                    var acc = 0.0;
                    for (var k = 0u; k < u; k++) {
                        acc = fma(saved[p.rh_off + ub + k], rk_at(k, d, 2u * u + j), acc);
                    }
                    saved[p.hr_off + ub + j] = acc;
                    let zg = activate(saved[zb + j], p.ract);
                    let hh = activate(saved[zb + 2u * u + j] + acc, p.act);
                    hn = zg * hp + (1.0 - zg) * hh;
                }
            }
            // Keras's mask rule: a masked step keeps the state; its output repeats the previous
            // output (zeros before the first live step, which is the state after it), or is
            // zero.
            let live = live_at(n, t);
            let h_next = select(hp, hn, live);
            var out = h_next;
            if (!live && (flag(ZERO_MASKED) || s < first_live[r])) {
                out = 0.0;
            }
            if (s + 1u < p.timesteps) {
                let un = unit_row(n, timestep(s + 1u, d), d);
                saved[p.hin_off + un + j] = h_next;
                if (lstm) {
                    saved[p.cin_off + un + j] = select(cp, cn, live);
                }
            }
            if (flag(STAGED)) {
                stage[((1u - parity) * rpg + r) * u + j] = h_next;
            }
            if (flag(FINAL_STATE) && s + 1u == p.timesteps) {
                let fs = p.dstate_off + (n * p.dirs + d) * u + j;
                saved[fs] = h_next;
                if (lstm) {
                    saved[fs + p.batch * p.dirs * u] = select(cp, cn, live);
                }
            }
            if (flag(SEQUENCES)) {
                y[((n * p.timesteps + out_pos(s, d)) * p.dirs + d) * u + j] = out;
            } else if (s + 1u == p.timesteps) {
                y[(n * p.dirs + d) * u + j] = out;
            }
        }
        barriers();
    }
}

// ---- backward -----------------------------------------------------------------------------

@group(0) @binding(0) var<storage, read> s_in: array<f32>;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> dz: array<f32>;
@group(0) @binding(5) var<storage, read_write> aux: array<f32>;

// dL/d(this direction's output at processing step s), from the layer's output gradient.
fn incoming(n: u32, s: u32, d: u32, j: u32) -> f32 {
    let merged = flag(DY_MERGED);
    let stride = select(p.dirs, 1u, merged);
    let dd = select(d, 0u, merged);
    if (flag(SEQUENCES)) {
        let pos = out_pos(s, d);
        return dy[((n * p.timesteps + pos) * stride + dd) * p.units + j] * p.dy_scale;
    }
    if (s + 1u == p.timesteps) {
        return dy[(n * stride + dd) * p.units + j] * p.dy_scale;
    }
    return 0.0;
}

// Writes dL/dz at column `col` of (n, t, d) (group row r): `v` into dz, `rec` (the recurrent
// side's value) into aux for a reset_after GRU and into the stage.
fn put_dz(r: u32, zb: u32, col: u32, v: f32, rec: f32) {
    dz[zb + col] = v;
    if (p.cell == 2u) {
        aux[zb + col] = rec;
    }
    if (flag(STAGED)) {
        stage[r * p.gates * p.units + col] = rec;
    }
}

// The recurrent side's dL/dz at column `col` of (n, t, d), written this step.
fn dz_rec(r: u32, zb: u32, col: u32) -> f32 {
    if (flag(STAGED)) {
        return stage[r * p.gates * p.units + col];
    }
    if (p.cell == 2u) {
        return aux[zb + col];
    }
    return dz[zb + col];
}

@compute @workgroup_size(128, 1, 1)
fn rnn_train_backward(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let rpg = p.rows_per_group;
    let u = p.units;
    let groups = (p.batch + rpg - 1u) / rpg;
    let block = linear_workgroup(wg, nwg);
    if (block >= groups * p.dirs) {
        return;
    }
    let d = block / groups;
    let n0 = (block % groups) * rpg;
    let items = min(rpg, p.batch - n0) * u;
    // Each (row, unit)'s dL/dh and dL/dc of the state after the current step: read and
    // written only by the thread that owns the item.
    // And dL/d(the previous output) a masked step carries back to the live step that made it
    // (dropped before the first live step, where the output was a constant zero).
    let dc_off = p.dstate_off + p.batch * p.dirs * u;
    let carry_off = dc_off + p.batch * p.dirs * u;
    // (The final states' gradients, when given, are there already; a later dispatch of a
    // split loop continues from the previous one's.)
    let first = p.step_end == p.timesteps;
    for (var it = li; it < items && first; it += THREADS) {
        let at = ((n0 + it / u) * p.dirs + d) * u + it % u;
        if (!flag(STATE_GRADS)) {
            aux[p.dstate_off + at] = 0.0;
            aux[dc_off + at] = 0.0;
        }
        aux[carry_off + at] = 0.0;
    }
    // Columns of dz that reach h_prev through R (a reset_after=False GRU's candidate block
    // does so through r ⊙ h, in its own pass).
    var rec_cols = p.gates * u;
    if (p.cell == 3u) {
        rec_cols = 2u * u;
    }

    for (var s1 = p.step_end; s1 > p.step_begin; s1--) {
        let s = s1 - 1u;
        let t = timestep(s, d);
        for (var it = li; it < items; it += THREADS) {
            let r = it / u;
            let j = it % u;
            let n = n0 + r;
            let zb = gate_row(n, t, d);
            let ub = unit_row(n, t, d);
            let dh_at = p.dstate_off + (n * p.dirs + d) * u + j;
            let dc_at = dh_at + p.batch * p.dirs * u;
            let carry_at = dc_at + p.batch * p.dirs * u;
            let live = live_at(n, t);
            var dh = aux[dh_at];
            var carry = aux[carry_at];
            if (live || !flag(ZERO_MASKED)) {
                // A masked step's output repeats the previous one (or is zero).
                carry += incoming(n, s, d, j);
            }
            if (live) {
                dh += carry;
                carry = 0.0;
            }
            aux[carry_at] = carry;
            if (!live) {
                // The state passed through unchanged.
                for (var q = 0u; q < p.gates; q++) {
                    put_dz(r, zb, q * u + j, 0.0, 0.0);
                }
                aux[dh_at] = dh;
                continue;
            }
            switch p.cell {
                case 0u: {
                    let pre = s_in[zb + j];
                    let h = activate(pre, p.act);
                    let v = dh * derivative(pre, h, p.act);
                    put_dz(r, zb, j, v, v);
                    aux[dh_at] = 0.0;
                }
                case 1u: {
                    let zi = s_in[zb + j];
                    let zf = s_in[zb + u + j];
                    let zc = s_in[zb + 2u * u + j];
                    let zo = s_in[zb + 3u * u + j];
                    let ig = activate(zi, p.ract);
                    let fg = activate(zf, p.ract);
                    let gg = activate(zc, p.act);
                    let og = activate(zo, p.ract);
                    let cp = s_in[p.cin_off + ub + j];
                    let c = fg * cp + ig * gg;
                    let tc = activate(c, p.act);
                    let dc = aux[dc_at] + dh * og * derivative(c, tc, p.act);
                    aux[dc_at] = dc * fg;
                    let vi = dc * gg * derivative(zi, ig, p.ract);
                    let vf = dc * cp * derivative(zf, fg, p.ract);
                    let vc = dc * ig * derivative(zc, gg, p.act);
                    let vo = dh * tc * derivative(zo, og, p.ract);
                    put_dz(r, zb, j, vi, vi);
                    put_dz(r, zb, u + j, vf, vf);
                    put_dz(r, zb, 2u * u + j, vc, vc);
                    put_dz(r, zb, 3u * u + j, vo, vo);
                    aux[dh_at] = 0.0;
                }
                case 2u: {
                    let pz = s_in[zb + j];
                    let pr = s_in[zb + u + j];
                    let zg = activate(pz, p.ract);
                    let rg = activate(pr, p.ract);
                    let hr = s_in[p.hr_off + ub + j];
                    let ph = s_in[zb + 2u * u + j] + rg * hr;
                    let hh = activate(ph, p.act);
                    let hp = s_in[p.hin_off + ub + j];
                    let vz = dh * (hp - hh) * derivative(pz, zg, p.ract);
                    let vh = dh * (1.0 - zg) * derivative(ph, hh, p.act);
                    let vr = vh * hr * derivative(pr, rg, p.ract);
                    put_dz(r, zb, j, vz, vz);
                    put_dz(r, zb, u + j, vr, vr);
                    put_dz(r, zb, 2u * u + j, vh, vh * rg);
                    aux[dh_at] = dh * zg;
                }
                default: {
                    let pz = s_in[zb + j];
                    let zg = activate(pz, p.ract);
                    let ph = s_in[zb + 2u * u + j] + s_in[p.hr_off + ub + j];
                    let hh = activate(ph, p.act);
                    let hp = s_in[p.hin_off + ub + j];
                    let vz = dh * (hp - hh) * derivative(pz, zg, p.ract);
                    let vh = dh * (1.0 - zg) * derivative(ph, hh, p.act);
                    put_dz(r, zb, j, vz, vz);
                    put_dz(r, zb, 2u * u + j, vh, vh);
                    aux[dh_at] = dh * zg;
                }
            }
        }
        barriers();
        if (p.cell == 3u) {
            // d(r ⊙ h) = dz_h · R_hᵀ: the reset gate's dz and its share of dh_prev.
            for (var it = li; it < items; it += THREADS) {
                let r = it / u;
                let k = it % u;
                let n = n0 + r;
                if (!live_at(n, t)) {
                    continue;
                }
                let zb = gate_row(n, t, d);
                let ub = unit_row(n, t, d);
                var drh = 0.0;
                for (var j = 0u; j < u; j++) {
                    drh = fma(dz_rec(r, zb, 2u * u + j), rk_at(k, d, 2u * u + j), drh);
                }
                let pr = s_in[zb + u + k];
                let rg = activate(pr, p.ract);
                // R_h's operand is r ⊙ h_prev ⊙ (its recurrent dropout mask).
                let m = rec_mask(n, d, 2u, k);
                let v = drh * s_in[p.hin_off + ub + k] * m * derivative(pr, rg, p.ract);
                put_dz(r, zb, u + k, v, v);
                let dh_at = p.dstate_off + (n * p.dirs + d) * u + k;
                aux[dh_at] += drh * rg * m;
            }
            barriers();
        }
        // dL/dh_prev through h·R.
        for (var it = li; it < items; it += THREADS) {
            let r = it / u;
            let k = it % u;
            let n = n0 + r;
            if (!live_at(n, t)) {
                continue;
            }
            let zb = gate_row(n, t, d);
            var acc = 0.0;
            if (p.rec_blocks == 0u) {
                for (var col = 0u; col < rec_cols; col++) {
                    acc = fma(dz_rec(r, zb, col), rk_at(k, d, col), acc);
                }
            } else {
                // Each gate block read h_prev times its own mask.
                for (var q = 0u; q < rec_cols / u; q++) {
                    var part = 0.0;
                    for (var j = 0u; j < u; j++) {
                        let col = q * u + j;
                        part = fma(dz_rec(r, zb, col), rk_at(k, d, col), part);
                    }
                    acc = fma(part, rec_mask(n, d, q, k), acc);
                }
            }
            let dh_at = p.dstate_off + (n * p.dirs + d) * u + k;
            aux[dh_at] += acc;
        }
        barriers();
    }
}

// ---- block copy ---------------------------------------------------------------------------

struct BlockParams {
    rows: u32,
    cols: u32,
    src_off: u32,
    src_ld: u32,
    dst_off: u32,
    dst_ld: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> block_src: array<f32>;
@group(0) @binding(1) var<storage, read_write> block_dst: array<f32>;
@group(0) @binding(2) var<uniform> bp: BlockParams;

// dst[dst_off + r * dst_ld + c] = src[src_off + r * src_ld + c] for r < rows, c < cols.
@compute @workgroup_size(64, 1, 1)
fn rnn_block_copy(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    if (i >= bp.rows * bp.cols) {
        return;
    }
    let r = i / bp.cols;
    let c = i % bp.cols;
    block_dst[bp.dst_off + r * bp.dst_ld + c] = block_src[bp.src_off + r * bp.src_ld + c];
}

// ---- input dropout ------------------------------------------------------------------------

// The input dropout masks m [block][n][f] (at mask_off) on x or dx rows (n, t) of `width`:
//   mode 0 (expand): dst[block][(n, t)][f] = src[(n, t)][f] * m[block][n][f], every block;
//   mode 1 (reduce): dst[(n, t)][f] = Σ_block src[(n, t)][block][f] * m[block][n][f].
struct DropParams {
    rows: u32,
    width: u32,
    timesteps: u32,
    blocks: u32,
    mode: u32,
    mask_off: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> drop_src: array<f32>;
@group(0) @binding(1) var<storage, read> drop_mask: array<f32>;
@group(0) @binding(2) var<storage, read_write> drop_dst: array<f32>;
@group(0) @binding(3) var<uniform> dpp: DropParams;

fn drop_mask_at(block: u32, row: u32, f: u32) -> f32 {
    let seqs = dpp.rows / dpp.timesteps;
    return drop_mask[dpp.mask_off + (block * seqs + row / dpp.timesteps) * dpp.width + f];
}

@compute @workgroup_size(64, 1, 1)
fn rnn_dropout(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    let plane = dpp.rows * dpp.width;
    if (dpp.mode == 0u) {
        if (i >= plane * dpp.blocks) {
            return;
        }
        let block = i / plane;
        let at = i % plane;
        drop_dst[i] = drop_src[at] * drop_mask_at(block, at / dpp.width, at % dpp.width);
        return;
    }
    if (i >= plane) {
        return;
    }
    let row = i / dpp.width;
    let f = i % dpp.width;
    var sum = 0.0;
    for (var b = 0u; b < dpp.blocks; b++) {
        sum = fma(drop_src[(row * dpp.blocks + b) * dpp.width + f], drop_mask_at(b, row, f), sum);
    }
    drop_dst[i] = sum;
}
