// Training losses (after common.wgsl), as src/train/loss.rs's Loss::value_and_grad computes
// them in float32, in the same operation order: loss_rows gives each row (the last axis) its
// loss and writes the gradient w.r.t. the prediction, divided by the reduction's divisor and
// scaled by the loss weight; loss_count counts the unmasked rows when they are the divisor;
// loss_reduce sums the row losses (strided partial sums, then a tree: deterministic) into one
// value. A row is masked where mask[row] == 0 (the token ids a sequence mask comes from).

struct LossParams {
    // 0 mse, 1 mae, 2 binary, 3 categorical, 4 sparse categorical cross-entropy.
    kind: u32,
    logits: u32,
    rows: u32,
    cols: u32,
    smoothing: f32,
    weight: f32,
    eps: f32,
    one_minus_eps: f32,
    has_mask: u32,
    // 1: the divisor is row_loss[0], the unmasked row count loss_count wrote.
    count_divisor: u32,
    divisor: f32,
    out_index: u32,
}

@group(0) @binding(0) var<storage, read> pred: array<f32>;
@group(0) @binding(1) var<storage, read> tgt: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<u32>;
@group(0) @binding(3) var<storage, read_write> dpred: array<f32>;
// [divisor, then each row's loss (0 where masked)].
@group(0) @binding(4) var<storage, read_write> row_loss: array<f32>;
@group(0) @binding(5) var<storage, read_write> loss_out: array<f32>;
@group(0) @binding(6) var<uniform> p: LossParams;

const MSE: u32 = 0u;
const MAE: u32 = 1u;
const BINARY: u32 = 2u;
const CATEGORICAL: u32 = 3u;
const SPARSE: u32 = 4u;

var<workgroup> sum_sh: array<f32, 256>;
var<workgroup> count_sh: array<u32, 256>;

// log(1 + u) accurate for small u (WGSL has no log1p).
fn log1p_f32(u: f32) -> f32 {
    let v = 1.0 + u;
    if (v == 1.0) {
        return u;
    }
    return log(v) * (u / (v - 1.0));
}

fn divisor() -> f32 {
    return select(p.divisor, row_loss[0], p.count_divisor != 0u);
}

// Row r's loss; its gradient (before the divisor) goes through put().
var<private> zero_grad: bool;
var<private> grad_div: f32;

fn put(i: u32, g: f32) {
    dpred[i] = select((g / grad_div) * p.weight, 0.0, zero_grad);
}

fn inside(x: f32) -> bool {
    return x > p.eps && x < p.one_minus_eps;
}

// Rust's clamp keeps NaN (a zero-sum row), where a GPU's max/min may drop it.
fn clip_prob(x: f32) -> f32 {
    let nan = (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
    return select(clamp(x, p.eps, p.one_minus_eps), x, nan);
}

// Categorical targets with label smoothing.
fn smoothed(t: f32) -> f32 {
    return t * (1.0 - p.smoothing) + p.smoothing / f32(p.cols);
}

fn target_of(r: u32, j: u32) -> f32 {
    if (p.kind == SPARSE) {
        return select(0.0, 1.0, j == u32(tgt[r]));
    }
    return smoothed(tgt[r * p.cols + j]);
}

// tf.nn.softmax_cross_entropy_with_logits: the row's loss, gradient softmax(z) * sum(y) - y.
fn softmax_xent(r: u32) -> f32 {
    let base = r * p.cols;
    var mx = bitcast<f32>(0xff800000u);
    for (var j = 0u; j < p.cols; j = j + 1u) {
        mx = max(mx, pred[base + j]);
    }
    var sum = 0.0;
    var ysum = 0.0;
    for (var j = 0u; j < p.cols; j = j + 1u) {
        sum = sum + exp(pred[base + j] - mx);
        ysum = ysum + target_of(r, j);
    }
    let lse = mx + log(sum);
    var l = 0.0;
    for (var j = 0u; j < p.cols; j = j + 1u) {
        let z = pred[base + j];
        let y = target_of(r, j);
        l = l + y * (lse - z);
        put(base + j, exp(z - lse) * ysum - y);
    }
    return l;
}

fn row_value(r: u32) -> f32 {
    let base = r * p.cols;
    let width = f32(p.cols);
    switch (p.kind) {
        case 0u: {
            var s = 0.0;
            for (var j = 0u; j < p.cols; j = j + 1u) {
                let d = pred[base + j] - tgt[base + j];
                s = s + d * d;
                put(base + j, 2.0 * d / width);
            }
            return s / width;
        }
        case 1u: {
            var s = 0.0;
            for (var j = 0u; j < p.cols; j = j + 1u) {
                let d = pred[base + j] - tgt[base + j];
                s = s + abs(d);
                // TF's gradient of |x| is sign(x), 0 at 0.
                let sg = select(select(0.0, -1.0, d < 0.0), 1.0, d > 0.0);
                put(base + j, sg / width);
            }
            return s / width;
        }
        case 2u: {
            var s = 0.0;
            for (var j = 0u; j < p.cols; j = j + 1u) {
                let y = tgt[base + j] * (1.0 - p.smoothing) + 0.5 * p.smoothing;
                let x = pred[base + j];
                if (p.logits != 0u) {
                    // tf.nn.sigmoid_cross_entropy_with_logits.
                    s = s + (max(x, 0.0) - x * y + log1p_f32(exp(-abs(x))));
                    put(base + j, (sigmoid(x) - y) / width);
                } else {
                    let c = clip_prob(x);
                    s = s + -(y * log(c) + (1.0 - y) * log(1.0 - c));
                    var g = 0.0;
                    if (inside(x)) {
                        g = (-y / c + (1.0 - y) / (1.0 - c)) / width;
                    }
                    put(base + j, g);
                }
            }
            return s / width;
        }
        case 3u: {
            if (p.logits != 0u) {
                return softmax_xent(r);
            }
            // o = p / sum(p), clipped; L = -sum y log o, through the normalization.
            var sum = 0.0;
            for (var j = 0u; j < p.cols; j = j + 1u) {
                sum = sum + pred[base + j];
            }
            var l = 0.0;
            var dot = 0.0;
            for (var j = 0u; j < p.cols; j = j + 1u) {
                let x = pred[base + j];
                let o = x / sum;
                let c = clip_prob(o);
                let y = smoothed(tgt[base + j]);
                l = l - y * log(c);
                let dl_do = select(0.0, -y / c, inside(o));
                dot = dot + dl_do * x / sum;
            }
            for (var j = 0u; j < p.cols; j = j + 1u) {
                let x = pred[base + j];
                let o = x / sum;
                let c = clip_prob(o);
                let y = smoothed(tgt[base + j]);
                let dl_do = select(0.0, -y / c, inside(o));
                put(base + j, (dl_do - dot) / sum);
            }
            return l;
        }
        default: {
            if (p.logits != 0u) {
                return softmax_xent(r);
            }
            // Keras: -log(c_label / sum c) with c = clip(p).
            let label = u32(tgt[r]);
            var sum = 0.0;
            for (var j = 0u; j < p.cols; j = j + 1u) {
                sum = sum + clip_prob(pred[base + j]);
            }
            for (var j = 0u; j < p.cols; j = j + 1u) {
                let x = pred[base + j];
                var d = 1.0 / sum;
                if (j == label) {
                    d = d - 1.0 / clip_prob(x);
                }
                put(base + j, select(0.0, d, inside(x)));
            }
            return log(sum) - log(clip_prob(pred[base + min(label, p.cols - 1u)]));
        }
    }
}

@compute @workgroup_size(64, 1, 1)
fn loss_rows(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let r = linear_workgroup(wg, nwg) * 64u + li;
    if (r >= p.rows) {
        return;
    }
    let masked = p.has_mask != 0u && mask[r] == 0u;
    grad_div = divisor();
    // Keras's divide_no_nan: an all-masked batch has loss 0 and a zero gradient.
    zero_grad = masked || grad_div == 0.0;
    let l = row_value(r);
    row_loss[1u + r] = select(l, 0.0, masked);
}

@compute @workgroup_size(256, 1, 1)
fn loss_count(@builtin(local_invocation_index) li: u32) {
    var n = 0u;
    for (var r = li; r < p.rows; r = r + 256u) {
        n = n + select(0u, 1u, mask[r] != 0u);
    }
    count_sh[li] = n;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride / 2u) {
        if (li < stride) {
            count_sh[li] = count_sh[li] + count_sh[li + stride];
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        row_loss[0] = f32(count_sh[0]);
    }
}

@compute @workgroup_size(256, 1, 1)
fn loss_reduce(@builtin(local_invocation_index) li: u32) {
    var acc = 0.0;
    for (var r = li; r < p.rows; r = r + 256u) {
        acc = acc + row_loss[1u + r];
    }
    sum_sh[li] = acc;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride / 2u) {
        if (li < stride) {
            sum_sh[li] = sum_sh[li] + sum_sh[li + stride];
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        let div = divisor();
        loss_out[p.out_index] = select(sum_sh[0] / div, 0.0, div == 0.0);
    }
}
