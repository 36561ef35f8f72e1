#!/usr/bin/env bash
# Builds the demo page into web/dist/ (static files only; serve with
# `python3 -m http.server -d web/dist`): the crate compiled to wasm32-unknown-unknown, wrapped by
# wasm-bindgen into the ES module wgnn.js + wgnn_bg.wasm, the page, and the models it preloads.
# With WGNN_DATA set (a folder with cifar10/test_batch.bin), the first 200 CIFAR-10 test images
# go along as cifar10_test.bin for the page's "test images" button.
#
# Needs: rustup target add wasm32-unknown-unknown; wasm-bindgen-cli at the version of the
# wasm-bindgen crate in Cargo.lock (cargo install wasm-bindgen-cli --version X --locked).
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
dist=web/dist

want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
if ! command -v wasm-bindgen >/dev/null 2>&1; then
  echo "error: wasm-bindgen not found: cargo install wasm-bindgen-cli --version $want --locked" >&2
  exit 1
fi
have=$(wasm-bindgen --version | awk '{ print $2 }')
if [ "$have" != "$want" ]; then
  echo "error: wasm-bindgen $have, but Cargo.lock has wasm-bindgen $want: cargo install wasm-bindgen-cli --version $want --locked" >&2
  exit 1
fi

# A cdylib for this build only: the native library stays an rlib.
cargo rustc --release --lib --target wasm32-unknown-unknown --crate-type cdylib
rm -rf "$dist"
mkdir -p "$dist/models"
wasm-bindgen --target web --no-typescript --out-name wgnn --out-dir "$dist" \
  "$target_dir/wasm32-unknown-unknown/release/wgnn.wasm"
cp web/index.html web/app.js "$dist/"
cp models/cifar10_base.keras models/cifar10_vgg6.keras "$dist/models/"
# A NusaX sentiment model with its own TextVectorization layer (raw sentences in), trained by
# tools/train_nusax.py --fixture.
cp tests/fixtures/text/nusax_textvec_bilstm.keras "$dist/models/"
test_batch="${WGNN_DATA:-}/cifar10/test_batch.bin"
if [ -n "${WGNN_DATA:-}" ] && [ -f "$test_batch" ]; then
  head -c $((200 * 3073)) "$test_batch" > "$dist/cifar10_test.bin"
fi
wasm_bytes=$(wc -c < "$dist/wgnn_bg.wasm")
gz_bytes=$(gzip -9 -c "$dist/wgnn_bg.wasm" | wc -c)
echo "built $dist: wgnn_bg.wasm $wasm_bytes bytes, $gz_bytes gzipped"
