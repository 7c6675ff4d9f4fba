#!/usr/bin/env bash
# Builds tern-core-wasm for wasm32, generates the Node bindings with wasm-bindgen-cli (at the
# exact version of the wasm-bindgen crate in Cargo.lock), writes a fixture with the NATIVE
# core, runs the Node tests (tests/*.test.js) and has the native core decrypt what the wasm
# build encrypted. Then builds the page's `--target web`
# module with build.sh and checks under Node that the ES module loads and works (web.test.mjs).
# TERN_LIVE=1 also builds `tern` and runs tests/live against the real server.
# Exits non-zero on any failure (CI calls it).
# Needs: rustup target wasm32-unknown-unknown, Node >= 20, and
#   cargo install --locked wasm-bindgen-cli --version =<Cargo.lock's wasm-bindgen version>
# (or WASM_BINDGEN=/path/to/wasm-bindgen).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
bindgen="${WASM_BINDGEN:-wasm-bindgen}"
have=$("$bindgen" --version 2>/dev/null | awk '{print $2}') || true
if [ "$have" != "$want" ]; then
  echo "wasm-bindgen-cli $want needed (found '${have:-none}'): cargo install --locked wasm-bindgen-cli --version =$want" >&2
  exit 2
fi

out="${TERN_WASM_OUT:-$CARGO_TARGET_DIR/core-wasm-test}"
rm -rf "$out" && mkdir -p "$out/pkg"
cargo build -p tern-core-wasm --target wasm32-unknown-unknown --locked
"$bindgen" --target nodejs --out-dir "$out/pkg" \
  "$CARGO_TARGET_DIR/wasm32-unknown-unknown/debug/tern_core_wasm.wasm"
cargo run -q -p tern-core --example wasm_fixture --locked -- "$out/fixture.json"
TERN_WASM_PKG="$out/pkg" TERN_FIXTURE="$out/fixture.json" TERN_FROM_WASM="$out/from_wasm.json" \
  node --test clients/core-wasm/tests/*.test.js
# The other direction: the native core decrypts what the wasm build encrypted (e2e.test.js).
cargo run -q -p tern-core --example wasm_fixture --locked -- check "$out/fixture.json" "$out/from_wasm.json"
if [ "${TERN_LIVE:-0}" = 1 ]; then
  # Against the real server: two wasm devices over HTTPS + secure WebSocket (tests/live).
  cargo build -q -p tern-gateway --bin tern --locked
  TERN_WASM_PKG="$out/pkg" TERN_BIN="$CARGO_TARGET_DIR/debug/tern" \
    node --test clients/core-wasm/tests/live/server.test.js
fi
bash clients/core-wasm/build.sh "$out/web"
TERN_WASM_WEB="$out/web" node --test clients/core-wasm/tests/web.test.mjs
