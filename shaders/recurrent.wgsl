// SimpleRNN / GRU / LSTM time steps (concatenated after common.wgsl). The input projection
// x_t * W + b for every timestep and both directions was computed before the time loop by one
// GEMM (matmul.wgsl) into `xproj`, laid out (batch, time, direction, gate, unit). Each dispatch of
// `step` then advances BOTH directions of a Bidirectional by one step: recurrent matvec, gates
// and state update fused, one thread per (direction, batch item, unit).
//
// `state` holds h twice (ping-pong by step parity, since every unit reads all of h_prev while
// others write h_next), then c, then the previous output (each unit reads and writes only its
// own c and output):
//   h[parity][dir][batch][unit], c[dir][batch][unit], out[dir][batch][unit].
// It starts as zeros, or with the initial states copied in by `copy_state`; after T steps the
// final h is in plane T % 2.

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
}

struct StepParams {
    step: u32,
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
@group(1) @binding(0) var<uniform> sp: StepParams;

const THREADS: u32 = 64u;
var<workgroup> h_tile: array<f32, 64>;

@compute @workgroup_size(64, 1, 1)
fn step(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let unit_blocks = (p.units + THREADS - 1u) / THREADS;
    let block = linear_workgroup(wg, nwg);
    if (block >= unit_blocks * p.batch * p.directions) {
        return;
    }
    let dir = block / (unit_blocks * p.batch);
    let n = (block / unit_blocks) % p.batch;
    let j = (block % unit_blocks) * THREADS + li;
    let in_range = j < p.units;

    let s = sp.step;
    let t_in = select(s, p.timesteps - 1u - s, ((p.backwards_bits >> dir) & 1u) != 0u);
    let parity = s % 2u;
    let h_plane = p.directions * p.batch * p.units;
    let h_prev_base = parity * h_plane + (dir * p.batch + n) * p.units;
    let h_next_base = (1u - parity) * h_plane + (dir * p.batch + n) * p.units;
    let c_base = 2u * h_plane + (dir * p.batch + n) * p.units;
    let gate_cols = p.gates * p.units;
    let rk_base = dir * p.units * gate_cols;

    // Recurrent matvec h_prev * U for this unit's gate columns, h_prev staged 64 at a time.
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var k0 = 0u; k0 < p.units; k0 += THREADS) {
        var hv = 0.0;
        if (k0 + li < p.units) {
            hv = state[h_prev_base + k0 + li];
        }
        h_tile[li] = hv;
        workgroupBarrier();
        if (in_range) {
            let k_end = min(THREADS, p.units - k0);
            for (var kk = 0u; kk < k_end; kk++) {
                let h = h_tile[kk];
                let row = rk_base + (k0 + kk) * gate_cols + j;
                for (var g = 0u; g < p.gates; g++) {
                    acc[g] = fma(h, recurrent_kernel[row + g * p.units], acc[g]);
                }
            }
        }
        workgroupBarrier();
    }
    let x_row = ((n * p.timesteps + t_in) * p.directions + dir) * gate_cols;

    // GRU with reset_after=False: the candidate reads (r * h_prev) R_h, which needs r of every
    // unit. Each workgroup recomputes r for 64 units at a time (uniform control flow: every
    // thread reaches the barriers).
    var acc_h = 0.0;
    if (p.cell == 3u) {
        for (var k0 = 0u; k0 < p.units; k0 += THREADS) {
            let k = k0 + li;
            var rh = 0.0;
            if (k < p.units) {
                var dot = 0.0;
                for (var m = 0u; m < p.units; m++) {
                    dot = fma(state[h_prev_base + m],
                              recurrent_kernel[rk_base + m * gate_cols + p.units + k], dot);
                }
                let r_gate = activate(xproj[x_row + p.units + k] + dot, p.recurrent_act);
                rh = r_gate * state[h_prev_base + k];
            }
            h_tile[li] = rh;
            workgroupBarrier();
            if (in_range) {
                let k_end = min(THREADS, p.units - k0);
                for (var kk = 0u; kk < k_end; kk++) {
                    let row = rk_base + (k0 + kk) * gate_cols + 2u * p.units + j;
                    acc_h = fma(h_tile[kk], recurrent_kernel[row], acc_h);
                }
            }
            workgroupBarrier();
        }
    }
    if (!in_range) {
        return;
    }

    let h_prev = state[h_prev_base + j];
    let out_index = 3u * h_plane + (dir * p.batch + n) * p.units + j;
    let x_base = x_row + j;
    var masked_step = false;
    if (p.masked != 0u) {
        masked_step = ids[n * p.timesteps + t_in] == 0u;
    }

    var h = h_prev;
    var out = state[out_index];
    if (masked_step) {
        // State carried over unchanged; the output repeats the previous one (zeros before the
        // first live step, or always with zero_masked_output).
        if (p.zero_masked_output != 0u) {
            out = 0.0;
        }
    } else {
        switch p.cell {
            case 0u: {
                h = activate(xproj[x_base] + acc[0], p.act);
            }
            case 1u: {
                let i_gate = activate(xproj[x_base] + acc[0], p.recurrent_act);
                let f_gate = activate(xproj[x_base + p.units] + acc[1], p.recurrent_act);
                let candidate = activate(xproj[x_base + 2u * p.units] + acc[2], p.act);
                let o_gate = activate(xproj[x_base + 3u * p.units] + acc[3], p.recurrent_act);
                let c = f_gate * state[c_base + j] + i_gate * candidate;
                state[c_base + j] = c;
                h = o_gate * activate(c, p.act);
            }
            default: {
                var rz = acc[0];
                var rr = acc[1];
                var rhh = acc[2];
                if (p.recurrent_bias != 0u) {
                    let rb = p.directions * p.units * gate_cols + dir * gate_cols + j;
                    rz += recurrent_kernel[rb];
                    rr += recurrent_kernel[rb + p.units];
                    rhh += recurrent_kernel[rb + 2u * p.units];
                }
                let z_gate = activate(xproj[x_base] + rz, p.recurrent_act);
                var candidate = 0.0;
                if (p.cell == 2u) {
                    let r_gate = activate(xproj[x_base + p.units] + rr, p.recurrent_act);
                    candidate = activate(xproj[x_base + 2u * p.units] + r_gate * rhh, p.act);
                } else {
                    candidate = activate(xproj[x_base + 2u * p.units] + acc_h, p.act);
                }
                h = z_gate * h_prev + (1.0 - z_gate) * candidate;
            }
        }
        out = h;
    }
    state[h_next_base + j] = h;
    state[out_index] = out;

    if (p.return_sequences != 0u) {
        let pos = select(s, p.timesteps - 1u - s, ((p.reverse_output_bits >> dir) & 1u) != 0u);
        y[((n * p.timesteps + pos) * p.directions + dir) * p.units + j] = out;
    } else if (s + 1u == p.timesteps) {
        // Keras's last output: the output of the last step (masked steps repeat the previous).
        y[(n * p.directions + dir) * p.units + j] = out;
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
