#!/usr/bin/env bash
# Builds the web client's wasm facade: tern-core-wasm for wasm32, then wasm-bindgen
# `--target web` into OUT_DIR:
#   OUT_DIR/tern_core_wasm.js        ES module: `import init, { encodeClient, … } from …`
#   OUT_DIR/tern_core_wasm.d.ts      its TypeScript types
#   OUT_DIR/tern_core_wasm_bg.wasm   the module (served as application/wasm)
#
# Usage: clients/core-wasm/build.sh OUT_DIR [--release]
#   --release: opt-level z, fat LTO, one codegen unit (size over speed: the page downloads
#   it), no name/producers sections (the name section alone is a third of the module), then
#   `wasm-opt -Oz` when binaryen's wasm-opt is on PATH, kept only if the result is smaller
#   gzipped (binaryen 108, Debian's, makes this module ~10% LARGER gzipped: it is measured, not
#   assumed).
# Needs: rustup target wasm32-unknown-unknown and wasm-bindgen-cli at exactly the lockfile's
# wasm-bindgen version (`cargo install --locked wasm-bindgen-cli --version =<it>`, or
# WASM_BINDGEN=/path/to/wasm-bindgen). Exits non-zero on any failure.
set -euo pipefail

usage() { echo "usage: $0 OUT_DIR [--release]" >&2; exit 2; }
[ $# -ge 1 ] || usage
out=$1
shift
release=0
for arg in "$@"; do
  case "$arg" in
    --release) release=1 ;;
    *) usage ;;
  esac
done
mkdir -p "$out"
out=$(cd "$out" && pwd)

cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
bindgen="${WASM_BINDGEN:-wasm-bindgen}"
have=$("$bindgen" --version 2>/dev/null | awk '{print $2}') || true
if [ "$have" != "$want" ]; then
  echo "wasm-bindgen-cli $want needed (found '${have:-none}'): cargo install --locked wasm-bindgen-cli --version =$want" >&2
  exit 2
fi

if [ "$release" = 1 ]; then
  # The workspace's release profile is tuned for the server (speed, 4 codegen units); these
  # overrides apply to this build only. Build scripts and proc macros keep their own settings.
  CARGO_PROFILE_RELEASE_OPT_LEVEL=z \
  CARGO_PROFILE_RELEASE_LTO=fat \
  CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
  CARGO_PROFILE_RELEASE_DEBUG=false \
  CARGO_PROFILE_RELEASE_PANIC=abort \
    cargo build -p tern-core-wasm --target wasm32-unknown-unknown --locked --release
  wasm="$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/tern_core_wasm.wasm"
else
  cargo build -p tern-core-wasm --target wasm32-unknown-unknown --locked
  wasm="$CARGO_TARGET_DIR/wasm32-unknown-unknown/debug/tern_core_wasm.wasm"
fi

rm -f "$out"/tern_core_wasm*
if [ "$release" = 1 ]; then
  "$bindgen" --target web --remove-name-section --remove-producers-section --out-dir "$out" "$wasm"
else
  # Debug keeps function names: stack traces in the browser name Rust functions.
  "$bindgen" --target web --out-dir "$out" "$wasm"
fi

gz_size() { gzip -9 -c "$1" | wc -c; }
if [ "$release" = 1 ]; then
  if command -v wasm-opt >/dev/null 2>&1; then
    module="$out/tern_core_wasm_bg.wasm"
    wasm-opt -Oz --enable-bulk-memory --enable-nontrapping-float-to-int "$module" -o "$module.opt"
    before=$(gz_size "$module")
    after=$(gz_size "$module.opt")
    if [ "$after" -lt "$before" ]; then
      mv "$module.opt" "$module"
      echo "wasm-opt -Oz: $before -> $after bytes gzipped (kept)"
    else
      rm -f "$module.opt"
      echo "wasm-opt -Oz: $before -> $after bytes gzipped (no gain: not kept)"
    fi
  else
    echo "note: wasm-opt not found, the module is not post-optimised (binaryen)" >&2
  fi
fi

bytes=$(wc -c <"$out/tern_core_wasm_bg.wasm")
gz=$(gz_size "$out/tern_core_wasm_bg.wasm")
echo "built $out/tern_core_wasm.js + tern_core_wasm_bg.wasm ($bytes bytes, $gz gzipped)"
