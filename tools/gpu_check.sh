#!/usr/bin/env bash
# One prepared GPU measurement: parity and speed of `wgnn` on whatever adapter wgpu finds, in one
# run, written to one JSON file. Made for a lent device machine (one GPU, no network, minutes of
# time): build the binary on the build machine and carry it; the data travel beside it.
#
#   tools/gpu_check.sh [--wgnn BIN] [--data DIR] [--seed DIR] [--images N] [--batches "1 64 ..."]
#                      [--train-images N] [--train-batches "64 256"] [--peak-gflops P] [--out FILE.json]
#
#   --wgnn     the wgnn binary (default target/release/wgnn)
#   --data     folder with cifar10/ (the test batch) and nusax/ (default env WGNN_DATA)
#   --seed     the seed report's NusaX models and nusax_tokenizer.json (default env WGNN_SEED_MODELS)
#   --images   CIFAR-10 test images per model (default 10000: the whole test set)
#   --batches  bench batch sizes (default "1 64 256 1024 4096")
#   --profile-batch batch size of the per-dispatch GPU profile (default 256; 0 skips it)
#   --train-images  CIFAR-10 images each training run takes (default 2048)
#   --train-batches training batch sizes (default "64 256"; "" skips training)
#   --peak-gflops  the GPU's FP32 peak for the share column (default: known from the adapter's
#              name — H200/H100 SXM 67,000 — else none)
#   --out      the JSON file (default gpu_check.json)
#
# Steps: the Vulkan adapter (`wgnn info --adapters`); `wgnn eval cifar10 --backend gpu --compare`
# on both shipped CNNs (GPU vs CPU on every image, and the first 1,000 against Keras's
# probabilities in tests/fixtures/cifar10); `wgnn eval nusax --backend gpu --compare` on every
# seed model (and against the seed's Keras probabilities); every
# single-input Keras fixture of tests/fixtures through `wgnn predict --backend gpu` against
# Keras's expected output (|got - want| <= 1e-4 (1 + |want|)); `wgnn bench --backend gpu` of the
# CNNs and the NusaX LSTM at each batch size, with GFLOP/s and the share of the FP32 peak, and
# `wgnn bench --profile` of each at --profile-batch (every dispatch's GPU time); then
# training: `wgnn train` of both CNNs (sparse cross-entropy, Adam, one epoch over the first
# --train-images test images, used as a training batch file) and of the seed's NusaX lstm_layer2
# (its Dropout included) on `--backend gpu` and `--backend cpu` at each --train-batches size (the
# epoch losses must agree within 1e-4 relative), and `wgnn bench --train --backend gpu` of each.
# Exits non-zero when a parity check fails or a step errors (the JSON says which).
#
# On a lent device machine (/work/.library/device/README.md): the whole working tree travels
# (about 38 MB), so of the 64 MiB a call may carry about 26 MB remain: the binary xz-compressed
# (~5 MB), the seed's *.keras, *.test_probs.npy and nusax_tokenizer.json (~7 MB), nusax/*.csv,
# and the first N records of cifar10/test_batch.bin (3,073 bytes each; wgnn reads the records
# present, so `head -c $((N * 3073))` makes such a file; about 4,500 fit). Put them in a folder
# that .git/info/exclude ignores, name it and .gl (the Vulkan loader) in `carry`, and run e.g.
#   for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; xz -d .dev/wgnn.xz; chmod +x .dev/wgnn;
#   tools/gpu_check.sh --wgnn .dev/wgnn --data .dev/data --seed .dev/seed --images 4500 \
#     --out $OUT/gpu_check.json
set -uo pipefail
cd "$(dirname "$0")/.."

WGNN=target/release/wgnn
DATA=${WGNN_DATA:-}
SEED=${WGNN_SEED_MODELS:-}
IMAGES=10000
BATCHES="1 64 256 1024 4096"
PROFILE_BATCH=256
TRAIN_IMAGES=2048
TRAIN_BATCHES="64 256"
PEAK=""
OUT=gpu_check.json
while [ $# -gt 0 ]; do
  case "$1" in
    --wgnn) WGNN=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --images) IMAGES=$2; shift 2 ;;
    --batches) BATCHES=$2; shift 2 ;;
    --profile-batch) PROFILE_BATCH=$2; shift 2 ;;
    --train-images) TRAIN_IMAGES=$2; shift 2 ;;
    --train-batches) TRAIN_BATCHES=$2; shift 2 ;;
    --peak-gflops) PEAK=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ -x "$WGNN" ] || { echo "gpu_check.sh: no wgnn binary at '$WGNN' (build it, or pass --wgnn)" >&2; exit 2; }
[ -n "$DATA" ] && [ -d "$DATA/cifar10" ] && [ -d "$DATA/nusax" ] ||
  { echo "gpu_check.sh: --data (or WGNN_DATA) must hold cifar10/ and nusax/, got '$DATA'" >&2; exit 2; }
[ -n "$SEED" ] && [ -f "$SEED/nusax_tokenizer.json" ] ||
  { echo "gpu_check.sh: --seed (or WGNN_SEED_MODELS) must hold the seed models and nusax_tokenizer.json, got '$SEED'" >&2; exit 2; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
LOG="$WORK/steps.jsonl"
: >"$LOG"
started=$(date +%s)

# One record per step: {"step", "ok", "seconds", "result" (the command's --json line) or "error"}.
record() {
  local step=$1 ok=$2 secs=$3 result=$4
  python3 - "$step" "$ok" "$secs" "$result" >>"$LOG" <<'EOF'
import json, sys
step, ok, secs, result = sys.argv[1:]
try:
    value = json.loads(result)
    key = "result"
except ValueError:
    value, key = result.strip().splitlines()[-1] if result.strip() else "", "error"
print(json.dumps({"step": step, "ok": ok == "1", "seconds": float(secs), key: value}))
EOF
}

# Runs a wgnn command whose last stdout line is JSON; records it under `step`.
json_step() {
  local step=$1; shift
  local t0 out rc
  t0=$(date +%s.%N)
  out=$("$@" 2>"$WORK/err")
  rc=$?
  local secs
  secs=$(python3 -c "import time; print(round(time.time() - $t0, 3))")
  if [ $rc -eq 0 ]; then
    record "$step" 1 "$secs" "$(printf '%s\n' "$out" | tail -n 1)"
    echo "ok    $step (${secs}s)"
  else
    record "$step" 0 "$secs" "$(cat "$WORK/err")"
    echo "FAIL  $step: $(tail -n 1 "$WORK/err")"
  fi
}

# Compares GOT.npy with Keras's WANT.npy (tools/npy_close.py); records it under `step`.
compare_step() {
  local step=$1 got=$2 want=$3; shift 3
  local verdict rc
  if [ -f "$got" ]; then
    verdict=$(python3 tools/npy_close.py "$got" "$want" "$@" 2>&1)
    rc=$?
  else
    verdict="no output from the step before"
    rc=1
  fi
  if [ $rc -eq 0 ]; then
    record "$step" 1 0 "$verdict"
  else
    record "$step" 0 0 "$verdict"
    echo "FAIL  $step: $verdict"
  fi
}

echo "== adapter"
"$WGNN" info --adapters | tee "$WORK/adapters.txt"

echo "== CIFAR-10, GPU vs CPU, $IMAGES test images"
for m in cifar10_base cifar10_vgg6; do
  json_step "eval_cifar10/$m" "$WGNN" eval cifar10 "models/$m.keras" --data "$DATA/cifar10" \
    --backend gpu --compare --limit "$IMAGES" --json --save-probs "$WORK/$m.npy"
  # Keras's own probabilities of the first 1,000 test images (the exact-pixel ones).
  compare_step "keras_cifar10/$m" "$WORK/$m.npy" "tests/fixtures/cifar10/$m.first1000.keras_probs.npy" --rows 1000
done

echo "== NusaX seed models, GPU vs CPU"
for m in "$SEED"/*.keras; do
  name=$(basename "$m" .keras)
  json_step "eval_nusax/$name" "$WGNN" eval nusax "$m" --tokenizer "$SEED/nusax_tokenizer.json" \
    --data "$DATA/nusax" --backend gpu --compare --json --save-probs "$WORK/$name.npy"
  compare_step "keras_nusax/$name" "$WORK/$name.npy" "$SEED/$name.test_probs.npy"
done

echo "== Keras fixtures through wgnn predict --backend gpu"
fixtures=0
for m in tests/fixtures/*.keras; do
  name=${m%.keras}
  [ -f "$name.input.npy" ] && [ -f "$name.expected.npy" ] || continue
  fixtures=$((fixtures + 1))
  rm -f "$WORK/got.npy"
  if ! "$WGNN" predict "$m" "$name.input.npy" -o "$WORK/got.npy" --backend gpu 2>"$WORK/err" >/dev/null; then
    record "fixture/$(basename "$name")" 0 0 "wgnn predict: $(tail -n 1 "$WORK/err")"
    echo "FAIL  fixture $(basename "$name"): $(tail -n 1 "$WORK/err")"
    continue
  fi
  compare_step "fixture/$(basename "$name")" "$WORK/got.npy" "$name.expected.npy"
done
echo "$fixtures fixtures checked"

echo "== bench --backend gpu at batch sizes $BATCHES"
for m in models/cifar10_base.keras models/cifar10_vgg6.keras "$SEED/lstm_layer2.keras"; do
  for b in $BATCHES; do
    json_step "bench/$(basename "$m" .keras)/$b" "$WGNN" bench "$m" --backend gpu \
      --batch-size "$b" --iters 10 --warmup 3 --latency-runs 0 --json
  done
done

if [ "$PROFILE_BATCH" -gt 0 ]; then
  echo "== bench --profile at batch $PROFILE_BATCH (GPU time per dispatch, timestamp queries)"
  for m in models/cifar10_base.keras models/cifar10_vgg6.keras "$SEED/lstm_layer2.keras"; do
    json_step "profile/$(basename "$m" .keras)/$PROFILE_BATCH" "$WGNN" bench "$m" --backend gpu \
      --batch-size "$PROFILE_BATCH" --iters 3 --warmup 1 --latency-runs 0 --profile --json
  done
fi

echo "== training, GPU vs CPU, and bench --train at batch sizes $TRAIN_BATCHES"
# `wgnn train --dataset cifar10` reads data_batch_*.bin: the test batch (the part carried) serves.
mkdir -p "$WORK/cifar_train"
ln -s "$(cd "$DATA/cifar10" && pwd)/test_batch.bin" "$WORK/cifar_train/data_batch_1.bin"
TRAIN_ARGS=(--epochs 1 --no-shuffle --loss sparse_categorical_crossentropy --optimizer adam
  --metrics accuracy --json)
for b in $TRAIN_BATCHES; do
  for backend in gpu cpu; do
    for m in cifar10_base cifar10_vgg6; do
      json_step "train/$m/$b/$backend" "$WGNN" train "models/$m.keras" --dataset cifar10 \
        --data "$WORK/cifar_train" --limit "$TRAIN_IMAGES" --batch-size "$b" --backend "$backend" \
        "${TRAIN_ARGS[@]}" -o "$WORK/trained.keras"
    done
    json_step "train/lstm_layer2/$b/$backend" "$WGNN" train "$SEED/lstm_layer2.keras" \
      --dataset nusax --data "$DATA/nusax" --tokenizer "$SEED/nusax_tokenizer.json" \
      --batch-size "$b" --backend "$backend" "${TRAIN_ARGS[@]}" -o "$WORK/trained.keras"
  done
  for m in models/cifar10_base.keras models/cifar10_vgg6.keras "$SEED/lstm_layer2.keras"; do
    json_step "bench_train/$(basename "$m" .keras)/$b" "$WGNN" bench "$m" --train --backend gpu \
      --batch-size "$b" --iters 5 --warmup 2 --json
  done
done

python3 - "$LOG" "$WORK/adapters.txt" "$OUT" "$PEAK" "$(( $(date +%s) - started ))" <<'EOF'
import json, sys
log, adapters, out, peak, seconds = sys.argv[1:]
steps = [json.loads(line) for line in open(log)]
adapter_text = open(adapters).read()
if not peak:
    known = {"H200": 67000.0, "H100": 67000.0}
    peak = next((v for k, v in known.items() if k in adapter_text), None)
peak = float(peak) if peak else None
for s in steps:
    r = s.get("result")
    if s["step"].startswith("bench") and isinstance(r, dict) and peak and "gflops" in r:
        r["share_of_fp32_peak"] = r["gflops"] / peak
# Training on the GPU against the CPU path: each epoch's loss within 1e-4 relative.
by_step = {s["step"]: s for s in steps}
for s in steps:
    if not (s["step"].startswith("train/") and s["step"].endswith("/gpu")):
        continue
    cpu = by_step.get(s["step"][: -len("gpu")] + "cpu")
    g = (s.get("result") or {}).get("history", {}).get("loss") if isinstance(s.get("result"), dict) else None
    c = (cpu.get("result") or {}).get("history", {}).get("loss") if cpu and isinstance(cpu.get("result"), dict) else None
    if g is None or c is None or len(g) != len(c):
        s["ok"] = False
        s["why"] = "no GPU or CPU loss history to compare"
        continue
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(g, c))
    s["loss_vs_cpu_relative"] = worst
    if worst > 1e-4:
        s["ok"] = False
        s["why"] = f"GPU loss {g} vs CPU {c}: {worst:.2e} relative > 1e-4"
# GPU against CPU on the evaluations: probabilities within 1e-4 (1 + 1).
for s in steps:
    r = s.get("result")
    if s["step"].startswith("eval_") and isinstance(r, dict):
        c = r.get("compare") or {}
        if c.get("max_abs_diff", float("inf")) > 2e-4:
            s["ok"] = False
            s["why"] = f"GPU vs CPU max |diff| {c.get('max_abs_diff')} > 2e-4"
failed = [s["step"] for s in steps if not s["ok"]]
report = {"adapters": adapter_text, "fp32_peak_gflops": peak, "seconds": int(seconds),
          "failed": failed, "steps": steps}
json.dump(report, open(out, "w"), indent=1)
print(f"{len(steps)} steps, {len(failed)} failed -> {out}")
for s in steps:
    r = s.get("result")
    if s["step"].startswith("bench") and isinstance(r, dict):
        share = r.get("share_of_fp32_peak")
        print(f"  {s['step']:32} {r.get('items_per_s', 0):12.1f} items/s  {r.get('gflops', 0):9.1f} GFLOP/s"
              + (f"  {100 * share:5.2f}% of peak" if share is not None else ""))
    if s["step"].startswith("profile/") and isinstance(r, dict) and r.get("profile"):
        prof = r["profile"]
        total = sum(d["ms"] for d in prof) or 1.0
        top = sorted(prof, key=lambda d: -d["ms"])[:3]
        print(f"  {s['step']:32} {total:9.3f} ms GPU in {len(prof)} dispatch ops; top: "
              + ", ".join(f"{d['layer']}/{d['kernel']} {100 * d['ms'] / total:.0f}%" for d in top))
    if s["step"].startswith("train/") and isinstance(r, dict):
        rel = s.get("loss_vs_cpu_relative")
        print(f"  {s['step']:32} {r.get('items_per_s', 0):12.1f} items/s  loss {r.get('history', {}).get('loss')}"
              + (f"  vs cpu {rel:.1e} relative" if rel is not None else ""))
sys.exit(1 if failed else 0)
EOF
