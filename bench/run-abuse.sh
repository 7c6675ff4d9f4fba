#!/usr/bin/env bash
# Hostile-client measurements for issue 10, one command: each run starts a fresh `tern serve` with
# its DEFAULT settings (plus --config lines if given) on a temporary data dir and its own
# self-signed certificate, runs one `tern-loadgen attack ...` against it over loopback, and stops
# it. Reports (JSON), server logs, the exact commands and a markdown summary go to OUT.
#   idle       `attack idle-conns`: MAX idle TLS connections from 127.0.0.2 (nothing sent), held
#              IDLE_HOLD; how many the server still holds, and GET /healthz from 127.0.0.1
#              meanwhile. The server runs under `ulimit -n NOFILE` (the finding's 1,500 fds).
#   h2         `attack h2`: HTTP/2 by prior knowledge (no ALPN), 5 connections x 200 streams, each
#              a POST announcing 1,000,000 bytes and sending all but the last; server RSS.
#   slow-body  `attack slow-body`: 500 POSTs announcing 1,000,000 bytes, 1 byte every 4 s, for
#              SLOW_HOLD; server RSS and the connections still held.
#   bystander  `attack bystander --attack both`: PHASE quiet, then PHASE with an attacker flooding
#              wrong-password logins for the legitimate user (300 keep-alive connections from
#              127.0.0.3) and sends (256 in flight, 1 KiB, own 1:1 conversation); a bystander
#              pair chats 20 msg/s each way (delivery p50/p99/max, lost, duplicates), the
#              legitimate user logs in every 3 s from 127.0.0.5 (ok / 429 / other, latency).
#
# Usage: bench/run-abuse.sh [options]
#   --tern PATH        server binary [TERN; default target/release/tern if built, else
#                      target/debug/tern]
#   --loadgen PATH     [LOADGEN; default tern-loadgen next to the server binary]
#   --runs "idle h2 slow-body bystander"   [RUNS, default all four]
#   --config FILE      extra tern.toml for every server (default: none, the defaults are measured)
#   --nofile N         the server's open-file limit [NOFILE, default 1500]
#   --max N            idle connections to try [MAX, default 2000]
#   --idle-hold D      [IDLE_HOLD, default 30s]
#   --slow-hold D      [SLOW_HOLD, default 60s]
#   --phase D          bystander phase length [PHASE, default 30s]
#   --login-every D    the legitimate user's login interval [LOGIN_EVERY, default 3s; 600s
#                      leaves one login per phase, so its own argon2 does not show in the p99]
#   --attacker-from L  login-flood source addresses [ATTACKER_FROM, default 127.0.0.3; a range
#                      such as 127.0.0.10-127.0.0.49 (not the user's 127.0.0.5) gets past per-address limits to the hash queue]
#   --port P           [PORT, default 47200]
#   --out DIR          [OUT, default bench/results/<UTC date>-abuse]
#   --quick            short everything (a smoke test of the script, not a measurement)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TERN="${TERN:-}"
LOADGEN="${LOADGEN:-}"
RUNS="${RUNS:-idle h2 slow-body bystander}"
CONFIG="${CONFIG:-}"
NOFILE="${NOFILE:-1500}"
MAX="${MAX:-2000}"
IDLE_HOLD="${IDLE_HOLD:-30s}"
SLOW_HOLD="${SLOW_HOLD:-60s}"
PHASE="${PHASE:-30s}"
LOGIN_EVERY="${LOGIN_EVERY:-3s}"
ATTACKER_FROM="${ATTACKER_FROM:-127.0.0.3}"
PORT="${PORT:-47200}"
OUT="${OUT:-}"
H2_CONNS=5; H2_STREAMS=200; SLOW_CONNS=500; FLOOD_CONNS=300; FLOOD_INFLIGHT=256
ARGS=("$@")

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tern) TERN="$2"; shift 2 ;;
        --loadgen) LOADGEN="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        --config) CONFIG="$2"; shift 2 ;;
        --nofile) NOFILE="$2"; shift 2 ;;
        --max) MAX="$2"; shift 2 ;;
        --idle-hold) IDLE_HOLD="$2"; shift 2 ;;
        --slow-hold) SLOW_HOLD="$2"; shift 2 ;;
        --phase) PHASE="$2"; shift 2 ;;
        --login-every) LOGIN_EVERY="$2"; shift 2 ;;
        --attacker-from) ATTACKER_FROM="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --quick) MAX=200; IDLE_HOLD=3s; SLOW_HOLD=5s; PHASE=5s; H2_CONNS=1; H2_STREAMS=20
                 SLOW_CONNS=20; FLOOD_CONNS=20; FLOOD_INFLIGHT=16; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run-abuse: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [[ -z "$TERN" ]]; then
    if [[ -x "$ROOT/target/release/tern" ]]; then TERN="$ROOT/target/release/tern"
    else TERN="$ROOT/target/debug/tern"; fi
fi
[[ -x "$TERN" ]] || { echo "run-abuse: no server binary at $TERN (cargo build -p tern-gateway)" >&2; exit 2; }
LOADGEN="${LOADGEN:-$(dirname "$TERN")/tern-loadgen}"
[[ -x "$LOADGEN" ]] || { echo "run-abuse: no loadgen at $LOADGEN (cargo build -p tern-loadgen)" >&2; exit 2; }
OUT="${OUT:-$ROOT/bench/results/$(date -u +%Y-%m-%d)-abuse}"
mkdir -p "$OUT/logs"
OUT="$(cd "$OUT" && pwd)"
log() { printf '[run-abuse %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
# The loadgen needs many sockets (it raises its soft limit to the hard one itself).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

{
    echo "date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    # The server's commit is that of the checkout its binary was built in (<repo>/target/<profile>/).
    TERN_REPO="$(cd "$(dirname "$TERN")/../.." && pwd)"
    echo "tern_commit=$(git -C "$TERN_REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$TERN_REPO" diff --quiet 2>/dev/null || echo +dirty)"
    echo "tern_checkout=$TERN_REPO"
    echo "loadgen_commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo +dirty)"
    echo "tern_binary=$TERN"
    echo "tern_build=$(basename "$(dirname "$TERN")")"
    echo "host_cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo "host_cores=$(nproc)"
    echo "host_mem_kib=$(grep MemTotal /proc/meminfo | awk '{print $2}')"
    echo "kernel=$(uname -r)"
    echo "load_avg_at_start=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "command=bench/run-abuse.sh ${ARGS[*]:-}"
    echo "nofile=$NOFILE"
    echo "runs=$RUNS nofile=$NOFILE max=$MAX idle_hold=$IDLE_HOLD slow_hold=$SLOW_HOLD phase=$PHASE login_every=$LOGIN_EVERY attacker_from=$ATTACKER_FROM config=${CONFIG:-none}"
} >"$OUT/environment.txt"

SERVER_PID=""
DATA=""
stop_server() {
    local pid="$SERVER_PID"
    if [[ -n "$pid" ]]; then
        SERVER_PID=""
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    [[ -n "$DATA" ]] && rm -rf "$DATA"
    DATA=""
}
trap 'stop_server' EXIT
trap 'log "interrupted"; exit 130' INT TERM

HASH=""
start_server() {
    local logf="$1"
    DATA="$(mktemp -d "${TMPDIR:-/tmp}/tern-abuse.XXXXXX")"
    local cfg=()
    if [[ -n "$CONFIG" ]]; then cfg=(--config "$CONFIG"); fi
    # The open-file limit applies to the server only (a subshell), like the finding's server.
    ( ulimit -n "$NOFILE"; exec "$TERN" serve --data-dir "$DATA/data" --listen "127.0.0.1:$PORT" \
        "${cfg[@]}" ) >"$logf" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 600); do
        HASH="$(sed -n 's/^ *certificate sha-256: *\([0-9a-f]*\).*/\1/p' "$logf" 2>/dev/null | head -1)"
        [[ -n "$HASH" ]] && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || { log "server exited; see $logf"; return 1; }
        sleep 0.1
    done
    log "server not ready; see $logf"; return 1
}

status=0
for run in $RUNS; do
    log "== $run"
    start_server "$OUT/logs/$run.server.log" || { status=1; continue; }
    common=(--server "127.0.0.1:$PORT" --cert-hash "$HASH" --server-pid "$SERVER_PID"
            --report "$OUT/$run.json" --label "abuse $run")
    case "$run" in
        idle) args=(attack idle-conns "${common[@]}" --from 127.0.0.2 --max "$MAX"
                    --concurrency 128 --connect-timeout 5s --duration "$IDLE_HOLD") ;;
        h2) args=(attack h2 "${common[@]}" --from 127.0.0.2 --alpn none --conns "$H2_CONNS"
                  --streams "$H2_STREAMS" --body-bytes 1000000 --duration 20s) ;;
        slow-body) args=(attack slow-body "${common[@]}" --from 127.0.0.2 --conns "$SLOW_CONNS"
                         --body-bytes 1000000 --chunk-bytes 1 --interval 4s --duration "$SLOW_HOLD") ;;
        bystander) args=(attack bystander "${common[@]}" --attack both --phase "$PHASE"
                         --chat-rate 20 --chat-bytes 128 --login-every "$LOGIN_EVERY" --user-from 127.0.0.5
                         --attacker-from "$ATTACKER_FROM" --login-flood-conns "$FLOOD_CONNS"
                         --send-flood-inflight "$FLOOD_INFLIGHT" --send-flood-bytes 1024) ;;
        *) log "unknown run $run"; status=1; stop_server; continue ;;
    esac
    echo "$LOADGEN ${args[*]}" >"$OUT/logs/$run.command"
    if ! "$LOADGEN" "${args[@]}" >"$OUT/logs/$run.loadgen.log" 2>&1; then
        log "$run failed; see $OUT/logs/$run.loadgen.log"; status=1
    fi
    grep -v '^[0-9]\{4\}-[0-9][0-9]-' "$OUT/logs/$run.loadgen.log" >&2 || true
    # How the server fared: accept errors (fd exhaustion) in its log.
    echo "accept_errors=$(grep -c 'accept failed' "$OUT/logs/$run.server.log" || true)" \
        >"$OUT/logs/$run.server-summary.txt"
    stop_server
done

python3 "$ROOT/bench/abuse-summary.py" "$OUT" >"$OUT/summary.md"
cat "$OUT/summary.md"
exit "$status"
