// ConvLSTM1D/2D training (concatenated after common.wgsl and act_grad.wgsl; gpu/grad/conv_lstm.rs).
// The training forward is the inference forward (conv_lstm.wgsl's layout) with this gates
// kernel in place of `conv_lstm_gates`: it also keeps, per step, what BPTT reads:
//   tape: z [step][row][4F] at 0: the gates' pre-activations (x conv W + b + h conv U);
//         c [step + 1][row][F] at T * rows * 4F: the carry after each step (c[0] = 0, cleared).
//   h_in [n][t][pos][F]: the h the step reading timestep t started from (zero for the first,
//         cleared), in the input's (N*T images) order, so the recurrent kernel's gradient is
//         one convolution kernel-gradient over N*T images with dz in the same order.
// The backward kernel runs once per step in reverse processing order: dh and dc through the
// cell give dz of the step, written both as one (N, OH, OW, 4F) image batch (the recurrent
// conv's dy this step) and at timestep t of the (N*T) batch (the input conv's dy after the
// loop). One thread per state value; each reads and writes only its own dc, so dc stays in
// place across steps.

struct TrainGateParams {
    act: Act,
    recurrent_act: Act,
    rows: u32,
    positions: u32,
    filters: u32,
    timesteps: u32,
    step: u32,
    t_in: u32,
    has_state: u32,
    return_sequences: u32,
    go_backwards: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct GateGradParams {
    act: Act,
    recurrent_act: Act,
    rows: u32,
    positions: u32,
    filters: u32,
    timesteps: u32,
    step: u32,
    t_in: u32,
    // 0 at the last step: no dh came back from a later step, and dc starts at zero.
    has_later: u32,
    return_sequences: u32,
}

// ---- training forward ---------------------------------------------------------------------

@group(0) @binding(0) var<storage, read> xz: array<f32>;
@group(0) @binding(1) var<storage, read> hz: array<f32>;
@group(0) @binding(2) var<storage, read_write> h: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> tape_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> h_in: array<f32>;
@group(0) @binding(7) var<uniform> pf: TrainGateParams;

@compute @workgroup_size(64, 1, 1)
fn conv_lstm_gates_train(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let idx = linear_workgroup(wg, nwg) * 64u + li;
    if (idx >= pf.rows * pf.filters) {
        return;
    }
    let f = pf.filters;
    let j = idx % f;
    let row = idx / f;
    let n = row / pf.positions;
    let pos = row % pf.positions;
    let x_base = ((n * pf.timesteps + pf.t_in) * pf.positions + pos) * 4u * f + j;
    let h_base = row * 4u * f + j;
    var z = array<f32, 4>(xz[x_base], xz[x_base + f], xz[x_base + 2u * f], xz[x_base + 3u * f]);
    var c_prev = 0.0;
    if (pf.has_state != 0u) {
        for (var g = 0u; g < 4u; g++) {
            z[g] += hz[h_base + g * f];
        }
        c_prev = c[idx];
    }
    let z_base = (pf.step * pf.rows + row) * 4u * f + j;
    for (var g = 0u; g < 4u; g++) {
        tape_out[z_base + g * f] = z[g];
    }
    let i_gate = activate(z[0], pf.recurrent_act);
    let f_gate = activate(z[1], pf.recurrent_act);
    let candidate = activate(z[2], pf.act);
    let o_gate = activate(z[3], pf.recurrent_act);
    let c_new = f_gate * c_prev + i_gate * candidate;
    c[idx] = c_new;
    let state = pf.rows * f;
    tape_out[pf.timesteps * pf.rows * 4u * f + (pf.step + 1u) * state + idx] = c_new;
    let h_new = o_gate * activate(c_new, pf.act);
    h[idx] = h_new;
    if (pf.step + 1u < pf.timesteps) {
        var t_next = pf.step + 1u;
        if (pf.go_backwards != 0u) {
            t_next = pf.timesteps - 2u - pf.step;
        }
        h_in[((n * pf.timesteps + t_next) * pf.positions + pos) * f + j] = h_new;
    }
    if (pf.return_sequences != 0u) {
        y[((n * pf.timesteps + pf.step) * pf.positions + pos) * f + j] = h_new;
    }
}

// ---- backward -----------------------------------------------------------------------------

@group(0) @binding(0) var<storage, read> tape: array<f32>;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
// dL/dh_prev from the later step's recurrent conv backward, (N, OH, OW, F).
@group(0) @binding(2) var<storage, read> dh_later: array<f32>;
@group(0) @binding(3) var<storage, read_write> dc: array<f32>;
// dz of this step as an (N, OH, OW, 4F) batch, and at timestep t of the (N*T) batch.
@group(0) @binding(4) var<storage, read_write> dz_step: array<f32>;
@group(0) @binding(5) var<storage, read_write> dz_all: array<f32>;
@group(0) @binding(6) var<uniform> pb: GateGradParams;

@compute @workgroup_size(64, 1, 1)
fn conv_lstm_gates_grad(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let idx = linear_workgroup(wg, nwg) * 64u + li;
    let state = pb.rows * pb.filters;
    if (idx >= state) {
        return;
    }
    let f = pb.filters;
    let j = idx % f;
    let row = idx / f;
    let n = row / pb.positions;
    let pos = row % pb.positions;
    // dL/dh of this step: the output's gradient at it, plus what the later step sent back.
    var dh = 0.0;
    var dc_in = 0.0;
    if (pb.has_later != 0u) {
        dh = dh_later[idx];
        dc_in = dc[idx];
    }
    if (pb.return_sequences != 0u) {
        dh += dy[((n * pb.timesteps + pb.step) * pb.positions + pos) * f + j];
    } else if (pb.step + 1u == pb.timesteps) {
        dh += dy[idx];
    }
    let z_base = (pb.step * pb.rows + row) * 4u * f + j;
    let zi = tape[z_base];
    let zf = tape[z_base + f];
    let zg = tape[z_base + 2u * f];
    let zo = tape[z_base + 3u * f];
    let i_gate = activate(zi, pb.recurrent_act);
    let f_gate = activate(zf, pb.recurrent_act);
    let g_gate = activate(zg, pb.act);
    let o_gate = activate(zo, pb.recurrent_act);
    let c_base = pb.timesteps * pb.rows * 4u * f;
    let c_prev = tape[c_base + pb.step * state + idx];
    let c_new = tape[c_base + (pb.step + 1u) * state + idx];
    let t = activate(c_new, pb.act);
    let dcv = dc_in + dh * o_gate * derivative(c_new, t, pb.act);
    dc[idx] = dcv * f_gate;
    let d = array<f32, 4>(
        dcv * g_gate * derivative(zi, i_gate, pb.recurrent_act),
        dcv * c_prev * derivative(zf, f_gate, pb.recurrent_act),
        dcv * i_gate * derivative(zg, g_gate, pb.act),
        dh * t * derivative(zo, o_gate, pb.recurrent_act),
    );
    let step_base = row * 4u * f + j;
    let all_base = ((n * pb.timesteps + pb.t_in) * pb.positions + pos) * 4u * f + j;
    for (var g = 0u; g < 4u; g++) {
        dz_step[step_base + g * f] = d[g];
        dz_all[all_base + g * f] = d[g];
    }
}
