//! Runtime CPU-feature dispatch for the CPU path's own loops (Winograd transforms, im2col,
//! pooling, activations, recurrent gates): one binary, built for baseline x86-64, that runs
//! AVX-512 or AVX2+FMA code where the host has it.
//!
//! [`multiversion!`] compiles a function's body three times on x86-64 — baseline (SSE2),
//! `avx2,fma` and AVX-512 — and calls the copy for [`level`]. The loops are plain Rust that the
//! compiler vectorizes for the enabled width. Rust never contracts `a * b + c` into an FMA nor
//! reorders float sums on its own, so every copy computes bit-identical results: the levels differ
//! in speed only. On aarch64 NEON is part of the baseline target, so there is one copy.
//!
//! env `WGNN_CPU=avx512|avx2|sse2` forces a lower level (tests run every level on any host); a
//! level above what the host has is refused, since its instructions would fault. The `gemm`
//! crate keeps its own dispatch and is not affected by `WGNN_CPU`.

use std::sync::OnceLock;

/// An instruction-set level the CPU path's loops are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The build's baseline: SSE2 on x86-64, NEON on aarch64, scalar elsewhere.
    Baseline,
    /// x86-64 AVX2 with FMA (x86-64-v3 without the bit-manipulation extensions).
    Avx2,
    /// x86-64 AVX-512 F/VL/BW/DQ with AVX2 and FMA (x86-64-v4).
    Avx512,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 3] = [Level::Baseline, Level::Avx2, Level::Avx512];

    /// The name `WGNN_CPU` takes and benchmarks print.
    pub fn name(self) -> &'static str {
        match self {
            Level::Baseline if cfg!(target_arch = "x86_64") => "sse2",
            Level::Baseline if cfg!(target_arch = "aarch64") => "neon",
            Level::Baseline => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// Parses a `WGNN_CPU` value: a level name, or `baseline` for the lowest.
    pub fn parse(name: &str) -> Option<Level> {
        match name.trim().to_ascii_lowercase().as_str() {
            "baseline" | "sse2" | "neon" | "scalar" => Some(Level::Baseline),
            "avx2" => Some(Level::Avx2),
            "avx512" => Some(Level::Avx512),
            _ => None,
        }
    }
}

/// The highest level this host supports.
pub fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            return Level::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Level::Avx2;
        }
    }
    Level::Baseline
}

/// The level `WGNN_CPU` (if set) asks for, checked against the host.
fn from_env(value: Option<&str>, host: Level) -> Result<Level, String> {
    let Some(value) = value else {
        return Ok(host);
    };
    let wanted = Level::parse(value).ok_or_else(|| {
        format!("WGNN_CPU={value:?} is not a CPU level: use avx512, avx2 or sse2 (or baseline)")
    })?;
    if wanted > host {
        return Err(format!(
            "WGNN_CPU={value}: this CPU supports {} at most",
            host.name()
        ));
    }
    Ok(wanted)
}

static SELECTED: OnceLock<Result<Level, String>> = OnceLock::new();

fn selected() -> &'static Result<Level, String> {
    SELECTED.get_or_init(|| from_env(std::env::var("WGNN_CPU").ok().as_deref(), detected()))
}

/// The level in use, or the one-line error for a bad `WGNN_CPU` (the CPU path checks it before
/// it runs anything).
pub fn checked_level() -> crate::Result<Level> {
    selected().clone().map_err(crate::Error::Usage)
}

/// The level the loops run at: `WGNN_CPU`'s, else the host's. A bad `WGNN_CPU` is reported by
/// [`checked_level`]; here it falls back to the baseline, which every host runs.
#[inline]
pub fn level() -> Level {
    *selected().as_ref().unwrap_or(&Level::Baseline)
}

/// How benchmarks and reports name the CPU path (their `adapter` field): `avx2`,
/// `sse2, forced by WGNN_CPU` ...
pub fn describe() -> String {
    let level = level();
    if level < detected() {
        format!("{}, forced by WGNN_CPU", level.name())
    } else {
        level.name().to_string()
    }
}

/// Defines `fn NAME(args) -> R` whose body is compiled for each [`Level`] and dispatched on
/// [`level`] at every call (a cached load and a predictable branch). Arguments are plain
/// identifiers; the function must not be generic. Keep helpers the body calls
/// `#[inline(always)]` so that they are compiled into each copy.
macro_rules! multiversion {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }
            match $crate::cpu::simd::level() {
                // SAFETY: `level()` is never above `detected()`, so the host has these features.
                #[cfg(target_arch = "x86_64")]
                $crate::cpu::simd::Level::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                $crate::cpu::simd::Level::Avx2 => unsafe { avx2($($arg),*) },
                _ => body($($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_levels_and_refuses_unknown_or_unsupported_ones() {
        assert_eq!(from_env(None, Level::Avx2), Ok(Level::Avx2));
        assert_eq!(from_env(Some("sse2"), Level::Avx512), Ok(Level::Baseline));
        assert_eq!(from_env(Some("AVX2"), Level::Avx512), Ok(Level::Avx2));
        assert_eq!(from_env(Some("avx512"), Level::Avx512), Ok(Level::Avx512));
        let err = from_env(Some("avx512"), Level::Avx2).unwrap_err();
        assert!(err.contains("supports avx2 at most"), "{err}");
        let err = from_env(Some("avx9"), Level::Avx512).unwrap_err();
        assert!(err.contains("WGNN_CPU=\"avx9\""), "{err}");
        for level in Level::ALL {
            assert_eq!(Level::parse(level.name()), Some(level));
        }
    }

    #[test]
    fn the_selected_level_runs_on_this_host() {
        assert!(level() <= detected());
    }
}
