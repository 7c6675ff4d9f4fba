#!/usr/bin/env bash
# Builds the search index's wasm module (tern-search-wasm: tern-search over SQLite with FTS5 and
# page encryption, compiled from C with clang by sqlite-wasm-rs) and its ES module into OUT_DIR:
#   OUT_DIR/tern_search_wasm.js, tern_search_wasm.d.ts, tern_search_wasm_bg.wasm
# Only the search worker loads it (clients/web/src/core/search/search-worker.ts).
#
# Usage: clients/search-wasm/build.sh OUT_DIR [--release]
#   --release: opt-level s. Not z like the page's core: queries run SQLite's C code, compiled
#   with the same level, and the module arrives in the background after sign-in.
# Needs: scripts/wasm-tools.sh (wasm32 target, wasm-bindgen-cli, clang + llvm-ar for the C).
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
exec bash "$(dirname "$0")/../../scripts/wasm-module.sh" tern-search-wasm "$out" "$@" --opt-level s
