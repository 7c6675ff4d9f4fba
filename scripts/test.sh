#!/usr/bin/env bash
# Runs every test of the project: unit, conformance, simulation and integration tests against a
# real `tern` server over real TLS sockets (both transports). Needs no running services.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked -- --test-threads="${TERN_TEST_THREADS:-2}"
