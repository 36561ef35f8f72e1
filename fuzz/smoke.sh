#!/usr/bin/env bash
# Fuzz smoke for CI: builds every target, replays the committed findings (each must now pass),
# then fuzzes each target briefly from its seed corpus: under 60 s after the build.
# Usage: fuzz/smoke.sh [SECONDS_PER_TARGET]   (default 6; 8 targets: under a minute)
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-6}
targets=(keras_file keras_parts config_json weights_h5 npy_npz tokenizer_json cifar_batch nusax_csv)
RUSTC_BOOTSTRAP=1 cargo fuzz build -a
bin=target/$(rustc -vV | sed -n 's/^host: //p')/release
flags=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=8192)
for found in artifacts-found/*; do
    # File names start with the target that found them.
    target=${found##*/}
    target=${target%%-*}
    echo "replay $found through $target"
    "$bin/$target" "${flags[@]}" "$found" >/dev/null 2>&1 || {
        echo "FAIL: $found still crashes $target" >&2
        "$bin/$target" "${flags[@]}" "$found" 2>&1 | tail -20 >&2
        exit 1
    }
done
for target in "${targets[@]}"; do
    scratch=$(mktemp -d)
    echo "fuzz $target for ${seconds}s"
    # The scratch corpus is written; the committed seeds only read.
    "$bin/$target" "${flags[@]}" -max_total_time="$seconds" -print_final_stats=1 \
        -artifact_prefix="$scratch/" "$scratch" "corpus/$target" 2>&1 |
        grep -E '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|SUMMARY|==[0-9]+==ERROR)' || true
    if compgen -G "$scratch/crash-*" >/dev/null || compgen -G "$scratch/oom-*" >/dev/null ||
        compgen -G "$scratch/timeout-*" >/dev/null; then
        echo "FAIL: $target found a crash; inputs in $scratch" >&2
        exit 1
    fi
    rm -rf "$scratch"
done
echo "fuzz smoke: ok"
