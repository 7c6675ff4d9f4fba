#!/usr/bin/env bash
# I/O driver and shard comparison in one run on one machine (issue 4): for each configuration
# (io driver : shards), one `tern` server at a time on the same data directory, port and
# certificate, and three loadgen runs against it over secure WebSocket:
#   idle    `connect`: N connections (default 15,000) ramped up, held idle; server memory per
#           idle connection = (RSS at hold - RSS before) / connections
#   prd     `chat`: the PRD load (10,000 users, mixed group sizes, 1,000 msg/s) for DURATION;
#           p99 delivery, and server CPU time per delivered message
#           (= server CPU % avg / 100 * traffic seconds / deliveries)
#   fanout  `fanout`: groups of 100, rate x1.5 every 10 s until p99 > 50 ms: highest sustained
#           deliveries/s
# Writes every report and log to OUT and a table (io-comparison.md) built by io-compare.py.
#
# Usage: bench/run-io-matrix.sh [--quick] [options]
#   --configs "io:shards ..."  [CONFIGS, default "epoll:2 uring:2 epoll:1 uring:1"]
#   --runs "idle prd fanout"   which runs, per configuration [RUNS, default all three]
#   --idle N                   idle connections      [IDLE, default 15000]
#   --users N                  PRD users             [USERS, default 10000]
#   --rate N                   PRD msg/s             [RATE, default 1000]
#   --duration D               PRD traffic duration  [DURATION, default 120s]
#   --data-dir DIR             server data dir, kept between runs so accounts are registered
#                              once (argon2id: ~170 s per 10,000 users on 2 cores)
#                              [DATA, default target/io-matrix/data]
#   --port P                   fixed port (the loadgen caches setup per server address)
#                              [PORT, default 47100]
#   --out DIR                  [OUT, default target/io-matrix/<UTC time>]
#   --skip-build
#   --quick                    idle 1000, 500 users at 100 msg/s for 15 s, fan-out 3 steps
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIGS="${CONFIGS:-epoll:2 uring:2 epoll:1 uring:1}"
RUNS="${RUNS:-idle prd fanout}"
IDLE="${IDLE:-15000}"
USERS="${USERS:-10000}"
RATE="${RATE:-1000}"
DURATION="${DURATION:-120s}"
DATA="${DATA:-$ROOT/target/io-matrix/data}"
PORT="${PORT:-47100}"
OUT="${OUT:-}"
FANOUT_STEPS="${FANOUT_STEPS:-10}"
SKIP_BUILD=0
ARGS=("$@")

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) IDLE=1000; USERS=500; RATE=100; DURATION=15s; FANOUT_STEPS=3; shift ;;
        --configs) CONFIGS="$2"; shift 2 ;;
        --runs) RUNS="$2"; shift 2 ;;
        --idle) IDLE="$2"; shift 2 ;;
        --users) USERS="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --data-dir) DATA="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --skip-build) SKIP_BUILD=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run-io-matrix: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

OUT="${OUT:-$ROOT/target/io-matrix/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT/logs" "$DATA"
OUT="$(cd "$OUT" && pwd)"
DATA="$(cd "$DATA" && pwd)"
log() { printf '[run-io-matrix %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

SERVER_PID=""
stop_server() {
    local pid="$SERVER_PID"
    [[ -n "$pid" ]] || return 0
    SERVER_PID=""
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
trap 'stop_server' EXIT
trap 'log "interrupted"; exit 130' INT TERM

cd "$ROOT"
if [[ "$SKIP_BUILD" == 0 ]]; then
    log "building release binaries"
    cargo build --release -p tern-gateway -p tern-loadgen
fi
TERN_BIN="$ROOT/target/release/tern"
LOADGEN_BIN="$ROOT/target/release/tern-loadgen"
bash "$ROOT/bench/peers/tls.sh" "$DATA/tls" >/dev/null
CERT="$DATA/tls/cert.pem"
KEY="$DATA/tls/key.pem"
cat >"$OUT/tern.toml" <<EOF
login_attempts_per_address = 1000000
# Every simulated user connects from one address unless --source-addrs spreads them.
max_connections_per_address = 1000000
login_failures_per_username = 1000
registrations_per_address = 1000000
registrations_per_window = 1000000
hash_queue_per_client = 256
EOF
{
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "git=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo -dirty)"
    echo "kernel=$(uname -r)"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') x $(nproc)"
    echo "memory=$(grep MemTotal /proc/meminfo | awk '{print $2 " kB"}')"
    echo "command=bench/run-io-matrix.sh ${ARGS[*]:-}"
    echo "configs=$CONFIGS idle=$IDLE users=$USERS rate=$RATE duration=$DURATION port=$PORT"
} >"$OUT/environment.txt"

start_server() {
    local io="$1" shards="$2" logf="$3"
    "$TERN_BIN" serve --config "$OUT/tern.toml" --data-dir "$DATA/tern" \
        --listen "127.0.0.1:$PORT" --tls-cert "$CERT" --tls-key "$KEY" \
        --io "$io" --shards "$shards" >"$logf" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 1200); do
        grep -q '^tern listening on ' "$logf" 2>/dev/null && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || { log "server exited; see $logf"; return 1; }
        sleep 0.1
    done
    log "server not ready; see $logf"; return 1
}

common=(--target tern-ws --server "127.0.0.1:$PORT" --ca-file "$CERT" --state-dir "$DATA/loadgen-state" -q)
status=0
for config in $CONFIGS; do
    io="${config%%:*}"; shards="${config##*:}"; name="$io-$shards"
    for run in $RUNS; do
        log "== $name: $run"
        start_server "$io" "$shards" "$OUT/logs/$name-$run.server.log" || { status=1; continue; }
        case "$run" in
            idle) args=(connect "${common[@]}" --connections "$IDLE" --ramp 1000 --hold 20s) ;;
            prd) args=(chat "${common[@]}" --users "$USERS" --group-sizes 2:60,5:30,50:10 \
                    --rate "$RATE" --duration "$DURATION") ;;
            fanout) args=(fanout "${common[@]}" --users 1000 --group-size 100 --senders-per-group 10 \
                    --start-rate 100 --step-factor 1.5 --step-duration 10s --max-steps "$FANOUT_STEPS" \
                    --p99-threshold 50ms) ;;
        esac
        args+=(--server-pid "$SERVER_PID" --report "$OUT/$name-$run.json" --label "$name $run")
        echo "$LOADGEN_BIN ${args[*]}" >"$OUT/logs/$name-$run.command"
        if ! "$LOADGEN_BIN" "${args[@]}" >"$OUT/logs/$name-$run.loadgen.log" 2>&1; then
            # fanout "fails" by design at its last step; its report says why.
            [[ "$run" == fanout && -s "$OUT/$name-$run.json" ]] || { log "$name $run failed"; status=1; }
        fi
        grep -m1 -E "io_uring|shards started" "$OUT/logs/$name-$run.server.log" >&2 || true
        # The server's own counters (io_uring submissions vs sends, deliveries) after the run.
        # Metrics live on the operations listener (default: loopback, the client port + 1).
        curl -fsS --max-time 5 --cacert "$CERT" "https://127.0.0.1:$((PORT + 1))/metrics" \
            >"$OUT/$name-$run.metrics.txt" 2>/dev/null || true
        stop_server
    done
done

python3 "$ROOT/bench/io-compare.py" "$OUT" >"$OUT/io-comparison.md"
cat "$OUT/io-comparison.md"
exit "$status"
