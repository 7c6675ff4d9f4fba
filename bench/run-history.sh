#!/usr/bin/env bash
# Server history page latency (issue 14): the p99 of the newest page, the oldest page and a page
# around a random seq of a MESSAGES-message conversation (embedded store), read through the real
# server over TLS while the load generator runs the PRD chat load (USERS users, RATE msg/s) on
# the same server. Goal: p99 < 5 ms for every kind.
#
#   1. tern starts with send limits raised for the fill (the chat load is far below the defaults
#      anyway) and its operations listener on, for /metrics;
#   2. `tern-loadgen history-bench --fill-only` fills one group to MESSAGES through the server
#      (one WebSocket device, FILL_WINDOW sends in flight; skipped when --data already holds it);
#   3. `tern-loadgen chat` starts in the background;
#   4. `tern-loadgen history-bench` waits until the server commits >= MIN_LOAD msg/s for 5 s,
#      then reads HISTORY_RATE pages/s of each kind for DURATION (after a WARMUP), checks every
#      page's seqs and records the commit rate each second.
#
# Usage: bench/run-history.sh [--skip-build] [--out DIR] [--data DIR]
#   --data DIR   data directory to keep (and reuse: a second run skips the fill); default OUT/data
# Env: MESSAGES (1000000), USERS (10000), RATE (1000), GROUP_SIZES (2:60,5:30,50:10),
#      DURATION (60s), WARMUP (5s), HISTORY_RATE (20, per kind), LIMIT (50), TRANSPORT (tern-ws),
#      API (socket|https), FILL_WINDOW (256), PAYLOAD (303), MIN_LOAD (90 % of RATE),
#      ALONE (1: first the same pages with no chat running, to history-alone.json; 0: skip)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

SKIP_BUILD=0
OUT=""
DATA=""
MESSAGES="${MESSAGES:-1000000}"
USERS="${USERS:-10000}"
RATE="${RATE:-1000}"
GROUP_SIZES="${GROUP_SIZES:-2:60,5:30,50:10}"
DURATION="${DURATION:-60s}"
WARMUP="${WARMUP:-5s}"
HISTORY_RATE="${HISTORY_RATE:-20}"
LIMIT="${LIMIT:-50}"
TRANSPORT="${TRANSPORT:-tern-ws}"
API="${API:-socket}"
FILL_WINDOW="${FILL_WINDOW:-256}"
PAYLOAD="${PAYLOAD:-303}"
MIN_LOAD="${MIN_LOAD:-$((RATE * 9 / 10))}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --skip-build) SKIP_BUILD=1; shift ;;
        --out) OUT="$2"; shift 2 ;;
        --data) DATA="$2"; shift 2 ;;
        -h|--help) sed -n 2,22p "$0"; exit 0 ;;
        *) echo "run-history: unknown argument $1" >&2; exit 2 ;;
    esac
done
OUT="${OUT:-$ROOT/target/history-bench/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT/logs"
OUT="$(cd "$OUT" && pwd)"
DATA="${DATA:-$OUT/data}"
mkdir -p "$DATA"
DATA="$(cd "$DATA" && pwd)"
# Accounts (the history user, the chat population) live beside the data they belong to.
STATE="$DATA.state"
mkdir -p "$STATE"
log() { printf '[run-history %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [[ "$SKIP_BUILD" == 0 ]]; then
    log "building release binaries"
    cargo build --release --locked -p tern-gateway -p tern-loadgen
fi
TERN_BIN="$ROOT/target/release/tern"
LOADGEN_BIN="$ROOT/target/release/tern-loadgen"

SERVER_PID=""
CHAT_PID=""
stop_server() {
    local pid="$SERVER_PID"
    [[ -n "$pid" ]] || return 0
    SERVER_PID=""
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    if [[ -n "$CHAT_PID" ]]; then kill -TERM "$CHAT_PID" 2>/dev/null || true; wait "$CHAT_PID" 2>/dev/null || true; fi
    stop_server
}
trap cleanup EXIT

bash bench/peers/tls.sh "$OUT/tls" >/dev/null
CERT="$OUT/tls/cert.pem"
KEY="$OUT/tls/key.pem"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# The load generator keys its saved accounts by server address: a rerun on kept --data uses the
# same port, so the 10,000 chat users are not registered again (~10 min of argon2id here).
if [[ -s "$STATE/port" ]]; then PORT="$(cat "$STATE/port")"; else PORT="$(free_port)"; echo "$PORT" >"$STATE/port"; fi
OPS_PORT="$(free_port)"
SERVER="127.0.0.1:$PORT"

{
    echo 'login_attempts_per_address = 1000000'
    echo 'max_connections_per_address = 1000000'
    echo 'login_failures_per_username = 1000'
    echo 'registrations_per_address = 1000000'
    echo 'registrations_per_window = 1000000'
    echo 'hash_queue_per_client = 256'
    # The fill sends ~1M messages from one device as fast as the server takes them; the chat
    # users stay far below these limits and the defaults alike.
    echo 'device_send_burst = 100000000'
    echo 'device_sends_per_sec = 100000000'
    echo 'device_send_bytes_burst = 100000000000'
    echo 'device_send_bytes_per_sec = 100000000000'
    echo 'device_request_burst = 100000'
    echo 'device_requests_per_sec = 100000'
    echo 'user_send_burst = 100000000'
    echo 'user_sends_per_sec = 100000000'
    echo 'conversation_send_burst = 100000000'
    echo 'conversation_sends_per_sec = 100000000'
    echo 'storage_quota_bytes = 1000000000000'
    echo "ops_listen = \"127.0.0.1:$OPS_PORT\""
    echo 'log_format = "text"'
} >"$OUT/tern.toml"

"$TERN_BIN" serve --config "$OUT/tern.toml" --data-dir "$DATA" \
    --listen "$SERVER" --tls-cert "$CERT" --tls-key "$KEY" >"$OUT/logs/tern.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 600); do
    grep -q '^tern listening on ' "$OUT/logs/tern.log" 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { log "tern exited; see $OUT/logs/tern.log"; exit 1; }
    sleep 0.1
done
grep -q '^tern listening on ' "$OUT/logs/tern.log" || { log "tern did not start"; exit 1; }

{
    echo "date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host_cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "host_cores=$(nproc)"
    echo "tern_commit=$(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')"
    echo "messages=$MESSAGES users=$USERS rate=$RATE group_sizes=$GROUP_SIZES duration=$DURATION"
    echo "history_rate=$HISTORY_RATE limit=$LIMIT transport=$TRANSPORT api=$API payload=$PAYLOAD"
    echo "load: rustc processes at start: $(pgrep -c rustc || true); loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/environment.txt"

BENCH=("$LOADGEN_BIN" history-bench --server "$SERVER" --ca-file "$CERT" --target "$TRANSPORT"
    --api "$API" --messages "$MESSAGES" --fill-window "$FILL_WINDOW" --payload-bytes "$PAYLOAD"
    --limit "$LIMIT" --state-dir "$STATE")

log "fill: up to $MESSAGES messages through the server"
"${BENCH[@]}" --fill-only --report "$OUT/fill.json" 2>&1 | tee "$OUT/logs/fill.log" >&2
echo "data_dir_bytes=$(du -sb "$DATA" | cut -f1)" >>"$OUT/environment.txt"

if [[ "${ALONE:-1}" == 1 ]]; then
    # The same pages with no other load: what the store and the server's request path cost
    # by themselves, beside the row under load (which also holds the queueing behind the chat).
    log "history alone: $HISTORY_RATE pages/s of each kind for $DURATION, no other load"
    "${BENCH[@]}" --rate "$HISTORY_RATE" --duration "$DURATION" --warmup "$WARMUP" \
        --report "$OUT/history-alone.json" 2>&1 | tee "$OUT/logs/history-alone.log" >&2
fi

# The chat must outlast: its setup (not counted in --duration), the wait for steady load, the
# history warm-up and measurement.
secs() { python3 -c "import re,sys; v=sys.argv[1]; m=re.fullmatch(r'([0-9.]+)(ms|s|m|h)?', v); n=float(m.group(1)); print(int(n*{'ms':0.001,'s':1,'m':60,'h':3600,None:1}[m.group(2)]))" "$1"; }
CHAT_SECS=$(( $(secs "$DURATION") + $(secs "$WARMUP") + 60 ))
log "chat: $USERS users, $RATE msg/s, ${CHAT_SECS}s of traffic"
"$LOADGEN_BIN" chat --target tern-ws --server "$SERVER" --ca-file "$CERT" \
    --users "$USERS" --group-sizes "$GROUP_SIZES" --rate "$RATE" --duration "${CHAT_SECS}s" \
    --server-pid "$SERVER_PID" --state-dir "$STATE/chat" --report "$OUT/chat.json" \
    >"$OUT/logs/chat.log" 2>&1 &
CHAT_PID=$!

log "history: $HISTORY_RATE pages/s of each kind for $DURATION once the server commits >= $MIN_LOAD msg/s"
status=0
"${BENCH[@]}" --rate "$HISTORY_RATE" --duration "$DURATION" --warmup "$WARMUP" \
    --metrics-url "https://127.0.0.1:$OPS_PORT/metrics" --min-load "$MIN_LOAD" \
    --report "$OUT/history.json" 2>&1 | tee "$OUT/logs/history.log" || status=$?
log "waiting for the chat run to end"
chat_status=0
wait "$CHAT_PID" || chat_status=$?
CHAT_PID=""
python3 - "$OUT/chat.json" <<'EOF' || true
import json, sys
r = json.load(open(sys.argv[1]))
d = r["latency"]["delivery"]
print(f"chat during the run: p50 {d['p50_us']/1000:.2f} ms, p99 {d['p99_us']/1000:.2f} ms, passed={r['passed']}")
EOF
log "reports: $OUT/history.json, $OUT/chat.json, $OUT/fill.json"
[[ "$status" == 0 && "$chat_status" == 0 ]]
