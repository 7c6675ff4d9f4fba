#!/usr/bin/env bash
# Runs every test of the project: unit, conformance and integration tests against a real `tern`
# server over real TLS sockets (both transports), the load generator's smoke run, and the peer
# adapters against real Socket.IO and Centrifugo servers (installed here from npm and the Go
# module proxy).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/stages.sh

stage "peer servers for the comparison adapters' tests"
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl; }
npm ci --prefix bench/peers/socketio --no-audit --no-fund --loglevel=error
bash bench/peers/centrifugo/install.sh

stage "S3-compatible server for the file storage tests (s3s-fs, a debug build installed with cargo when missing)"
# The S3 backend's tests (gateway/tests/files*.rs) talk to it through TERN_TEST_S3*; under
# CI=true a test that finds no S3 server fails instead of starting one. A debug build: 74 s to
# install instead of 132 s here, and the tests took as long against it as against release.
S3_DIR="$PWD/target/s3-test"
eval "$(S3S_PROFILE=debug bash scripts/s3-server.sh start "$S3_DIR")"
trap '_st=$?; bash scripts/s3-server.sh stop "$S3_DIR" >/dev/null 2>&1 || true; (exit $_st); _stages_done' EXIT

stage "client core for wasm32 + its wasm-bindgen bindings under Node (round trips with the native core, live against the real server)"
bash scripts/wasm-tools.sh
cargo build --locked -p tern-core --target wasm32-unknown-unknown
TERN_LIVE=1 bash clients/core-wasm/test.sh

stage "web app: build + size budget, lint, typecheck, Chromium end-to-end tests against the real server"
bash scripts/test-web.sh

stage "cargo test"
cargo test --workspace --locked -- --test-threads="${TERN_TEST_THREADS:-2}"

stage "fuzz targets, ${FUZZ_SECONDS:-15} s each (cargo-fuzz, nightly; fails on any crash)"
bash scripts/fuzz.sh

# The whole integration suite again on every I/O driver and shard count: the behaviour must be
# the same on each path (two shards put conversations and their members on different threads).
# `cargo test` above ran it on the server's defaults: epoll, one shard per CPU this process may
# use (the same count `tern` takes from sched_getaffinity), so that pair is not run twice.
default_shards=$(python3 -c 'import os; print(len(os.sched_getaffinity(0)))')
for io in epoll uring; do
    for shards in 1 2; do
        if [[ "$io" == epoll && "$shards" == "$default_shards" ]]; then
            echo "(integration suite with --io epoll --shards $shards: the defaults here, run by cargo test)"
            continue
        fi
        stage "integration suite with --io $io --shards $shards"
        TERN_TEST_IO="$io" TERN_TEST_SHARDS="$shards" \
            cargo test -p tern-gateway --locked --test integration -- --test-threads="${TERN_TEST_THREADS:-2}"
    done
done

stage "load generator smoke run (both transports; fails on any loss, duplicate or bad report)"
bash loadgen/smoke.sh

stage "crash test: kill -9 the server 20 times under load; every acknowledged message exactly once"
bash loadgen/crash.sh
