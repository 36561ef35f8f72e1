// Shared by the optimizer kernels (optim.wgsl, optim_norm.wgsl; after common.wgsl): the layout
// of the control buffer `ctl` (gpu/grad/optim.rs) and the parameter an arena element belongs to.
// Each module declares `ctl` (u32 words) and a uniform `p` with a `segments` count.
//
// ctl: STEP_WORDS words of per-step scalars the CPU writes before each submit, then per segment
// (parameter) SEGMENT_WORDS words (offset, len, grad_sq offset or NO_SQ, 0), then the norm
// kernels' results: each segment's sum of squares and the total (f32 bits).

const STEP_WORDS: u32 = 8u;
const SEGMENT_WORDS: u32 = 4u;
const NO_SQ: u32 = 0xffffffffu;
const NO_SEGMENT: u32 = 0xffffffffu;

// The segment holding arena element i, or NO_SEGMENT in padding and in parameters left out.
// Segments are sorted by offset: a binary search for the last one starting at or before i.
fn segment_of(i: u32) -> u32 {
    var lo = 0u;
    var hi = p.segments;
    while (lo < hi) {
        let mid = (lo + hi) / 2u;
        if (ctl[STEP_WORDS + SEGMENT_WORDS * mid] <= i) {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    if (lo == 0u) {
        return NO_SEGMENT;
    }
    let k = lo - 1u;
    let at = STEP_WORDS + SEGMENT_WORDS * k;
    if (i >= ctl[at] + ctl[at + 1u]) {
        return NO_SEGMENT;
    }
    return k;
}

fn segment_offset(k: u32) -> u32 {
    return ctl[STEP_WORDS + SEGMENT_WORDS * k];
}

fn segment_len(k: u32) -> u32 {
    return ctl[STEP_WORDS + SEGMENT_WORDS * k + 1u];
}

fn segment_sq(k: u32) -> u32 {
    return ctl[STEP_WORDS + SEGMENT_WORDS * k + 2u];
}

fn is_nan_f32(x: f32) -> bool {
    // By bits: compilers may assume NaN away in x != x.
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

fn is_finite_f32(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

fn nan_f32() -> f32 {
    return bitcast<f32>(0x7fc00000u);
}
