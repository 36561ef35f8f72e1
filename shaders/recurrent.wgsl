// SimpleRNN / GRU / LSTM time loops (concatenated after common.wgsl). The input projection
// x_t * W + b for every timestep and both directions was computed before the loop by one GEMM
// (matmul.wgsl) into `xproj`, laid out (batch, time, direction, gate, unit). `sequence` then runs
// the WHOLE time loop in one dispatch: each workgroup owns `rows_per_group` sequences of one
// direction (direction = workgroup index / groups) and steps them with barriers between steps;
// recurrent matvec, gates and state update fused, one thread per (sequence, unit) item. Where an
// adapter caps the loop iterations of one invocation (llvmpipe: 65,535 in all), the plan splits
// the loop into dispatches of consecutive steps [step_begin, step_end) that hand the state over
// through `state`.
//
// `state` holds h twice (ping-pong by step parity, since every unit reads all of h_prev while
// others write h_next), then c, then the previous output, then (GRU reset_after=False) r ⊙ h_prev:
//   h[parity][dir][batch][unit], c[dir][batch][unit], out[dir][batch][unit], rh[dir][batch][unit].
// Each thread owns its items' c and out for the whole loop. When `staged`, h (and rh) live in
// workgroup memory instead and `state`'s h planes are read only at the start (zeros, or the
// initial states copied in by `copy_state`) and written at the last step: after step s the
// h is in plane (s + 1) % 2 either way.

struct RnnParams {
    act: Act,            // cell activation (tanh by default)
    recurrent_act: Act,  // LSTM / GRU gate activation (sigmoid by default)
    batch: u32,
    timesteps: u32,
    units: u32,
    gates: u32,          // 1 SimpleRNN, 3 GRU (z, r, h), 4 LSTM (i, f, c, o)
    directions: u32,
    masked: u32,         // 1: token id 0 at (n, t) masks that step
    zero_masked_output: u32,  // zeros at masked steps (Bidirectional with return_sequences)
    return_sequences: u32,
    // Bit d: direction d reads the sequence from the end (go_backwards).
    backwards_bits: u32,
    // Bit d: direction d writes step s at position T-1-s (the backward half of a Bidirectional).
    reverse_output_bits: u32,
    // 0 SimpleRNN, 1 LSTM, 2 GRU reset_after, 3 GRU reset_after=False.
    cell: u32,
    // 1: a reset_after GRU's recurrent biases follow the recurrent kernels ([dir][gate*units]).
    recurrent_bias: u32,
    rows_per_group: u32,
    // 1: h (and rh) of the group's sequences fit in workgroup memory.
    staged: u32,
    // This dispatch's processing steps.
    step_begin: u32,
    step_end: u32,
}

@group(0) @binding(0) var<storage, read> xproj: array<f32>;
// Recurrent kernels of all directions stacked: [dir][k in units][gate * units + unit].
// Then, for a reset_after GRU with a bias, the recurrent biases [dir][gate * units + unit].
@group(0) @binding(1) var<storage, read> recurrent_kernel: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: array<f32>;
// return_sequences: [batch][time][dir][unit]; else [batch][dir][unit].
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> ids: array<u32>;
@group(0) @binding(5) var<uniform> p: RnnParams;

// RNN_SEQUENCE_THREADS and RNN_SEQUENCE_WG_FLOATS in kernels.rs.
const THREADS: u32 = 128u;
var<workgroup> stage: array<f32, 3072>;

fn plane() -> u32 {
    return p.directions * p.batch * p.units;
}

// Where sequence n's unit k sits in a [dir][batch][unit] plane.
fn plane_index(dir: u32, n: u32, k: u32) -> u32 {
    return (dir * p.batch + n) * p.units + k;
}

// h_prev[k] of group row r (sequence n) at step parity `parity`.
fn h_at(r: u32, n: u32, dir: u32, k: u32, parity: u32) -> f32 {
    if (p.staged != 0u) {
        return stage[(parity * p.rows_per_group + r) * p.units + k];
    }
    return state[parity * plane() + plane_index(dir, n, k)];
}

// r ⊙ h_prev at unit k (GRU reset_after=False).
fn rh_at(r: u32, n: u32, dir: u32, k: u32) -> f32 {
    if (p.staged != 0u) {
        return stage[(2u * p.rows_per_group + r) * p.units + k];
    }
    return state[4u * plane() + plane_index(dir, n, k)];
}

// h_prev · R for the columns (first + g) * units + j, g < count.
fn dots(r: u32, n: u32, dir: u32, parity: u32, j: u32, first: u32, count: u32) -> vec4<f32> {
    let u = p.units;
    let gate_cols = p.gates * u;
    var acc = vec4<f32>(0.0);
    var row = dir * u * gate_cols + first * u + j;
    for (var k = 0u; k < u; k++) {
        let h = h_at(r, n, dir, k, parity);
        acc.x = fma(h, recurrent_kernel[row], acc.x);
        if (count > 1u) {
            acc.y = fma(h, recurrent_kernel[row + u], acc.y);
        }
        if (count > 2u) {
            acc.z = fma(h, recurrent_kernel[row + 2u * u], acc.z);
        }
        if (count > 3u) {
            acc.w = fma(h, recurrent_kernel[row + 3u * u], acc.w);
        }
        row += gate_cols;
    }
    return acc;
}

fn barriers() {
    storageBarrier();
    workgroupBarrier();
}

@compute @workgroup_size(128, 1, 1)
fn sequence(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let rpg = p.rows_per_group;
    let u = p.units;
    let groups = (p.batch + rpg - 1u) / rpg;
    let block = linear_workgroup(wg, nwg);
    if (block >= groups * p.directions) {
        return;
    }
    let dir = block / groups;
    let n0 = (block % groups) * rpg;
    let items = min(rpg, p.batch - n0) * u;
    let h_plane = plane();
    let gate_cols = p.gates * u;
    let staged = p.staged != 0u;
    let backwards = ((p.backwards_bits >> dir) & 1u) != 0u;
    let reversed_output = ((p.reverse_output_bits >> dir) & 1u) != 0u;

    if (staged) {
        // The state this dispatch starts from, into the plane of its first step's parity.
        let parity = p.step_begin % 2u;
        for (var it = li; it < items; it += THREADS) {
            let n = n0 + it / u;
            stage[parity * rpg * u + it] = state[parity * h_plane + plane_index(dir, n, it % u)];
        }
    }
    barriers();

    for (var s = p.step_begin; s < p.step_end; s++) {
        let t_in = select(s, p.timesteps - 1u - s, backwards);
        let parity = s % 2u;
        if (p.cell == 3u) {
            // GRU reset_after=False: the candidate reads (r ⊙ h_prev) R_h, which needs r of
            // every unit first.
            for (var it = li; it < items; it += THREADS) {
                let r = it / u;
                let j = it % u;
                let n = n0 + r;
                let x_row = ((n * p.timesteps + t_in) * p.directions + dir) * gate_cols;
                let pre = xproj[x_row + u + j] + dots(r, n, dir, parity, j, 1u, 1u).x;
                let rh = activate(pre, p.recurrent_act) * h_at(r, n, dir, j, parity);
                if (staged) {
                    stage[(2u * rpg + r) * u + j] = rh;
                } else {
                    state[4u * h_plane + plane_index(dir, n, j)] = rh;
                }
            }
            barriers();
        }
        for (var it = li; it < items; it += THREADS) {
            let r = it / u;
            let j = it % u;
            let n = n0 + r;
            let own = plane_index(dir, n, j);
            let x_base = ((n * p.timesteps + t_in) * p.directions + dir) * gate_cols + j;
            let h_prev = h_at(r, n, dir, j, parity);
            var masked_step = false;
            if (p.masked != 0u) {
                masked_step = ids[n * p.timesteps + t_in] == 0u;
            }

            var h = h_prev;
            var out = state[3u * h_plane + own];
            if (masked_step) {
                // State carried over unchanged; the output repeats the previous one (zeros
                // before the first live step, or always with zero_masked_output).
                if (p.zero_masked_output != 0u) {
                    out = 0.0;
                }
            } else {
                switch p.cell {
                    case 0u: {
                        h = activate(xproj[x_base] + dots(r, n, dir, parity, j, 0u, 1u).x, p.act);
                    }
                    case 1u: {
                        let acc = dots(r, n, dir, parity, j, 0u, 4u);
                        let i_gate = activate(xproj[x_base] + acc.x, p.recurrent_act);
                        let f_gate = activate(xproj[x_base + u] + acc.y, p.recurrent_act);
                        let candidate = activate(xproj[x_base + 2u * u] + acc.z, p.act);
                        let o_gate = activate(xproj[x_base + 3u * u] + acc.w, p.recurrent_act);
                        let c = f_gate * state[2u * h_plane + own] + i_gate * candidate;
                        state[2u * h_plane + own] = c;
                        h = o_gate * activate(c, p.act);
                    }
                    case 2u: {
                        var acc = dots(r, n, dir, parity, j, 0u, 3u);
                        if (p.recurrent_bias != 0u) {
                            let rb = p.directions * u * gate_cols + dir * gate_cols + j;
                            acc += vec4<f32>(
                                recurrent_kernel[rb],
                                recurrent_kernel[rb + u],
                                recurrent_kernel[rb + 2u * u],
                                0.0,
                            );
                        }
                        let z_gate = activate(xproj[x_base] + acc.x, p.recurrent_act);
                        let r_gate = activate(xproj[x_base + u] + acc.y, p.recurrent_act);
                        let candidate = activate(xproj[x_base + 2u * u] + r_gate * acc.z, p.act);
                        h = z_gate * h_prev + (1.0 - z_gate) * candidate;
                    }
                    default: {
                        let z_gate = activate(
                            xproj[x_base] + dots(r, n, dir, parity, j, 0u, 1u).x,
                            p.recurrent_act,
                        );
                        var rhr = 0.0;
                        var row = dir * u * gate_cols + 2u * u + j;
                        for (var k = 0u; k < u; k++) {
                            rhr = fma(rh_at(r, n, dir, k), recurrent_kernel[row], rhr);
                            row += gate_cols;
                        }
                        let candidate = activate(xproj[x_base + 2u * u] + rhr, p.act);
                        h = z_gate * h_prev + (1.0 - z_gate) * candidate;
                    }
                }
                out = h;
            }
            state[3u * h_plane + own] = out;
            let last = s + 1u == p.timesteps;
            if (staged) {
                stage[((1u - parity) * rpg + r) * u + j] = h;
            }
            if (!staged || s + 1u == p.step_end) {
                state[(1u - parity) * h_plane + own] = h;
            }

            if (p.return_sequences != 0u) {
                let pos = select(s, p.timesteps - 1u - s, reversed_output);
                y[((n * p.timesteps + pos) * p.directions + dir) * u + j] = out;
            } else if (last) {
                // Keras's last output: the output of the last step (masked steps repeat the
                // previous).
                y[(n * p.directions + dir) * u + j] = out;
            }
        }
        barriers();
    }
}

struct MergeParams {
    rows: u32,
    units: u32,
    mode: u32,  // 1 sum, 2 average, 3 multiply, 4 forward only, 5 backward only
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> both: array<f32>;
@group(0) @binding(1) var<storage, read_write> merged: array<f32>;
@group(0) @binding(2) var<uniform> mp: MergeParams;

// Bidirectional merge modes other than concat: [row][dir][unit] -> [row][unit].
@compute @workgroup_size(64, 1, 1)
fn merge(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    if (i >= mp.rows * mp.units) {
        return;
    }
    let row = i / mp.units;
    let u = i % mp.units;
    let fw = both[row * 2u * mp.units + u];
    let bw = both[row * 2u * mp.units + mp.units + u];
    switch mp.mode {
        case 1u: { merged[i] = fw + bw; }
        case 2u: { merged[i] = (fw + bw) * 0.5; }
        case 4u: { merged[i] = fw; }
        case 5u: { merged[i] = bw; }
        default: { merged[i] = fw * bw; }
    }
}

struct CopyParams {
    count: u32,
    src_offset: u32,
    dst_offset: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> copy_src: array<f32>;
@group(0) @binding(1) var<storage, read_write> copy_dst: array<f32>;
@group(0) @binding(2) var<uniform> cp: CopyParams;

// An initial state into the state buffer, or a final state out of it.
@compute @workgroup_size(64, 1, 1)
fn copy_state(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let i = linear_workgroup(wg, nwg) * 64u + li;
    if (i >= cp.count) {
        return;
    }
    copy_dst[cp.dst_offset + i] = copy_src[cp.src_offset + i];
}
