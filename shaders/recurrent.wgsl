// SimpleRNN / LSTM time steps (concatenated after common.wgsl). The input projection
// x_t * W + b for every timestep and both directions was computed before the time loop by one
// GEMM (matmul.wgsl) into `xproj`, laid out (batch, time, direction, gate, unit). Each dispatch of
// `step` then advances BOTH directions of a Bidirectional by one step: recurrent matvec, gates
// and state update fused, one thread per (direction, batch item, unit).
//
// `state` holds h twice (ping-pong by step parity, since every unit reads all of h_prev while
// others write h_next) followed by c (each unit reads and writes only its own c):
//   h[parity][dir][batch][unit], then c[dir][batch][unit].

struct RnnParams {
    act: Act,            // cell activation (tanh by default)
    recurrent_act: Act,  // LSTM gate activation (sigmoid by default)
    batch: u32,
    timesteps: u32,
    units: u32,
    gates: u32,          // 1 SimpleRNN, 4 LSTM (i, f, c, o)
    directions: u32,
    masked: u32,         // 1: token id 0 at (n, t) masks that step
    zero_masked_output: u32,  // Bidirectional writes zeros at masked steps
    return_sequences: u32,
    // Bit d: direction d reads the sequence from the end (go_backwards).
    backwards_bits: u32,
    // Bit d: direction d writes step s at position T-1-s (the backward half of a Bidirectional).
    reverse_output_bits: u32,
    _pad0: u32,
    _pad1: u32,
}

struct StepParams {
    step: u32,
}

@group(0) @binding(0) var<storage, read> xproj: array<f32>;
// Recurrent kernels of all directions stacked: [dir][k in units][gate * units + unit].
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
    if (!in_range) {
        return;
    }

    let h_prev = state[h_prev_base + j];
    let x_base = ((n * p.timesteps + t_in) * p.directions + dir) * gate_cols + j;
    var masked_step = false;
    if (p.masked != 0u) {
        masked_step = ids[n * p.timesteps + t_in] == 0u;
    }

    var h = h_prev;
    var out = h_prev;
    if (masked_step) {
        // State carried over unchanged; output repeats the previous one (zeros in Bidirectional).
        if (p.zero_masked_output != 0u) {
            out = 0.0;
        }
    } else {
        if (p.gates == 1u) {
            h = activate(xproj[x_base] + acc[0], p.act);
        } else {
            let i_gate = activate(xproj[x_base] + acc[0], p.recurrent_act);
            let f_gate = activate(xproj[x_base + p.units] + acc[1], p.recurrent_act);
            let candidate = activate(xproj[x_base + 2u * p.units] + acc[2], p.act);
            let o_gate = activate(xproj[x_base + 3u * p.units] + acc[3], p.recurrent_act);
            let c = f_gate * state[c_base + j] + i_gate * candidate;
            state[c_base + j] = c;
            h = o_gate * activate(c, p.act);
        }
        out = h;
    }
    state[h_next_base + j] = h;

    if (p.return_sequences != 0u) {
        let pos = select(s, p.timesteps - 1u - s, ((p.reverse_output_bits >> dir) & 1u) != 0u);
        y[((n * p.timesteps + pos) * p.directions + dir) * p.units + j] = out;
    } else if (s + 1u == p.timesteps) {
        // The last output is the final state (Keras keeps state through masked steps).
        y[(n * p.directions + dir) * p.units + j] = h;
    }
}

struct MergeParams {
    rows: u32,
    units: u32,
    mode: u32,  // 1 sum, 2 average, 3 multiply
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
        default: { merged[i] = fw * bw; }
    }
}
