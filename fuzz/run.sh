#!/usr/bin/env bash
# Fuzzes one target: fuzz/run.sh TARGET [SECONDS] [extra libFuzzer flags...]
# New inputs go to fuzz/corpus-work/TARGET (ignored by git); the committed seeds in
# fuzz/corpus/TARGET are read, never written. Crashes land in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: fuzz/run.sh TARGET [SECONDS] [libFuzzer flags...]}
seconds=${2:-600}
shift $(( $# < 2 ? $# : 2 ))
# Stable Rust accepts cargo-fuzz's -Z sanitizer flags only with RUSTC_BOOTSTRAP=1.
# -a: debug assertions and overflow checks on, so arithmetic overflow counts as a crash.
RUSTC_BOOTSTRAP=1 cargo fuzz build -a "$target"
mkdir -p "corpus-work/$target" "artifacts/$target"
# -malloc_limit_mb above the rss limit: npyz allocates a header of the declared size (up to
# 4 GiB) before finding the file is short; with lazy zero pages that is no real memory.
exec "target/$(rustc -vV | sed -n 's/^host: //p')/release/$target" \
    -artifact_prefix="artifacts/$target/" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=8192 \
    -print_final_stats=1 "$@" \
    "corpus-work/$target" "corpus/$target"
