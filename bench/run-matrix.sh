#!/usr/bin/env bash
# The peer comparison in one run: the same `tern-loadgen chat` scenario against Tern over
# WebSocket and WebTransport, Socket.IO 4 (Node) and Centrifugo v6, one server at a time on this
# machine, each with the same self-signed ECDSA P-256 certificate and the server's PID handed to
# the loadgen for CPU/RSS sampling. Writes every report, plot and server log to the output
# directory and a comparison table (comparison.md) with ratios relative to tern-ws.
#
# Usage: bench/run-matrix.sh [--quick] [options] [-- extra tern-loadgen chat args]
#   --quick               500 users, 100 msg/s, 20 s (a smoke run of the whole matrix)
#   --users N             simulated users            [USERS, default 10000]
#   --group-sizes SPEC    size:percent list          [GROUP_SIZES, default 2:60,5:30,50:10]
#   --rate N              aggregate msgs/s           [RATE, default 1000]
#   --duration D          e.g. 300s                  [DURATION, default 300s]
#   --workers W           loadgen worker processes   [WORKERS, default: the loadgen's own]
#   --targets "T ..."     subset/order of tern-ws tern-wt socketio centrifugo [TARGETS]
#   --out DIR             output directory           [OUT, default target/peer-matrix/<UTC time>]
#   --skip-build          use the existing binaries
#   --debug               debug binaries (target/debug, as the test command builds them): for a
#                         smoke run of the instrument (--quick), never for numbers
#   --skip-install        do not run npm ci / the Centrifugo install
# The defaults are the PRD scenario (10,000 users, mixed group sizes, 1,000 msg/s, 5 minutes).
# Exit status: 0 when every target ran and its loadgen run passed (no loss, no duplicates);
# 1 otherwise (the table is still written, with the failing runs marked).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS="$ROOT/bench/peers"

USERS="${USERS:-10000}"
GROUP_SIZES="${GROUP_SIZES:-2:60,5:30,50:10}"
RATE="${RATE:-1000}"
DURATION="${DURATION:-300s}"
WORKERS="${WORKERS:-}"
TARGETS="${TARGETS:-tern-ws tern-wt socketio centrifugo}"
OUT="${OUT:-}"
SKIP_BUILD=0
PROFILE=release
SKIP_INSTALL=0
EXTRA=()
MATRIX_ARGS=("$@")

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) USERS=500; RATE=100; DURATION=20s; shift ;;
        --users) USERS="$2"; shift 2 ;;
        --group-sizes) GROUP_SIZES="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --workers) WORKERS="$2"; shift 2 ;;
        --targets) TARGETS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --skip-build) SKIP_BUILD=1; shift ;;
        --debug) PROFILE=debug; shift ;;
        --skip-install) SKIP_INSTALL=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; EXTRA=("$@"); break ;;
        *) echo "run-matrix: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

for t in $TARGETS; do
    case "$t" in tern-ws|tern-wt|socketio|centrifugo) ;; *)
        echo "run-matrix: unknown target $t" >&2; exit 2 ;;
    esac
done
wants() { [[ " $TARGETS " == *" $1 "* ]]; }

OUT="${OUT:-$ROOT/target/peer-matrix/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT/logs"
OUT="$(cd "$OUT" && pwd)"
# Shell words, quoted only where needed (readable commands in the table, still pasteable).
shell_words() {
    local out=() a
    for a in "$@"; do
        if [[ "$a" =~ ^[A-Za-z0-9_./:,=@%+-]+$ ]]; then
            out+=("$a")
        else
            out+=("'${a//\'/\'\\\'\'}'")
        fi
    done
    echo "${out[*]}"
}
log() { printf '[run-matrix %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# 10,000 server-side sockets plus files: use the whole (hard) open-file allowance, which every
# server and the loadgen started below inherit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---- stop whatever we started, however we exit ------------------------------------------------
SERVER_PID=""
stop_server() {
    local pid="$SERVER_PID"
    [[ -n "$pid" ]] || return 0
    SERVER_PID=""
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
trap 'stop_server' EXIT
trap 'log "interrupted"; exit 130' INT TERM

# A port free for TCP and UDP on 127.0.0.1 (Tern serves WebTransport on the same port over UDP).
free_port() {
    python3 - <<'EOF'
import socket
while True:
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.bind(("127.0.0.1", 0))
    port = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", port))
    except OSError:
        t.close()
        continue
    u.close(); t.close()
    print(port)
    break
EOF
}

# Waits until FILE contains a line matching REGEX, while PID lives; prints the line.
wait_for_line() {
    local file="$1" regex="$2" pid="$3" timeout="${4:-60}" line
    for _ in $(seq 1 $((timeout * 10))); do
        if line="$(grep -m1 -E "$regex" "$file" 2>/dev/null)"; then
            echo "$line"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { log "server exited early; see $file"; return 1; }
        sleep 0.1
    done
    log "no ready line /$regex/ in ${timeout}s; see $file"
    return 1
}

# ---- build and install ----------------------------------------------------------------------
cd "$ROOT"
if [[ "$SKIP_BUILD" == 0 ]]; then
    log "building $PROFILE binaries"
    if [[ "$PROFILE" == release ]]; then
        cargo build --release -p tern-gateway -p tern-loadgen
    else
        cargo build -p tern-gateway --bin tern -p tern-loadgen --bin tern-loadgen
    fi
fi
TERN_BIN="$ROOT/target/$PROFILE/tern"
LOADGEN_BIN="$ROOT/target/$PROFILE/tern-loadgen"
for b in "$TERN_BIN" "$LOADGEN_BIN"; do
    [[ -x "$b" ]] || { echo "run-matrix: $b missing (drop --skip-build)" >&2; exit 1; }
done

if [[ "$SKIP_INSTALL" == 0 ]]; then
    if wants socketio; then
        log "installing the Socket.IO peer (npm ci)"
        npm ci --prefix "$PEERS/socketio" --no-audit --no-fund --loglevel=error
    fi
    if wants centrifugo; then
        log "installing the Centrifugo peer"
        bash "$PEERS/centrifugo/install.sh"
    fi
fi

log "certificate"
bash "$PEERS/tls.sh" "$OUT/tls" >/dev/null
CERT="$OUT/tls/cert.pem"
KEY="$OUT/tls/key.pem"

# ---- what ran where -------------------------------------------------------------------------
{
    echo "date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host_cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "host_cores=$(nproc)"
    echo "host_mem_kib=$(grep MemTotal /proc/meminfo | awk '{print $2}')"
    echo "kernel=$(uname -r)"
    echo "tern_commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo '+dirty')"
    echo "rustc=$(rustc --version 2>/dev/null || echo unknown)"
    echo "profile=$PROFILE"
    if wants socketio; then
        echo "node=$(node --version)"
        echo "socket.io=$(node -p "require('$PEERS/socketio/node_modules/socket.io/package.json').version" 2>/dev/null || echo unknown)"
    fi
    if wants centrifugo; then
        # `go install` leaves the binary's own version at 0.0.0; the stamp has the module version.
        echo "centrifugo=$(cat "$PEERS/.bin/centrifugo.version" 2>/dev/null || echo unknown) ($("$PEERS/.bin/centrifugo" version 2>/dev/null | sed -n 's/.*Go version: \([^)]*\)).*/built with \1/p'))"
    fi
    echo "matrix_command=$(shell_words bench/run-matrix.sh "${MATRIX_ARGS[@]}")"
    echo "scenario=chat users=$USERS group_sizes=$GROUP_SIZES rate=$RATE duration=$DURATION workers=${WORKERS:-default} extra=${EXTRA[*]:-}"
} >"$OUT/environment.txt"

# Tern on its embedded store, load-test settings: the loadgen logs in every user from a handful
# of addresses, which the production login limit (30/min per address) would refuse.
TERN_DATA="$OUT/tern-data"
cat >"$OUT/tern.toml" <<EOF
login_attempts_per_address = 1000000
# Every simulated user connects from one address unless --source-addrs spreads them.
max_connections_per_address = 1000000
login_failures_per_username = 1000
registrations_per_address = 1000000
registrations_per_window = 1000000
hash_queue_per_client = 256
log_format = "text"
EOF

# ---- servers --------------------------------------------------------------------------------
start_server() {
    local target="$1" port="$2" logf="$OUT/logs/$1.log"
    case "$target" in
        tern-ws|tern-wt)
            "$TERN_BIN" serve --config "$OUT/tern.toml" --data-dir "$TERN_DATA" \
                --listen "127.0.0.1:$port" --tls-cert "$CERT" --tls-key "$KEY" >"$logf" 2>&1 &
            SERVER_PID=$!
            wait_for_line "$logf" '^tern listening on ' "$SERVER_PID" 120 >/dev/null
            ;;
        socketio)
            node "$PEERS/socketio/server.js" --host 127.0.0.1 --port "$port" \
                --cert "$CERT" --key "$KEY" >"$logf" 2>&1 &
            SERVER_PID=$!
            wait_for_line "$logf" '^socketio listening on ' "$SERVER_PID" 60 >/dev/null
            ;;
        centrifugo)
            # run.sh execs Centrifugo, so $! is Centrifugo's own PID.
            bash "$PEERS/centrifugo/run.sh" "$port" "$CERT" "$KEY" >"$logf" 2>&1 &
            SERVER_PID=$!
            local ok=0
            for _ in $(seq 1 600); do
                if curl -fsS --max-time 2 --cacert "$CERT" "https://127.0.0.1:$port/health" >/dev/null 2>&1; then
                    ok=1; break
                fi
                kill -0 "$SERVER_PID" 2>/dev/null || break
                sleep 0.1
            done
            [[ "$ok" == 1 ]] || { log "centrifugo not healthy; see $logf"; return 1; }
            ;;
    esac
}

run_target() {
    local target="$1" port
    port="$(free_port)"
    log "== $target: starting server on 127.0.0.1:$port"
    start_server "$target" "$port" || return 1
    log "== $target: server pid $SERVER_PID; running the scenario ($USERS users, $RATE msg/s, $DURATION)"
    # Tern's two transports share accounts (same data dir, same loadgen state): registering
    # 10,000 argon2id accounts once is enough.
    local state="$OUT/state-$target"
    [[ "$target" == tern-* ]] && state="$OUT/state-tern"
    local args=(chat --target "$target" --server "127.0.0.1:$port" --ca-file "$CERT"
        --users "$USERS" --group-sizes "$GROUP_SIZES" --rate "$RATE" --duration "$DURATION"
        --server-pid "$SERVER_PID" --report "$OUT/$target.json" --plot "$OUT/$target.svg"
        --state-dir "$state")
    [[ -n "$WORKERS" ]] && args+=(--workers "$WORKERS")
    args+=("${EXTRA[@]}")
    shell_words "$LOADGEN_BIN" "${args[@]}" >"$OUT/logs/$target.command"
    local rc=0
    "$LOADGEN_BIN" "${args[@]}" 2>&1 | tee "$OUT/logs/$target.loadgen.log" || rc=$?
    # pipefail: rc is the loadgen's status unless tee failed.
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        log "== $target: the server died during the run; see $OUT/logs/$target.log"
        if [[ "$rc" == 0 ]]; then rc=1; fi
    fi
    stop_server
    return "$rc"
}

: >"$OUT/runs.tsv"
overall=0
for target in $TARGETS; do
    rc=0
    run_target "$target" || rc=$?
    stop_server
    printf '%s\t%s\n' "$target" "$rc" >>"$OUT/runs.tsv"
    if [[ "$rc" != 0 ]]; then
        log "== $target: FAILED (exit $rc)"
        overall=1
    fi
    # Let the kernel reap TIME_WAIT sockets and the machine go quiet between targets.
    sleep 3
done

python3 "$PEERS/compare.py" "$OUT" >"$OUT/comparison.md" || { log "compare.py failed"; overall=1; }
cat "$OUT/comparison.md"
log "results in $OUT"
exit "$overall"
