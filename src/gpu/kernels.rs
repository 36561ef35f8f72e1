//! The compute kernels: which WGSL files make each one, its entry point and its bindings, and the
//! pipelines built from them (once per runtime, for the kernels a model uses).

use std::collections::HashMap;

use crate::error::{Error, Result};

const COMMON: &str = include_str!("../../shaders/common.wgsl");
const GEMM: &str = include_str!("../../shaders/gemm.wgsl");
const MATMUL: &str = include_str!("../../shaders/matmul.wgsl");
const CONV2D: &str = include_str!("../../shaders/conv2d.wgsl");
const POOL: &str = include_str!("../../shaders/pool.wgsl");
const CONV: &str = include_str!("../../shaders/conv.wgsl");
/// gemm.wgsl's `GROUPED` switch for every GEMM but the general convolution's.
const UNGROUPED: &str = "const GROUPED: bool = false;";
const ELEMENTWISE: &str = include_str!("../../shaders/elementwise.wgsl");
const SOFTMAX: &str = include_str!("../../shaders/softmax.wgsl");
const EMBEDDING: &str = include_str!("../../shaders/embedding.wgsl");
const RECURRENT: &str = include_str!("../../shaders/recurrent.wgsl");
const MERGE: &str = include_str!("../../shaders/merge.wgsl");
const COPY: &str = include_str!("../../shaders/copy.wgsl");
const MASK: &str = include_str!("../../shaders/mask.wgsl");
const NORM: &str = include_str!("../../shaders/norm.wgsl");
const CONV_LSTM: &str = include_str!("../../shaders/conv_lstm.wgsl");
const CONV_LSTM_GRAD: &str = include_str!("../../shaders/conv_lstm_grad.wgsl");
const MATMUL_GRAD: &str = include_str!("../../shaders/matmul_grad.wgsl");
const GRAD: &str = include_str!("../../shaders/grad.wgsl");
const ACT_GRAD: &str = include_str!("../../shaders/act_grad.wgsl");
const RECURRENT_GRAD: &str = include_str!("../../shaders/recurrent_grad.wgsl");
const RECURRENT_GEMM: &str = include_str!("../../shaders/recurrent_gemm.wgsl");
const CONV_GRAD: &str = include_str!("../../shaders/conv_grad.wgsl");
const POOL_GRAD: &str = include_str!("../../shaders/pool_grad.wgsl");
const OPTIM_COMMON: &str = include_str!("../../shaders/optim_common.wgsl");
const OPTIM: &str = include_str!("../../shaders/optim.wgsl");
const OPTIM_NORM: &str = include_str!("../../shaders/optim_norm.wgsl");
const LOSS: &str = include_str!("../../shaders/loss.wgsl");
const NORM_GRAD: &str = include_str!("../../shaders/norm_grad.wgsl");
const LAYER_NORM_GRAD: &str = include_str!("../../shaders/layer_norm_grad.wgsl");
const EMBEDDING_GRAD: &str = include_str!("../../shaders/embedding_grad.wgsl");
const SHAPE_GRAD: &str = include_str!("../../shaders/shape_grad.wgsl");
const MERGE_GRAD: &str = include_str!("../../shaders/merge_grad.wgsl");

/// Every GEMM workgroup computes a tile this many rows by this many columns.
pub const GEMM_TILE: u32 = 64;
/// The depth of the K slices a GEMM workgroup walks (`TILE_K` in gemm.wgsl).
pub const GEMM_K_SLICE: usize = 16;
/// Split K only below this many output tiles, so big GEMMs keep one pass.
pub const SPLIT_K_MAX_TILES: usize = 32;
/// Aim for about this many workgroups when splitting K.
pub const SPLIT_K_TARGET_WORKGROUPS: usize = 128;
/// Each split walks at least this much of K, so partial sums stay worth their traffic.
pub const SPLIT_K_MIN_DEPTH: usize = 256;
/// Threads per workgroup of the one-dimensional kernels.
pub const LINEAR_THREADS: u32 = 64;
/// Threads per workgroup of the single-pass tree reductions (optimizer norms, loss).
pub const REDUCE_THREADS: u32 = 256;
/// Threads per workgroup of the recurrent time loops (`THREADS` in recurrent.wgsl and
/// recurrent_grad.wgsl).
pub const RNN_LOOP_THREADS: u32 = 128;
/// Floats of workgroup memory the recurrent time loops stage through (`stage` in recurrent.wgsl
/// and recurrent_grad.wgsl).
pub const RNN_LOOP_WG_FLOATS: usize = 3072;

/// How a recurrent time loop groups its sequences: (sequences per workgroup, staged in workgroup
/// memory) for `per_row` floats of workgroup memory per sequence. Enough sequences to give every
/// thread a unit, as many as fit; unstaged (state read back from storage) when not one fits.
pub fn rnn_rows_per_group(
    batch: usize,
    units: usize,
    per_row: usize,
    allow_staging: bool,
) -> (usize, bool) {
    let want = (RNN_LOOP_THREADS as usize)
        .div_ceil(units.max(1))
        .clamp(1, batch.max(1));
    let fit = RNN_LOOP_WG_FLOATS / per_row.max(1);
    if allow_staging && fit > 0 {
        (want.min(fit), true)
    } else {
        (want, false)
    }
}

/// How many of a time loop's `timesteps` steps one dispatch may run when every step costs one
/// invocation `per_step` loop iterations on top of `setup`, under the adapter's `cap` (all of
/// them without one); None when not even one step fits.
pub fn rnn_steps_per_dispatch(
    timesteps: usize,
    setup: usize,
    per_step: usize,
    cap: Option<u32>,
) -> Option<usize> {
    let Some(cap) = cap else {
        return Some(timesteps.max(1));
    };
    let steps = (cap as usize).saturating_sub(setup) / per_step.max(1);
    (steps > 0).then(|| steps.min(timesteps.max(1)))
}

/// One compute kernel (a WGSL entry point with a fixed binding layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kernel {
    Matmul,
    /// The implicit-GEMM convolution, plain 2-D case (Conv1D as one-row images included).
    Conv2d,
    /// The implicit-GEMM convolution with a depth axis, dilation or groups.
    ConvNd,
    /// Sums split-K partial products, then bias and activation.
    SplitKReduce,
    Pool2d,
    GlobalPool2d,
    /// DepthwiseConv1D/2D, direct.
    DepthwiseConv,
    /// Conv1D/2D/3DTranspose as a gather over input taps.
    ConvTranspose,
    Activation,
    Rescale,
    Softmax,
    Embedding,
    /// A SimpleRNN / LSTM / GRU layer's whole time loop, both directions, in one dispatch.
    RnnSequence,
    RnnMerge,
    /// Broadcast elementwise binary op (merges, operator nodes), or one tensor with a constant.
    Binary,
    /// Rows scaled to unit L2 norm, in place (Dot's normalize).
    NormalizeRows,
    /// y[t] = a[t] . b[t]^T per item (Dot).
    BatchedDot,
    /// Strided copy: concatenate, pad, crop, permute, repeat, nearest upsampling.
    StridedCopy,
    /// Half-pixel bilinear resize (UpSampling2D).
    Bilinear,
    /// Masked Multiply/Maximum/Minimum: padded steps become 0 or the first input.
    MaskSelect,
    /// x * scale + shift with broadcast weights (BatchNormalization, Normalization).
    Affine,
    PRelu,
    LayerNorm,
    GroupNorm,
    /// Softmax or log_softmax over strided groups (any contiguous axes).
    SoftmaxAxes,
    /// Copies a state into or out of the recurrent state buffer.
    RnnCopy,
    /// One ConvLSTM timestep's gates and state update (the convolutions run on Conv2d).
    ConvLstmGates,
    /// Training: the ConvLSTM gates that also keep each step's pre-activations, carry and
    /// starting h for BPTT (conv_lstm_grad.wgsl, gpu/grad/conv_lstm.rs).
    ConvLstmGatesTrain,
    /// Training: one ConvLSTM step's dL/d(pre-activations) and carry gradient.
    ConvLstmGatesGrad,
    /// C = Aᵀ·B (a Dense kernel gradient Xᵀ·dY), split-K partials through SplitKReduce.
    MatmulAt,
    /// C = A·Bᵀ (a Dense input gradient dY·Wᵀ).
    MatmulBt,
    /// dx = dy * f'(x) of an elementwise activation.
    ActivationGrad,
    /// Softmax / log_softmax backward over rows.
    SoftmaxGrad,
    /// dx += dy (a value read by several nodes).
    Accumulate,
    /// An L1/L2 penalty's gradient (weight and activity regularizers).
    PenaltyGrad,
    /// Dropout and the noise layers in training: out = x * multiplier + addend, the draws the
    /// host made for this step (the backward: dx = dy * multiplier).
    NoiseApply,
    /// An Embedding table's gradient from the lookups grouped by id (no float atomics).
    EmbeddingGrad,
    /// An L1/L2 penalty's value, one workgroup.
    PenaltySum,
    /// Convolution input gradient: implicit GEMM dX = gathered dY · Wᵀ (conv_grad.wgsl).
    ConvGradInput,
    /// Convolution kernel gradient: implicit GEMM dW = im2col(X)ᵀ · dY, split over K.
    ConvGradWeights,
    /// Transposed convolution input gradient: the forward convolution of dY (conv_grad.wgsl).
    ConvTransposeGradInput,
    /// Sums split partials in split order (conv_grad.wgsl).
    GradReduce,
    /// Column sums over chunks of rows: bias gradients (conv_grad.wgsl).
    BiasGrad,
    /// Max / average pooling input gradient as a gather over covering windows.
    PoolGrad,
    /// Global pooling backward, first pass: per (item, channel) share and maximum.
    GlobalPoolGradShare,
    /// Global pooling backward, second pass: dx.
    GlobalPoolGrad,
    /// Training: one optimizer update rule over the whole parameter arena (gpu/grad/optim.rs),
    /// clipping and weight decay folded in; the flags say which state arenas it binds.
    OptimSgd {
        momentum: bool,
    },
    OptimAdam {
        amsgrad: bool,
    },
    OptimRmsProp {
        momentum: bool,
        centered: bool,
    },
    OptimAdagrad,
    /// clipnorm / global_clipnorm: sums of squares of each 64-float gradient block, then of
    /// each parameter's blocks, then of all parameters (tree reductions, no atomics).
    OptimBlockSums,
    OptimSegmentSums,
    OptimTotal,
    /// Training: a loss's per-row values and gradient (gpu/grad/loss.rs), the unmasked row
    /// count, and the reduction to one value.
    LossRows,
    LossCount,
    LossReduce,
    /// BatchNormalization training: per-channel sums over chunks of the batch (norm_grad.wgsl).
    BatchNormSums,
    /// BatchNormalization training: the chunks summed in order, the statistics finished.
    BatchNormReduce,
    /// BatchNormalization training forward: y from the batch statistics.
    BatchNormApply,
    /// BatchNormalization training forward: a moving statistic updated in place.
    BatchNormMoving,
    /// BatchNormalization input gradient (training, or frozen on the moving statistics).
    BatchNormGrad,
    /// LayerNormalization / GroupNormalization training: each group's statistics and gradient
    /// sums (layer_norm_grad.wgsl).
    NormRowStats,
    /// LayerNormalization / GroupNormalization input gradient.
    NormRowGrad,
    /// LayerNormalization / GroupNormalization weight gradients: partial sums over chunks.
    NormWeightSums,
    /// LayerNormalization / GroupNormalization weight gradients: the chunks summed in order.
    NormWeightReduce,
    /// Training: a recurrent layer's whole time loop in one dispatch, keeping every step's
    /// pre-activations and states (gpu/grad/recurrent.rs, recurrent_grad.wgsl).
    RnnTrainForward,
    /// Training: backpropagation through time in one dispatch: dL/d(pre-activations).
    RnnTrainBackward,
    /// Copies a 2-D block between strided matrices (stacking directions' weights).
    RnnBlockCopy,
    /// Recurrent training's grouped GEMMs, one group per (direction, gate block): the
    /// recurrent kernel gradient H_inᵀ·dZ, and with input dropout the input projection, the
    /// kernel gradient and the input gradient's parts (recurrent_gemm.wgsl's modes).
    RnnGemmGrouped,
    /// A recurrent cell's input dropout masks on x (one copy per mask block) or on the input
    /// gradient's parts (summed over the blocks).
    RnnDropout,
    /// dx = dy times a broadcast weight: Rescaling, Normalization backward (shape_grad.wgsl).
    ScaleGrad,
    /// An operator node with one constant, backward.
    ScalarGrad,
    /// dx = dy summed over blocks: nearest upsampling and RepeatVector backward.
    BlockSum,
    /// Bilinear upsampling backward as a gather over the outputs each input reaches.
    BilinearGrad,
    /// Training, the merge family (gpu/grad/merge.rs, merge_grad.wgsl): one step of a merge's
    /// fold backwards, one operand's gradient.
    MergeGradStep,
    /// A gradient summed over the axes its value was broadcast along, scaled (no atomics).
    MergeGradSum,
    /// Dot backward: one operand's rows, dy times the other operand's rows.
    DotGrad,
    /// Dot backward through the L2 normalization of its rows (normalize=True).
    NormalizeRowsGrad,
    /// PReLU backward: dx, or alpha's gradient before the sum over the shared axes.
    PReluGrad,
    /// Softmax / log_softmax over any contiguous axes backward (the Softmax layer).
    SoftmaxAxesGrad,
}

/// How a kernel reads one storage binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Matmul => "matmul",
            Kernel::Conv2d => "conv2d",
            Kernel::ConvNd => "conv_nd",
            Kernel::SplitKReduce => "splitk_reduce",
            Kernel::Pool2d => "pool2d",
            Kernel::GlobalPool2d => "global_pool2d",
            Kernel::DepthwiseConv => "depthwise",
            Kernel::ConvTranspose => "conv_transpose",
            Kernel::Activation => "activation",
            Kernel::Rescale => "rescale",
            Kernel::Softmax => "softmax",
            Kernel::Embedding => "embedding",
            Kernel::RnnSequence => "rnn_sequence",
            Kernel::RnnMerge => "rnn_merge",
            Kernel::Binary => "binary",
            Kernel::NormalizeRows => "normalize_rows",
            Kernel::BatchedDot => "batched_dot",
            Kernel::StridedCopy => "strided_copy",
            Kernel::Bilinear => "bilinear",
            Kernel::MaskSelect => "mask_select",
            Kernel::Affine => "affine",
            Kernel::PRelu => "prelu",
            Kernel::LayerNorm => "layer_norm",
            Kernel::GroupNorm => "group_norm",
            Kernel::SoftmaxAxes => "softmax_axes",
            Kernel::RnnCopy => "rnn_copy",
            Kernel::ConvLstmGates => "conv_lstm_gates",
            Kernel::ConvLstmGatesTrain => "conv_lstm_gates_train",
            Kernel::ConvLstmGatesGrad => "conv_lstm_gates_grad",
            Kernel::MatmulAt => "matmul_at",
            Kernel::MatmulBt => "matmul_bt",
            Kernel::ActivationGrad => "activation_grad",
            Kernel::SoftmaxGrad => "softmax_grad",
            Kernel::Accumulate => "accumulate",
            Kernel::PenaltyGrad => "penalty_grad",
            Kernel::NoiseApply => "noise_apply",
            Kernel::EmbeddingGrad => "embedding_grad",
            Kernel::PenaltySum => "penalty_sum",
            Kernel::ConvGradInput => "conv_grad_input",
            Kernel::ConvGradWeights => "conv_grad_weights",
            Kernel::ConvTransposeGradInput => "conv_transpose_grad_input",
            Kernel::GradReduce => "grad_reduce",
            Kernel::BiasGrad => "bias_grad",
            Kernel::PoolGrad => "pool_grad",
            Kernel::GlobalPoolGradShare => "global_pool_grad_share",
            Kernel::GlobalPoolGrad => "global_pool_grad",
            Kernel::OptimSgd { .. } => "optim_sgd",
            Kernel::OptimAdam { .. } => "optim_adam",
            Kernel::OptimRmsProp { .. } => "optim_rmsprop",
            Kernel::OptimAdagrad => "optim_adagrad",
            Kernel::OptimBlockSums => "optim_block_sums",
            Kernel::OptimSegmentSums => "optim_segment_sums",
            Kernel::OptimTotal => "optim_total",
            Kernel::LossRows => "loss_rows",
            Kernel::LossCount => "loss_count",
            Kernel::LossReduce => "loss_reduce",
            Kernel::BatchNormSums => "batch_norm_sums",
            Kernel::BatchNormReduce => "batch_norm_reduce",
            Kernel::BatchNormApply => "batch_norm_apply",
            Kernel::BatchNormMoving => "batch_norm_moving",
            Kernel::BatchNormGrad => "batch_norm_grad",
            Kernel::NormRowStats => "norm_row_stats",
            Kernel::NormRowGrad => "norm_row_grad",
            Kernel::NormWeightSums => "norm_weight_sums",
            Kernel::NormWeightReduce => "norm_weight_reduce",
            Kernel::RnnTrainForward => "rnn_train_forward",
            Kernel::RnnTrainBackward => "rnn_train_backward",
            Kernel::RnnBlockCopy => "rnn_block_copy",
            Kernel::RnnDropout => "rnn_dropout",
            Kernel::RnnGemmGrouped => "rnn_gemm_grouped",
            Kernel::ScaleGrad => "scale_grad",
            Kernel::ScalarGrad => "scalar_grad",
            Kernel::BlockSum => "block_sum",
            Kernel::BilinearGrad => "bilinear_grad",
            Kernel::MergeGradStep => "merge_grad_step",
            Kernel::MergeGradSum => "merge_grad_sum",
            Kernel::DotGrad => "dot_grad",
            Kernel::NormalizeRowsGrad => "normalize_rows_grad",
            Kernel::PReluGrad => "prelu_grad",
            Kernel::SoftmaxAxesGrad => "softmax_axes_grad",
        }
    }

    fn entry_point(self) -> &'static str {
        match self {
            Kernel::Matmul | Kernel::Conv2d | Kernel::ConvNd => "main",
            Kernel::MatmulAt | Kernel::MatmulBt | Kernel::RnnGemmGrouped => "main",
            Kernel::SplitKReduce => "reduce_split_k",
            Kernel::RnnSequence => "sequence",
            Kernel::RnnMerge => "merge",
            Kernel::RnnCopy => "copy_state",
            Kernel::ConvGradInput | Kernel::ConvGradWeights | Kernel::ConvTransposeGradInput => {
                "conv_grad_gemm"
            }
            other => other.name(),
        }
    }

    /// The shader source: common.wgsl first, then the kernel's own files.
    fn source(self) -> String {
        let optim_header;
        let parts: &[&str] = match self {
            Kernel::Matmul | Kernel::SplitKReduce => &[UNGROUPED, GEMM, MATMUL],
            Kernel::Conv2d => &[UNGROUPED, GEMM, "const CONV_GENERAL: bool = false;", CONV2D],
            Kernel::ConvNd => &[
                "const GROUPED: bool = true;",
                GEMM,
                "const CONV_GENERAL: bool = true;",
                CONV2D,
            ],
            Kernel::Pool2d | Kernel::GlobalPool2d => &[POOL],
            Kernel::DepthwiseConv | Kernel::ConvTranspose => &[CONV],
            Kernel::Activation | Kernel::Rescale => &[ELEMENTWISE],
            Kernel::Softmax => &[SOFTMAX],
            Kernel::Embedding => &[EMBEDDING],
            Kernel::RnnSequence | Kernel::RnnMerge | Kernel::RnnCopy => &[RECURRENT],
            Kernel::Binary | Kernel::NormalizeRows | Kernel::BatchedDot => &[MERGE],
            Kernel::StridedCopy | Kernel::Bilinear => &[COPY],
            Kernel::MaskSelect => &[MASK],
            Kernel::Affine
            | Kernel::PRelu
            | Kernel::LayerNorm
            | Kernel::GroupNorm
            | Kernel::SoftmaxAxes => &[NORM],
            Kernel::ConvLstmGates => &[CONV_LSTM],
            Kernel::ConvLstmGatesTrain | Kernel::ConvLstmGatesGrad => &[ACT_GRAD, CONV_LSTM_GRAD],
            Kernel::MatmulAt => &[
                UNGROUPED,
                GEMM,
                "const TRANS_A: bool = true; const TRANS_B: bool = false;",
                MATMUL_GRAD,
            ],
            Kernel::MatmulBt => &[
                UNGROUPED,
                GEMM,
                "const TRANS_A: bool = false; const TRANS_B: bool = true;",
                MATMUL_GRAD,
            ],
            Kernel::ActivationGrad
            | Kernel::SoftmaxGrad
            | Kernel::Accumulate
            | Kernel::PenaltyGrad
            | Kernel::NoiseApply
            | Kernel::PenaltySum => &[ACT_GRAD, GRAD],
            Kernel::EmbeddingGrad => &[EMBEDDING_GRAD],
            Kernel::RnnTrainForward
            | Kernel::RnnTrainBackward
            | Kernel::RnnBlockCopy
            | Kernel::RnnDropout => &[ACT_GRAD, RECURRENT_GRAD],
            Kernel::RnnGemmGrouped => &["const GROUPED: bool = true;", GEMM, RECURRENT_GEMM],
            // conv_grad.wgsl's constants pick the GEMM's mode (unused by the others).
            Kernel::ConvGradInput => &[
                "const INPUT_GRAD: bool = true; const CONV_FORWARD: bool = false;",
                CONV_GRAD,
            ],
            Kernel::ConvGradWeights | Kernel::GradReduce | Kernel::BiasGrad => &[
                "const INPUT_GRAD: bool = false; const CONV_FORWARD: bool = false;",
                CONV_GRAD,
            ],
            Kernel::ConvTransposeGradInput => &[
                "const INPUT_GRAD: bool = false; const CONV_FORWARD: bool = true;",
                CONV_GRAD,
            ],
            Kernel::PoolGrad | Kernel::GlobalPoolGradShare | Kernel::GlobalPoolGrad => &[POOL_GRAD],
            Kernel::OptimSgd { .. }
            | Kernel::OptimAdam { .. }
            | Kernel::OptimRmsProp { .. }
            | Kernel::OptimAdagrad => {
                optim_header = self.optim_header();
                &[&optim_header, OPTIM_COMMON, OPTIM]
            }
            Kernel::OptimBlockSums | Kernel::OptimSegmentSums | Kernel::OptimTotal => {
                &[OPTIM_COMMON, OPTIM_NORM]
            }
            Kernel::LossRows | Kernel::LossCount | Kernel::LossReduce => &[LOSS],
            Kernel::BatchNormSums
            | Kernel::BatchNormReduce
            | Kernel::BatchNormApply
            | Kernel::BatchNormMoving
            | Kernel::BatchNormGrad => &[NORM_GRAD],
            Kernel::ScaleGrad | Kernel::ScalarGrad | Kernel::BlockSum | Kernel::BilinearGrad => {
                &[SHAPE_GRAD]
            }
            Kernel::NormRowStats
            | Kernel::NormRowGrad
            | Kernel::NormWeightSums
            | Kernel::NormWeightReduce => &[LAYER_NORM_GRAD],
            Kernel::MergeGradStep
            | Kernel::MergeGradSum
            | Kernel::DotGrad
            | Kernel::NormalizeRowsGrad
            | Kernel::PReluGrad
            | Kernel::SoftmaxAxesGrad => &[MERGE_GRAD],
        };
        let mut source = String::from(COMMON);
        for part in parts {
            source.push('\n');
            source.push_str(part);
        }
        source
    }

    /// Storage bindings 0..n in order; the kernel's uniform parameters follow at binding n.
    pub fn storage(self) -> &'static [Access] {
        use Access::{Read, ReadWrite};
        match self {
            Kernel::Matmul
            | Kernel::Conv2d
            | Kernel::ConvNd
            | Kernel::SplitKReduce
            | Kernel::DepthwiseConv
            | Kernel::ConvTranspose
            | Kernel::MatmulAt
            | Kernel::MatmulBt => &[Read, Read, Read, ReadWrite],
            Kernel::ActivationGrad
            | Kernel::SoftmaxGrad
            | Kernel::Accumulate
            | Kernel::PenaltyGrad
            | Kernel::NoiseApply
            | Kernel::PenaltySum => &[Read, Read, Read, ReadWrite],
            Kernel::EmbeddingGrad => &[Read, Read, ReadWrite, ReadWrite],
            Kernel::Pool2d | Kernel::GlobalPool2d => &[Read, ReadWrite, Read],
            Kernel::Activation | Kernel::Rescale => &[ReadWrite, Read, Read],
            Kernel::Softmax => &[ReadWrite],
            Kernel::Embedding => &[Read, Read, ReadWrite],
            Kernel::RnnSequence => &[Read, Read, ReadWrite, ReadWrite, Read],
            Kernel::RnnMerge | Kernel::RnnCopy => &[Read, ReadWrite],
            Kernel::Binary | Kernel::NormalizeRows | Kernel::BatchedDot | Kernel::MaskSelect => {
                &[Read, Read, ReadWrite]
            }
            Kernel::StridedCopy | Kernel::Bilinear => &[Read, ReadWrite],
            Kernel::Affine
            | Kernel::PRelu
            | Kernel::LayerNorm
            | Kernel::GroupNorm
            | Kernel::SoftmaxAxes => &[ReadWrite, Read, Read],
            Kernel::ConvLstmGates => &[Read, Read, ReadWrite, ReadWrite, ReadWrite],
            Kernel::ConvLstmGatesTrain => &[
                Read, Read, ReadWrite, ReadWrite, ReadWrite, ReadWrite, ReadWrite,
            ],
            Kernel::ConvLstmGatesGrad => &[Read, Read, Read, ReadWrite, ReadWrite, ReadWrite],
            Kernel::ConvGradInput
            | Kernel::ConvGradWeights
            | Kernel::ConvTransposeGradInput
            | Kernel::GradReduce
            | Kernel::BiasGrad => &[Read, Read, ReadWrite],
            Kernel::PoolGrad | Kernel::GlobalPoolGradShare | Kernel::GlobalPoolGrad => {
                &[Read, Read, Read, Read, ReadWrite]
            }
            // param, grad, grad_sq, ctl, then one read-write arena per state slot.
            Kernel::OptimSgd { momentum: false } => &[ReadWrite, Read, Read, Read],
            Kernel::OptimSgd { momentum: true }
            | Kernel::OptimAdagrad
            | Kernel::OptimRmsProp {
                momentum: false,
                centered: false,
            } => &[ReadWrite, Read, Read, Read, ReadWrite],
            Kernel::OptimAdam { amsgrad: false }
            | Kernel::OptimRmsProp {
                momentum: true,
                centered: false,
            }
            | Kernel::OptimRmsProp {
                momentum: false,
                centered: true,
            } => &[ReadWrite, Read, Read, Read, ReadWrite, ReadWrite],
            Kernel::OptimAdam { amsgrad: true }
            | Kernel::OptimRmsProp {
                momentum: true,
                centered: true,
            } => &[ReadWrite, Read, Read, Read, ReadWrite, ReadWrite, ReadWrite],
            Kernel::OptimBlockSums | Kernel::OptimSegmentSums | Kernel::OptimTotal => {
                &[Read, Read, ReadWrite, ReadWrite]
            }
            Kernel::LossRows | Kernel::LossCount | Kernel::LossReduce => {
                &[Read, Read, Read, ReadWrite, ReadWrite, ReadWrite]
            }
            Kernel::BatchNormSums
            | Kernel::BatchNormReduce
            | Kernel::BatchNormApply
            | Kernel::BatchNormMoving
            | Kernel::BatchNormGrad => &[Read, Read, Read, Read, Read, ReadWrite],
            Kernel::NormRowStats
            | Kernel::NormRowGrad
            | Kernel::NormWeightSums
            | Kernel::NormWeightReduce => &[Read, Read, Read, Read, ReadWrite],
            // The forward leaves binding 5 unused (so both time loops bind the dropout masks
            // at 6 and their uniform at 7).
            Kernel::RnnTrainForward => &[ReadWrite, ReadWrite, Read, Read, Read, Read, Read],
            Kernel::RnnTrainBackward => &[Read, Read, Read, Read, ReadWrite, ReadWrite, Read],
            Kernel::RnnBlockCopy => &[Read, ReadWrite],
            Kernel::RnnDropout => &[Read, Read, ReadWrite],
            Kernel::RnnGemmGrouped => &[Read, Read, Read, ReadWrite],
            Kernel::ScaleGrad | Kernel::ScalarGrad | Kernel::BlockSum | Kernel::BilinearGrad => {
                &[Read, Read, ReadWrite]
            }
            Kernel::MergeGradStep
            | Kernel::MergeGradSum
            | Kernel::DotGrad
            | Kernel::NormalizeRowsGrad
            | Kernel::PReluGrad
            | Kernel::SoftmaxAxesGrad => &[Read, Read, Read, ReadWrite],
        }
    }

    /// What each storage binding holds, for plans.
    pub fn binding_names(self) -> &'static [&'static str] {
        match self {
            Kernel::Matmul | Kernel::Conv2d | Kernel::ConvNd => &["a", "b", "bias", "c"],
            Kernel::MatmulAt | Kernel::MatmulBt => &["a", "b", "-", "c"],
            Kernel::ActivationGrad | Kernel::SoftmaxGrad => &["x", "y", "dy", "dx"],
            Kernel::Accumulate => &["-", "-", "dy", "dx"],
            Kernel::PenaltyGrad => &["x", "-", "-", "dx"],
            Kernel::NoiseApply => &["x", "multiplier", "addend", "y"],
            Kernel::EmbeddingGrad => &["segments", "dy", "grad", "grad_sq"],
            Kernel::PenaltySum => &["x", "-", "-", "sum"],
            Kernel::SplitKReduce => &["partials", "-", "bias", "c"],
            Kernel::Pool2d | Kernel::GlobalPool2d => &["x", "y", "ids"],
            Kernel::DepthwiseConv | Kernel::ConvTranspose => &["x", "kernel", "bias", "y"],
            Kernel::Activation | Kernel::Rescale => &["x", "scale", "offset"],
            Kernel::Softmax => &["x"],
            Kernel::Embedding => &["ids", "table", "y"],
            Kernel::RnnSequence => &["xproj", "recurrent_kernel", "state", "y", "ids"],
            Kernel::RnnMerge => &["both", "merged"],
            Kernel::Binary | Kernel::BatchedDot => &["a", "b", "y"],
            Kernel::NormalizeRows => &["-", "-", "y"],
            Kernel::StridedCopy | Kernel::Bilinear => &["x", "y"],
            Kernel::MaskSelect => &["ids", "first", "y"],
            Kernel::Affine => &["x", "scale", "shift"],
            Kernel::PRelu => &["x", "alpha", "-"],
            Kernel::LayerNorm | Kernel::GroupNorm => &["x", "gamma", "beta"],
            Kernel::SoftmaxAxes => &["x", "-", "-"],
            Kernel::RnnCopy => &["src", "dst"],
            Kernel::ConvLstmGates => &["xz", "hz", "h", "c", "y"],
            Kernel::ConvLstmGatesTrain => &["xz", "hz", "h", "c", "y", "tape", "h_in"],
            Kernel::ConvLstmGatesGrad => &["tape", "dy", "dh_later", "dc", "dz_step", "dz_all"],
            Kernel::ConvGradInput => &["dy", "kernel", "dx"],
            Kernel::ConvGradWeights => &["x", "dy", "dkernel"],
            Kernel::ConvTransposeGradInput => &["dy", "kernel", "dx"],
            Kernel::GradReduce => &["partials", "-", "sum"],
            Kernel::BiasGrad => &["dy", "-", "sums"],
            Kernel::PoolGrad => &["x", "dy", "-", "-", "dx"],
            Kernel::GlobalPoolGradShare => &["x", "dy", "ids", "-", "share"],
            Kernel::GlobalPoolGrad => &["x", "dy", "ids", "share", "dx"],
            Kernel::OptimSgd { momentum: false } => &["param", "grad", "grad_sq", "ctl"],
            Kernel::OptimSgd { momentum: true } => &["param", "grad", "grad_sq", "ctl", "momentum"],
            Kernel::OptimAdagrad => &["param", "grad", "grad_sq", "ctl", "accumulator"],
            Kernel::OptimAdam { amsgrad } => {
                if amsgrad {
                    &[
                        "param",
                        "grad",
                        "grad_sq",
                        "ctl",
                        "momentum",
                        "velocity",
                        "velocity_hat",
                    ]
                } else {
                    &["param", "grad", "grad_sq", "ctl", "momentum", "velocity"]
                }
            }
            Kernel::OptimRmsProp { momentum, centered } => match (momentum, centered) {
                (false, false) => &["param", "grad", "grad_sq", "ctl", "velocity"],
                (true, false) => &["param", "grad", "grad_sq", "ctl", "velocity", "momentum"],
                (false, true) => &[
                    "param",
                    "grad",
                    "grad_sq",
                    "ctl",
                    "velocity",
                    "average_gradient",
                ],
                (true, true) => &[
                    "param",
                    "grad",
                    "grad_sq",
                    "ctl",
                    "velocity",
                    "momentum",
                    "average_gradient",
                ],
            },
            Kernel::OptimBlockSums | Kernel::OptimSegmentSums | Kernel::OptimTotal => {
                &["grad", "grad_sq", "partials", "ctl"]
            }
            Kernel::LossRows | Kernel::LossCount | Kernel::LossReduce => {
                &["pred", "target", "mask", "dpred", "rows", "loss"]
            }
            Kernel::BatchNormSums => &["x", "dy", "stats", "-", "-", "partials"],
            Kernel::BatchNormReduce => &["partials", "-", "-", "-", "-", "stats"],
            Kernel::BatchNormApply => &["x", "stats", "gamma", "beta", "-", "y"],
            Kernel::BatchNormMoving => &["stats", "-", "-", "-", "-", "moving"],
            Kernel::BatchNormGrad => &["x", "dy", "stats", "sums", "gamma", "dx"],
            Kernel::NormRowStats => &["x", "dy", "gamma", "-", "stats"],
            Kernel::NormRowGrad => &["x", "dy", "gamma", "stats", "dx"],
            Kernel::NormWeightSums => &["x", "dy", "stats", "-", "partials"],
            Kernel::NormWeightReduce => &["partials", "-", "-", "-", "out"],
            Kernel::RnnTrainForward => &[
                "saved",
                "y",
                "ids",
                "recurrent_kernel",
                "bias",
                "-",
                "dropout masks",
            ],
            Kernel::RnnTrainBackward => &[
                "saved",
                "dy",
                "ids",
                "recurrent_kernel",
                "dz",
                "aux",
                "dropout masks",
            ],
            Kernel::RnnBlockCopy => &["src", "dst"],
            Kernel::RnnGemmGrouped => &["a", "b", "bias or dropout masks", "c"],
            Kernel::RnnDropout => &["x", "dropout masks", "y"],
            Kernel::ScaleGrad => &["dy", "scale", "dx"],
            Kernel::ScalarGrad => &["x", "dy", "dx"],
            Kernel::BlockSum | Kernel::BilinearGrad => &["dy", "-", "dx"],
            Kernel::MergeGradStep => &["a", "b", "g", "d operand"],
            Kernel::MergeGradSum => &["g", "-", "-", "sum"],
            Kernel::DotGrad => &["dy", "rows", "-", "d rows"],
            Kernel::NormalizeRowsGrad => &["rows", "-", "-", "d rows"],
            Kernel::PReluGrad => &["x", "alpha", "dy", "d"],
            Kernel::SoftmaxAxesGrad => &["y", "dy", "-", "dx"],
        }
    }

    /// Threads per workgroup.
    pub fn threads(self) -> u32 {
        match self {
            Kernel::Matmul
            | Kernel::Conv2d
            | Kernel::ConvNd
            | Kernel::MatmulAt
            | Kernel::MatmulBt
            | Kernel::PenaltySum
            | Kernel::ConvGradInput
            | Kernel::ConvGradWeights
            | Kernel::ConvTransposeGradInput
            | Kernel::RnnGemmGrouped => 256,
            Kernel::RnnSequence | Kernel::RnnTrainForward | Kernel::RnnTrainBackward => {
                RNN_LOOP_THREADS
            }
            Kernel::OptimSegmentSums
            | Kernel::OptimTotal
            | Kernel::LossCount
            | Kernel::LossReduce => REDUCE_THREADS,
            _ => LINEAR_THREADS,
        }
    }

    /// An optimizer kernel's own declarations: its flags, the state arenas it binds (in
    /// `storage` order after the first four) and the uniform after them. Every rule's state
    /// name is declared so optim.wgsl's four entry points all validate; those this kernel does
    /// not bind are one-float private arrays its entry point never reaches.
    fn optim_header(self) -> String {
        let (flags, bound): (&[(&str, bool)], &[&str]) = match self {
            Kernel::OptimSgd { momentum } => (
                &[("SGD_MOMENTUM", momentum)],
                if momentum { &["sgd_momentum"] } else { &[] },
            ),
            Kernel::OptimAdam { amsgrad } => (
                &[("AMSGRAD", amsgrad)],
                if amsgrad {
                    &["adam_m", "adam_v", "adam_vhat"]
                } else {
                    &["adam_m", "adam_v"]
                },
            ),
            Kernel::OptimRmsProp { momentum, centered } => (
                &[("RMS_MOMENTUM", momentum), ("RMS_CENTERED", centered)],
                match (momentum, centered) {
                    (false, false) => &["rms_velocity"],
                    (true, false) => &["rms_velocity", "rms_momentum"],
                    (false, true) => &["rms_velocity", "rms_average"],
                    (true, true) => &["rms_velocity", "rms_momentum", "rms_average"],
                },
            ),
            _ => (&[], &["adagrad_accumulator"]),
        };
        const ALL_FLAGS: [&str; 4] = ["SGD_MOMENTUM", "AMSGRAD", "RMS_MOMENTUM", "RMS_CENTERED"];
        const ALL_STATE: [&str; 8] = [
            "sgd_momentum",
            "adam_m",
            "adam_v",
            "adam_vhat",
            "rms_velocity",
            "rms_momentum",
            "rms_average",
            "adagrad_accumulator",
        ];
        let mut h = String::new();
        for flag in ALL_FLAGS {
            let on = flags.iter().any(|&(f, v)| f == flag && v);
            h.push_str(&format!("const {flag}: bool = {on};\n"));
        }
        for name in ALL_STATE {
            match bound.iter().position(|&b| b == name) {
                Some(k) => h.push_str(&format!(
                    "@group(0) @binding({}) var<storage, read_write> {name}: array<f32>;\n",
                    4 + k
                )),
                None => h.push_str(&format!("var<private> {name}: array<f32, 1>;\n")),
            }
        }
        h.push_str(&format!(
            "@group(0) @binding({}) var<uniform> p: OptimParams;\n",
            4 + bound.len()
        ));
        h
    }
}

/// A kernel ready to dispatch.
pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// Pipelines are compiled once per runtime and shared by every plan.
pub struct Pipelines {
    by_kernel: HashMap<Kernel, Pipeline>,
}

impl Pipelines {
    pub fn new() -> Self {
        Pipelines {
            by_kernel: HashMap::new(),
        }
    }

    /// Compiles `kernel` unless it already is. Shader or layout errors surface through the
    /// caller's error scope.
    pub fn ensure(&mut self, device: &wgpu::Device, kernel: Kernel) {
        if self.by_kernel.contains_key(&kernel) {
            return;
        }
        let pipeline = create(device, kernel);
        self.by_kernel.insert(kernel, pipeline);
    }

    pub fn get(&self, kernel: Kernel) -> Result<&Pipeline> {
        self.by_kernel.get(&kernel).ok_or_else(|| {
            Error::Gpu(format!(
                "internal: kernel '{}' was not compiled",
                kernel.name()
            ))
        })
    }
}

fn create(device: &wgpu::Device, kernel: Kernel) -> Pipeline {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(kernel.name()),
        source: wgpu::ShaderSource::Wgsl(kernel.source().into()),
    });
    let storage = kernel.storage();
    let mut entries: Vec<wgpu::BindGroupLayoutEntry> = storage
        .iter()
        .enumerate()
        .map(|(binding, access)| wgpu::BindGroupLayoutEntry {
            binding: binding as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage {
                    read_only: *access == Access::Read,
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    entries.push(uniform_entry(storage.len() as u32));
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(kernel.name()),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(kernel.name()),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(kernel.name()),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(kernel.entry_point()),
        compilation_options: wgpu::PipelineCompilationOptions::default(),
        cache: None,
    });
    Pipeline { pipeline, layout }
}

fn uniform_entry(binding: u32) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}
