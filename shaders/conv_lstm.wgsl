// ConvLSTM1D/2D gate update for one timestep (concatenated after common.wgsl). The convolutions
// run on the implicit-GEMM kernel before this: the input conv of every timestep at once into
// `xz` (N*T images, bias included), and each step's recurrent conv of h into `hz`. This kernel
// adds them and applies the LSTM cell at every (item, position, filter), gates i, f, c, o as
// Keras orders them along the 4F axis. One thread per state value; each reads and writes only
// its own c and h, so h needs no ping-pong (the next step's recurrent conv reads it as a whole
// in a later dispatch).

struct GateParams {
    act: Act,            // candidate and cell-output activation (tanh by default)
    recurrent_act: Act,  // i, f, o gate activation (sigmoid by default)
    // Items times positions (OH * OW): the rows of h and c.
    rows: u32,
    positions: u32,
    filters: u32,
    timesteps: u32,
    // The step being taken, and the input time it reads (T-1-step with go_backwards).
    step: u32,
    t_in: u32,
    // 0 on the first step: h and c start at zero, so hz is not read and c is not carried.
    has_state: u32,
    // 1: write h into `y` at position `step` (Keras keeps processing order for go_backwards).
    return_sequences: u32,
}

// (N, T, OH, OW, 4F): x_t conv W + b.
@group(0) @binding(0) var<storage, read> xz: array<f32>;
// (N, OH, OW, 4F): h_{t-1} conv U.
@group(0) @binding(1) var<storage, read> hz: array<f32>;
// (N, OH, OW, F) each.
@group(0) @binding(2) var<storage, read_write> h: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
// (N, T, OH, OW, F) with return_sequences; unbound (a dummy) otherwise, h is the output.
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<uniform> p: GateParams;

@compute @workgroup_size(64, 1, 1)
fn conv_lstm_gates(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let idx = linear_workgroup(wg, nwg) * 64u + li;
    if (idx >= p.rows * p.filters) {
        return;
    }
    let f = p.filters;
    let j = idx % f;
    let row = idx / f;
    let n = row / p.positions;
    let pos = row % p.positions;
    let x_base = ((n * p.timesteps + p.t_in) * p.positions + pos) * 4u * f + j;
    let h_base = row * 4u * f + j;
    var z = array<f32, 4>(xz[x_base], xz[x_base + f], xz[x_base + 2u * f], xz[x_base + 3u * f]);
    var c_prev = 0.0;
    if (p.has_state != 0u) {
        for (var g = 0u; g < 4u; g++) {
            z[g] += hz[h_base + g * f];
        }
        c_prev = c[idx];
    }
    let i_gate = activate(z[0], p.recurrent_act);
    let f_gate = activate(z[1], p.recurrent_act);
    let candidate = activate(z[2], p.act);
    let o_gate = activate(z[3], p.recurrent_act);
    let c_new = f_gate * c_prev + i_gate * candidate;
    c[idx] = c_new;
    let h_new = o_gate * activate(c_new, p.act);
    h[idx] = h_new;
    if (p.return_sequences != 0u) {
        y[((n * p.timesteps + p.step) * p.positions + pos) * f + j] = h_new;
    }
}
