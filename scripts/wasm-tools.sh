#!/usr/bin/env bash
# Makes sure the wasm toolchain the web client needs is here: the wasm32 target, wasm-bindgen-cli
# at exactly the wasm-bindgen crate's version in Cargo.lock (the CLI and the crate must match),
# and clang + llvm-ar (Debian's), which sqlite-wasm-rs needs to compile SQLite's C for wasm32 (the
# search index, clients/search-wasm); installed with apt as root when missing. The CLI is
# installed without --locked: its own Cargo.lock pins a webpki-roots release the registry mirror
# here does not have. Sourced or run from the repository root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
need=()
command -v clang >/dev/null || need+=(clang)
command -v llvm-ar >/dev/null || need+=(llvm)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing ${need[*]}: apt-get install -y ${need[*]} (as root)" >&2
    exit 2
  fi
fi
want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$want" ]; then
  echo "installing wasm-bindgen-cli $want (matches Cargo.lock)" >&2
  cargo install -q wasm-bindgen-cli --version "=$want"
fi
