#!/usr/bin/env bash
# Crash test: chat traffic while the server is killed with SIGKILL at random moments and
# restarted on the same port and data dir; afterwards every acknowledged message must have been
# delivered to every other member exactly once (client-side dedupe by seq allowed and counted)
# and be stored exactly once, under its acknowledged seq, in a gapless history.
#
#   loadgen/crash.sh                 CI mode: 200 users, 150 msg/s, 20 kills 1-4 s apart
#   loadgen/crash.sh --long          2,000 users, 200 msg/s, 100 kills
#   loadgen/crash.sh --seed 1234     reproduce a run's population, schedule and kill times
#
# Options (each also as an environment variable CRASH_<NAME>, e.g. CRASH_KILLS=5):
#   --seed N          seed of the kill times and of the loadgen (default: random, printed)
#   --kills N         kills to do (20; --long: 100)
#   --users N         simulated users (200; --long: 2000)
#   --rate R          messages per second, all users (150; --long: 200)
#   --duration D      loadgen traffic duration (default: kills × (mean gap + 1 s) + 10 s)
#   --drain D         after the traffic, how long deliveries may take (60s; covers a restart)
#   --min-gap S / --max-gap S   seconds between a restart and the next kill (1 / 4)
#   --target T        tern-ws (default) or tern-wt
#   --tern PATH       server binary (target/debug/tern, built if missing)
#   --loadgen PATH    load generator (target/debug/tern-loadgen, built if missing)
#   --out DIR         keep the report, the loadgen log and the server logs there
#   --sabotage KIND   TEST ONLY: pass --debug-sabotage KIND to the loadgen (the run must fail)
#
# Prints `crash: kills=N acknowledged=A lost=L duplicated=D client_dedupes=C
# history_missing=M history_duplicates=H` and exits non-zero on any loss, duplicate, history
# problem, failed loadgen check, or fewer kills than asked. Kill times are reproducible from the
# seed; what the server was doing at each kill is not.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)

mode=ci
seed=${CRASH_SEED:-}
kills=${CRASH_KILLS:-}
users=${CRASH_USERS:-}
rate=${CRASH_RATE:-}
duration=${CRASH_DURATION:-}
drain=${CRASH_DRAIN:-60s}
min_gap=${CRASH_MIN_GAP:-1}
max_gap=${CRASH_MAX_GAP:-4}
target=${CRASH_TARGET:-tern-ws}
tern=${CRASH_TERN:-$root/target/debug/tern}
loadgen=${CRASH_LOADGEN:-$root/target/debug/tern-loadgen}
out=${CRASH_OUT:-}
sabotage=${CRASH_SABOTAGE:-}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --long) mode=long; shift ;;
        --seed) seed="$2"; shift 2 ;;
        --kills) kills="$2"; shift 2 ;;
        --users) users="$2"; shift 2 ;;
        --rate) rate="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        --drain) drain="$2"; shift 2 ;;
        --min-gap) min_gap="$2"; shift 2 ;;
        --max-gap) max_gap="$2"; shift 2 ;;
        --target) target="$2"; shift 2 ;;
        --tern) tern="$2"; shift 2 ;;
        --loadgen) loadgen="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --sabotage) sabotage="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "crash: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ $mode == long ]]; then
    kills=${kills:-100}; users=${users:-2000}; rate=${rate:-200}
else
    kills=${kills:-20}; users=${users:-200}; rate=${rate:-150}
fi
seed=${seed:-$(( $(od -An -N4 -tu4 /dev/urandom) % 1000000000 ))}
# Traffic long enough for every kill: the mean gap plus ~1 s per restart (0.3 s measured with a
# debug build), plus a margin. Kills spilling into the drain still count (sends are retried).
if [[ -z "$duration" ]]; then
    duration="$(python3 -c "print(int($kills * (($min_gap + $max_gap) / 2 + 1.0) + 10))")s"
fi

log() { echo "crash: $*" >&2; }

if [[ ! -x "$tern" || ! -x "$loadgen" ]]; then
    log "building the debug binaries"
    cargo build -p tern-gateway --bin tern -p tern-loadgen --bin tern-loadgen
fi
for bin in "$tern" "$loadgen"; do
    [[ -x "$bin" ]] || { log "missing $bin"; exit 2; }
done

work=$(mktemp -d)
server_pid=""
loadgen_pid=""
cleanup() {
    local rc=$?
    if [[ -n "$loadgen_pid" ]] && kill -0 "$loadgen_pid" 2>/dev/null; then
        kill -TERM "$loadgen_pid" 2>/dev/null || true
        sleep 1
        kill -KILL "$loadgen_pid" 2>/dev/null || true
    fi
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    if [[ -n "$out" ]]; then
        mkdir -p "$out"
        cp -r "$work"/report.json "$work"/loadgen.log "$work"/logs "$work"/kills.tsv "$out"/ \
            2>/dev/null || true
        log "kept the report and logs in $out"
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

mkdir -p "$work/logs"
cat > "$work/tern.toml" <<'EOF'
login_attempts_per_address = 1000000
# Every simulated user connects from one address unless --source-addrs spreads them.
max_connections_per_address = 1000000
login_failures_per_username = 1000
registrations_per_address = 1000000
registrations_per_window = 1000000
hash_queue_per_client = 256
log_format = "text"
EOF

# A port free for TCP and UDP (WebTransport shares it).
port=$(python3 - <<'EOF'
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
)
addr="127.0.0.1:$port"

starts=0
hash=""
# Starts the server and waits (at most 60 s) for its banner; checks the pinned hash is stable.
start_server() {
    starts=$((starts + 1))
    local o="$work/logs/server-$starts.out" e="$work/logs/server-$starts.log"
    "$tern" serve --listen "$addr" --data-dir "$work/data" --config "$work/tern.toml" \
        > "$o" 2> "$e" &
    server_pid=$!
    local h=""
    for _ in $(seq 1 600); do
        if grep -q "certificate sha-256:" "$o" 2>/dev/null; then
            h=$(sed -n 's/^ *certificate sha-256: *//p' "$o" | head -n1)
            break
        fi
        if ! kill -0 "$server_pid" 2>/dev/null; then
            log "tern (start $starts) exited; log follows"
            tail -n 30 "$e" >&2
            return 1
        fi
        sleep 0.1
    done
    [[ -n "$h" ]] || { log "no banner from tern (start $starts) in 60 s"; return 1; }
    if [[ -n "$hash" && "$h" != "$hash" ]]; then
        log "certificate hash changed across a restart ($hash -> $h)"
        return 1
    fi
    hash=$h
}

# Kill schedule from the seed: per kill, the gap before it and how long the server stays down.
mapfile -t schedule < <(python3 - "$seed" "$kills" "$min_gap" "$max_gap" <<'EOF'
import random, sys
seed, kills, lo, hi = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
r = random.Random(seed)
for _ in range(kills):
    print(f"{r.uniform(lo, hi):.3f} {r.uniform(0.0, 0.5):.3f}")
EOF
)

log "seed $seed ($mode mode): $kills kills ${min_gap}-${max_gap} s apart; $users users, $rate msg/s for $duration, drain $drain, $target; reproduce with --seed $seed"
start_server
log "tern (pid $server_pid) on $addr"

args=(chat --target "$target" --server "$addr" --cert-hash "$hash"
    --users "$users" --group-sizes 2:60,5:30,50:10 --rate "$rate" --duration "$duration"
    --drain "$drain" --seed "$seed" --request-timeout 10s --connect-timeout 10s
    --state-dir "$work/state" --verify-history --ready-file "$work/ready" --quiet
    --label "crash test seed $seed, $kills kills" --report "$work/report.json")
[[ -n "$sabotage" ]] && args+=(--debug-sabotage "$sabotage")
# Bounded: traffic + drain + setup and verification time.
limit=$(python3 -c "
import re,sys
def secs(s):
    m = re.fullmatch(r'([0-9.]+)(ms|s|m|h)?', s)
    return float(m.group(1)) * {'ms': 0.001, 's': 1, 'm': 60, 'h': 3600, None: 1}[m.group(2)]
print(int(secs('$duration') + secs('$drain') + 300 + $users * 0.1))")
timeout "$limit" "$loadgen" "${args[@]}" > "$work/loadgen.log" 2>&1 &
loadgen_pid=$!

# Kills start once setup and the initial connections are done.
for _ in $(seq 1 $((limit * 10))); do
    [[ -e "$work/ready" ]] && break
    if ! kill -0 "$loadgen_pid" 2>/dev/null; then
        log "the loadgen ended before traffic started; its log follows"
        tail -n 30 "$work/loadgen.log" >&2
        exit 1
    fi
    sleep 0.1
done
[[ -e "$work/ready" ]] || { log "traffic never started"; exit 1; }
log "traffic started; killing"

done_kills=0
t0=$(date +%s.%N)
: > "$work/kills.tsv"
for entry in "${schedule[@]}"; do
    read -r gap down <<< "$entry"
    sleep "$gap"
    kill -0 "$loadgen_pid" 2>/dev/null || { log "the loadgen finished before kill $((done_kills + 1))"; break; }
    kill -KILL "$server_pid" 2>/dev/null || { log "tern was not running at kill $((done_kills + 1))"; exit 1; }
    wait "$server_pid" 2>/dev/null || true
    done_kills=$((done_kills + 1))
    sleep "$down"
    start_server
    printf '%s\t%s\t%s\t%s\n' "$done_kills" \
        "$(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')")" "$gap" "$down" >> "$work/kills.tsv"
    if (( done_kills % 10 == 0 )); then log "$done_kills kills"; fi
done
log "$done_kills kills done in $(python3 -c "print(f'{$(date +%s.%N) - $t0:.0f}')") s; waiting for the loadgen"

rc=0
wait "$loadgen_pid" || rc=$?
loadgen_pid=""
cp "$work/loadgen.log" "$work/logs/" 2>/dev/null || true
if [[ $rc -ne 0 ]]; then
    log "tern-loadgen exited with $rc; its summary follows"
    tail -n 40 "$work/loadgen.log" >&2
fi
kill -0 "$server_pid" 2>/dev/null || { log "tern is not running at the end"; rc=1; }

summary=$(python3 - "$work/report.json" "$done_kills" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    print(f"crash: no report: {e}"); sys.exit(0)
a, t, h = r["accounting"], r["traffic"], r.get("history") or {}
print(f"crash: kills={sys.argv[2]} acknowledged={t['acked']} lost={a['lost']} "
      f"duplicated={a['duplicated']} client_dedupes={a.get('client_dedupes', 0)} "
      f"history_missing={h.get('acknowledged_missing', 'n/a')} "
      f"history_duplicates={h.get('duplicates', 'n/a')}")
print(f"crash: also: expected deliveries {a['expected']}, delivered {a['delivered']}, "
      f"send failed {t['send_failed']}, send errors {t['send_errors']}, "
      f"acks of already stored sends {t.get('ack_duplicates', 0)}, "
      f"reconnects {r['connections']['reconnects']}, history seq gaps {h.get('seq_gaps')}, "
      f"seq mismatch {h.get('seq_mismatch')}, unexpected {h.get('unexpected')}, "
      f"history messages {h.get('messages')}; passed={r['passed']}")
for f in r.get("failures", []):
    print(f"crash: failure: {f}")
EOF
)
echo "$summary"
if [[ $done_kills -lt $kills ]]; then
    log "only $done_kills of $kills kills happened"
    rc=1
fi
if ! grep -q ' lost=0 duplicated=0 .* history_missing=0 history_duplicates=0' <<< "$summary"; then
    rc=1
fi
if [[ $rc -ne 0 ]]; then
    log "FAILED (seed $seed)"
    exit 1
fi
log "passed (seed $seed)"
