#!/usr/bin/env bash
# Short cargo-fuzz run of every target in fuzz/ (the CI stage; the long runs recorded in
# RESULTS.md use the same targets with -runs=10000000). Fails on any crash, panic, sanitizer
# report, leak or timeout. Installs what it needs: a nightly toolchain (libFuzzer needs
# `-Zsanitizer` and sanitizer-coverage flags) and cargo-fuzz.
#
#   FUZZ_SECONDS=15 bash scripts/fuzz.sh            # every target, 15 s each
#   bash scripts/fuzz.sh frame_decoder outbox_log   # some targets
#
# The grown corpus goes to a temporary directory; only fuzz/seeds/ is committed.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
seconds="${FUZZ_SECONDS:-15}"
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(frame_decoder uring_ws_frames http_json outbox_log)
fi

if ! rustup toolchain list | grep -q '^nightly-'; then
    echo "fuzz: no nightly toolchain; installing one (rustup toolchain install nightly --profile minimal)"
    if ! rustup toolchain install nightly --profile minimal; then
        echo "fuzz: error: could not install a nightly toolchain, which cargo-fuzz needs." >&2
        echo "fuzz: install one by hand (rustup toolchain install nightly) and rerun." >&2
        exit 1
    fi
fi

if [[ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# fuzz/ is its own workspace (excluded from the main one), so its formatting and lints are
# checked here rather than by the workspace-wide gates.
cargo fmt --manifest-path fuzz/Cargo.toml --all -- --check
cargo clippy --manifest-path fuzz/Cargo.toml --locked --all-targets -- -D warnings

cd fuzz
# cargo fuzz has no --locked: check that fuzz/Cargo.lock is current the same way.
cargo +nightly metadata --locked --format-version 1 >/dev/null
# One build for all targets, with AddressSanitizer (the default): the wire decoder runs
# flatbuffers' unsafe accessors after verification.
cargo +nightly fuzz build

corpus_root=$(mktemp -d)
trap 'rm -rf "$corpus_root"' EXIT
for target in "${targets[@]}"; do
    echo "fuzz: $target for ${seconds}s"
    mkdir -p "$corpus_root/$target"
    # -max_len as for the long runs; -timeout catches a hang (one input taking over 10 s).
    max_len=4096
    [[ "$target" == uring_ws_frames ]] && max_len=512
    log="$corpus_root/$target.log"
    status=0
    cargo +nightly fuzz run "$target" "$corpus_root/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    grep -E '^#[0-9]+ +DONE|^stat::number_of_executed_units' "$log" || true
    if [[ "$status" -ne 0 ]]; then
        tail -n 60 "$log" >&2
        echo "fuzz: $target failed (exit $status); the crashing input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
