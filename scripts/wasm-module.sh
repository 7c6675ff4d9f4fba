#!/usr/bin/env bash
# Builds one wasm-bindgen crate of the web client for wasm32 and generates its ES module
# (`wasm-bindgen --target web`) into OUT_DIR:
#   OUT_DIR/<lib>.js, <lib>.d.ts, <lib>_bg.wasm   (<lib> = the crate name with '_' for '-')
#
# Usage: scripts/wasm-module.sh CRATE OUT_DIR [--release] [--opt-level LEVEL]
#   --release: LEVEL (default z: size over speed, the page downloads it), fat LTO, one codegen
#   unit, panic=abort, no name/producers sections, then `wasm-opt -O<LEVEL>` when binaryen's
#   wasm-opt is on PATH, kept only if the result is smaller gzipped (binaryen 108, Debian's,
#   makes tern-core-wasm ~10% LARGER gzipped: it is measured, not assumed).
# Needs: rustup target wasm32-unknown-unknown and wasm-bindgen-cli at exactly the lockfile's
# wasm-bindgen version (scripts/wasm-tools.sh installs both, or WASM_BINDGEN=/path/to/it).
# Used by clients/core-wasm/build.sh and clients/search-wasm/build.sh. Exits non-zero on any
# failure.
set -euo pipefail

usage() { echo "usage: $0 CRATE OUT_DIR [--release] [--opt-level LEVEL]" >&2; exit 2; }
[ $# -ge 2 ] || usage
crate=$1
out=$2
shift 2
release=0
level=z
while [ $# -gt 0 ]; do
  case "$1" in
    --release) release=1 ;;
    --opt-level) [ $# -ge 2 ] || usage; level=$2; shift ;;
    *) usage ;;
  esac
  shift
done
lib=${crate//-/_}
mkdir -p "$out"
out=$(cd "$out" && pwd)

cd "$(dirname "$0")/.."
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
  CARGO_PROFILE_RELEASE_OPT_LEVEL=$level \
  CARGO_PROFILE_RELEASE_LTO=fat \
  CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
  CARGO_PROFILE_RELEASE_DEBUG=false \
  CARGO_PROFILE_RELEASE_PANIC=abort \
    cargo build -p "$crate" --target wasm32-unknown-unknown --locked --release
  wasm="$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/$lib.wasm"
else
  cargo build -p "$crate" --target wasm32-unknown-unknown --locked
  wasm="$CARGO_TARGET_DIR/wasm32-unknown-unknown/debug/$lib.wasm"
fi

rm -f "$out/$lib".js "$out/$lib".d.ts "$out/$lib"_bg.wasm "$out/$lib"_bg.wasm.d.ts
if [ "$release" = 1 ]; then
  "$bindgen" --target web --remove-name-section --remove-producers-section --out-dir "$out" "$wasm"
else
  # Debug keeps function names: stack traces in the browser name Rust functions.
  "$bindgen" --target web --out-dir "$out" "$wasm"
fi

gz_size() { gzip -9 -c "$1" | wc -c; }
module="$out/${lib}_bg.wasm"
if [ "$release" = 1 ]; then
  if command -v wasm-opt >/dev/null 2>&1; then
    wasm-opt "-O$level" --enable-bulk-memory --enable-nontrapping-float-to-int "$module" -o "$module.opt"
    before=$(gz_size "$module")
    after=$(gz_size "$module.opt")
    if [ "$after" -lt "$before" ]; then
      mv "$module.opt" "$module"
      echo "wasm-opt -O$level: $before -> $after bytes gzipped (kept)"
    else
      rm -f "$module.opt"
      echo "wasm-opt -O$level: $before -> $after bytes gzipped (no gain: not kept)"
    fi
  else
    echo "note: wasm-opt not found, the module is not post-optimised (binaryen)" >&2
  fi
fi

bytes=$(wc -c <"$module")
gz=$(gz_size "$module")
echo "built $out/$lib.js + ${lib}_bg.wasm ($bytes bytes, $gz gzipped)"
