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
#   `wasm-opt -Oz` when it shrinks the gzipped module (scripts/wasm-module.sh does the work).
# Needs: rustup target wasm32-unknown-unknown and wasm-bindgen-cli at exactly the lockfile's
# wasm-bindgen version (`cargo install --locked wasm-bindgen-cli --version =<it>`, or
# WASM_BINDGEN=/path/to/wasm-bindgen). Exits non-zero on any failure.
set -euo pipefail

usage() { echo "usage: $0 OUT_DIR [--release]" >&2; exit 2; }
[ $# -ge 1 ] || usage
out=$1
shift
for arg in "$@"; do
  case "$arg" in
    --release) ;;
    *) usage ;;
  esac
done
exec bash "$(dirname "$0")/../../scripts/wasm-module.sh" tern-core-wasm "$out" "$@"
