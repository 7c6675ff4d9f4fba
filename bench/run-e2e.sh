#!/usr/bin/env bash
# End-to-end encryption cost (issue 11): the PRD chat load in plaintext and with --e2e against
# ONE Tern server (same session, same accounts), then the key-rotation burst in one group of
# 100 and of 1,000 members. Per transport in TRANSPORTS.
#
#   bench/run-e2e.sh --out DIR            # release binaries in $CARGO_TARGET_DIR or target/
#
# Environment: USERS (10000), GROUP_SIZES (2:60,5:30,50:10), RATE (1000), DURATION (300s),
# WARMUP (60s: traffic at the same rate before the measured DURATION, checked but kept out of
# the latencies and CPU figures, so the cold start of --e2e is not mixed into them; 0 for none),
# WORKERS (default: the loadgen's choice), TRANSPORTS ("tern-ws tern-wt"), ROTATION_MEMBERS
# ("100 1000"), MODES ("plain e2e"), WARMUP (60s), WARMUP_RAMP (1: the warm-up's rate rises from
# 0, so every sender's cold start is spread over it; 0: full rate from the start), PERF_SECONDS (0: off; else a perf profile of
# the server of that many seconds inside each measured phase, reported as
# perf-<target>-<mode>-{self,children}.txt). MODES may add `plain-sized`: plaintext with
# --payload-bytes E2E_WIRE_BYTES (303: what a 128-byte loadgen payload is as an e2e.megolm.v2
# message), the control for the server's cost per byte. Outputs: per run a JSON report, an SVG plot and the
# loadgen's log; rotation-*.json; environment.txt.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
TERN_BIN="$TARGET_DIR/release/tern"
LOADGEN_BIN="$TARGET_DIR/release/tern-loadgen"
USERS="${USERS:-10000}"
GROUP_SIZES="${GROUP_SIZES:-2:60,5:30,50:10}"
RATE="${RATE:-1000}"
DURATION="${DURATION:-300s}"
WARMUP="${WARMUP:-60s}"
WORKERS="${WORKERS:-}"
TRANSPORTS="${TRANSPORTS:-tern-ws tern-wt}"
ROTATION_MEMBERS="${ROTATION_MEMBERS:-100 1000}"
MODES="${MODES:-plain e2e}"
PERF_SECONDS="${PERF_SECONDS:-0}"
WARMUP_RAMP="${WARMUP_RAMP:-1}"
E2E_WIRE_BYTES="${E2E_WIRE_BYTES:-303}"
OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        *) echo "usage: $0 --out DIR" >&2; exit 2 ;;
    esac
done
[[ -n "$OUT" ]] || { echo "usage: $0 --out DIR" >&2; exit 2; }
mkdir -p "$OUT/logs"
for bin in "$TERN_BIN" "$LOADGEN_BIN"; do
    [[ -x "$bin" ]] || { echo "missing $bin (cargo build --release --locked -p tern-gateway -p tern-loadgen)" >&2; exit 2; }
done
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

{
    echo "date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host_cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
    echo "host_cores=$(nproc)"
    echo "kernel=$(uname -r)"
    echo "tern_commit=$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet || echo +dirty)"
    echo "scenario=chat users=$USERS group_sizes=$GROUP_SIZES rate=$RATE duration=$DURATION warmup=$WARMUP workers=${WORKERS:-default}"
    echo "loadavg_at_start=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "rustc_processes_at_start=$(pgrep -c rustc || true)"
} >"$OUT/environment.txt"

cat >"$OUT/tern.toml" <<EOF
login_attempts_per_address = 1000000
max_connections_per_address = 1000000
login_failures_per_username = 1000
registrations_per_address = 1000000
registrations_per_window = 1000000
hash_queue_per_client = 256
log_format = "text"
EOF

server_pid=""
stop_server() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    server_pid=""
}
trap stop_server EXIT

overall=0
for target in $TRANSPORTS; do
    data="$OUT/tern-data-$target"
    rm -rf "$data"
    "$TERN_BIN" serve --listen 127.0.0.1:0 --data-dir "$data" --config "$OUT/tern.toml" \
        >"$OUT/logs/server-$target.out" 2>"$OUT/logs/server-$target.log" &
    server_pid=$!
    addr="" hash=""
    for _ in $(seq 1 300); do
        if grep -q "certificate sha-256:" "$OUT/logs/server-$target.out" 2>/dev/null; then
            addr=$(sed -n 's/^tern listening on //p' "$OUT/logs/server-$target.out" | head -n1)
            hash=$(sed -n 's/^ *certificate sha-256: *//p' "$OUT/logs/server-$target.out" | head -n1)
            break
        fi
        sleep 0.2
    done
    [[ -n "$addr" ]] || { log "no banner from tern"; exit 1; }
    log "== $target: server pid $server_pid on $addr"
    for mode in $MODES; do
        name="$target-$mode"
        args=(chat --target "$target" --server "$addr" --cert-hash "$hash" --users "$USERS"
            --group-sizes "$GROUP_SIZES" --rate "$RATE" --duration "$DURATION"
            --warmup "$WARMUP"
            --server-pid "$server_pid" --state-dir "$OUT/state-$target" --quiet
            --label "issue 11 e2e cost: $name" --report "$OUT/$name.json" --plot "$OUT/$name.svg")
        [[ -n "$WORKERS" ]] && args+=(--workers "$WORKERS")
        [[ "$mode" == e2e ]] && args+=(--e2e)
        # The control: plaintext with the payload size an --e2e message has on the wire, so
        # "the server only carries bytes" can be told apart from any per-message crypto cost.
        [[ "$mode" == plain-sized ]] && args+=(--payload-bytes "$E2E_WIRE_BYTES")
        [[ "$WARMUP_RAMP" == 1 ]] && args+=(--warmup-ramp)
        perf_job=""
        if [[ "$PERF_SECONDS" -gt 0 ]]; then
            # A CPU profile of the server inside the measured phase: after the warm-up (and its
            # drain), sampled at 99 Hz with call graphs, so CPU per request family can be read
            # from `perf report --children` (session handlers are named frames).
            rm -f "$OUT/ready-$name"
            args+=(--ready-file "$OUT/ready-$name")
            (
                for _ in $(seq 1 3000); do [[ -f "$OUT/ready-$name" ]] && break; sleep 0.2; done
                sleep "$(( ${WARMUP%s} + 15 ))"
                perf record -F 99 -g -p "$server_pid" -o "$OUT/perf-$name.data" \
                    -- sleep "$PERF_SECONDS" >/dev/null 2>"$OUT/logs/perf-$name.log"
            ) &
            perf_job=$!
        fi
        log "== $name: rustc processes now: $(pgrep -c rustc || true); load $(cut -d' ' -f1-3 /proc/loadavg)"
        rc=0
        "$LOADGEN_BIN" "${args[@]}" >"$OUT/logs/$name.txt" 2>"$OUT/logs/$name.log" || rc=$?
        tail -n 25 "$OUT/logs/$name.txt" >&2 || true
        if [[ -n "$perf_job" ]]; then
            wait "$perf_job" || true
            if [[ -f "$OUT/perf-$name.data" ]]; then
                for view in self children; do
                    flag=--children; [[ $view == self ]] && flag=--no-children
                    perf report -i "$OUT/perf-$name.data" "$flag" --sort symbol --stdio -g none \
                        --percent-limit 0.3 2>/dev/null | grep -v '^$' | cut -c1-220 \
                        | head -n 200 >"$OUT/perf-$name-$view.txt" || true
                done
                rm -f "$OUT/perf-$name.data"
            fi
        fi
        [[ $rc -eq 0 ]] || { log "== $name: exit $rc"; overall=1; }
    done
    for members in $ROTATION_MEMBERS; do
        name="rotation-$target-$members"
        log "== $name: rustc processes now: $(pgrep -c rustc || true)"
        rc=0
        "$LOADGEN_BIN" rotation --target "$target" --server "$addr" --cert-hash "$hash" \
            --members "$members" --before 5 --server-pid "$server_pid" \
            --report "$OUT/$name.json" >"$OUT/logs/$name.txt" 2>"$OUT/logs/$name.log" || rc=$?
        cat "$OUT/logs/$name.txt" >&2 || true
        [[ $rc -eq 0 ]] || { log "== $name: exit $rc"; overall=1; }
    done
    stop_server
    rm -rf "$data"
    sleep 3
done
echo "rustc_processes_at_end=$(pgrep -c rustc || true)" >>"$OUT/environment.txt"
log "results in $OUT"
exit "$overall"
