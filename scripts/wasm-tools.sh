#!/usr/bin/env bash
# Makes sure the wasm toolchain the web client needs is here: the wasm32 target and
# wasm-bindgen-cli at exactly the wasm-bindgen crate's version in Cargo.lock (the CLI and the
# crate must match). Installed without --locked: the CLI's own Cargo.lock pins a webpki-roots
# release the registry mirror here does not have. Sourced or run from the repository root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rustup target add wasm32-unknown-unknown >/dev/null 2>&1 || true
want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$want" ]; then
  echo "installing wasm-bindgen-cli $want (matches Cargo.lock)" >&2
  cargo install -q wasm-bindgen-cli --version "=$want"
fi
