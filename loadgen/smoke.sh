#!/usr/bin/env bash
# CI smoke test of the load generator against a real Tern server.
#
# Starts `tern serve` on an ephemeral port (temporary data dir, a config that lifts the
# per-address login limit, since every simulated user registers from 127.0.0.1), runs a short
# chat scenario (~300 users in conversations of 2, 5 and 30-50, ~100 msg/s, ~20 s) over
# WebSocket and then WebTransport, and checks both JSON reports: well formed, schema version 1,
# something expected, every expected delivery made, nothing lost or duplicated or out of order.
# No latency thresholds: the CI machine is shared and noisy.
# Then the same over both transports with --e2e (every device encrypts and decrypts with real
# Olm/Megolm; smaller: SMOKE_E2E_USERS users), which must also have no undecryptable delivery,
# and one rotation burst (a 20-member group) per transport. The --e2e runs start with a
# --warmup (SMOKE_E2E_WARMUP): its messages must be accounted like the others and be in the
# report's warmup section, not in the measured latencies.
#
# Environment: SMOKE_USERS (300), SMOKE_RATE (100), SMOKE_DURATION (20s), SMOKE_E2E_USERS (120),
# SMOKE_E2E_WARMUP (4s),
# SMOKE_MODES ("plain e2e"), SMOKE_NO_BUILD=1 to
# use the existing target/debug binaries, SMOKE_OUT=DIR to keep reports, plots and the server
# log there.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
users=${SMOKE_USERS:-300}
rate=${SMOKE_RATE:-100}
duration=${SMOKE_DURATION:-20s}
e2e_users=${SMOKE_E2E_USERS:-120}
e2e_warmup=${SMOKE_E2E_WARMUP:-4s}
modes=${SMOKE_MODES:-plain e2e}

if [[ "${SMOKE_NO_BUILD:-0}" != 1 ]]; then
    cargo build -p tern-gateway --bin tern -p tern-loadgen --bin tern-loadgen
fi
tern="$root/target/debug/tern"
loadgen="$root/target/debug/tern-loadgen"
for bin in "$tern" "$loadgen"; do
    [[ -x "$bin" ]] || { echo "smoke: missing $bin" >&2; exit 1; }
done

work=$(mktemp -d)
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    if [[ -n "${SMOKE_OUT:-}" ]]; then
        mkdir -p "$SMOKE_OUT"
        cp "$work"/*.json "$work"/*.svg "$work"/server.log "$SMOKE_OUT"/ 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/tern.toml" <<'EOF'
login_attempts_per_address = 1000000
# Every simulated user connects from one address unless --source-addrs spreads them.
max_connections_per_address = 1000000
registrations_per_address = 1000000
registrations_per_window = 1000000
hash_queue_per_client = 256
log_format = "text"
EOF

"$tern" serve --listen 127.0.0.1:0 --data-dir "$work/data" --config "$work/tern.toml" \
    > "$work/server.out" 2> "$work/server.log" &
server_pid=$!

addr=""
hash=""
for _ in $(seq 1 300); do
    if grep -q "certificate sha-256:" "$work/server.out" 2>/dev/null; then
        addr=$(sed -n 's/^tern listening on //p' "$work/server.out" | head -n1)
        hash=$(sed -n 's/^ *certificate sha-256: *//p' "$work/server.out" | head -n1)
        break
    fi
    kill -0 "$server_pid" 2>/dev/null || { echo "smoke: tern exited" >&2; cat "$work/server.log" >&2; exit 1; }
    sleep 0.2
done
[[ -n "$addr" && -n "$hash" ]] || { echo "smoke: no banner from tern" >&2; exit 1; }
echo "smoke: tern (pid $server_pid) on $addr"

failed=0
for mode in $modes; do
for target in ${SMOKE_TARGETS:-tern-ws tern-wt}; do
    n=$users
    flags=()
    name=$target
    if [[ $mode == e2e ]]; then
        n=$e2e_users
        flags=(--e2e --warmup "$e2e_warmup" --warmup-ramp)
        name=$target-e2e
    fi
    echo "smoke: chat over $target ($mode): $n users, $rate msg/s, $duration"
    rc=0
    timeout 300 "$loadgen" chat --target "$target" --server "$addr" --cert-hash "$hash" \
        --users "$n" --group-sizes 2:60,5:30,50:10 --rate "$rate" --duration "$duration" \
        --server-pid "$server_pid" --state-dir "$work/state" --quiet "${flags[@]}" \
        --label "ci smoke $name" --report "$work/$name.json" --plot "$work/$name.svg" \
        || rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "smoke: tern-loadgen over $target ($mode) exited with $rc" >&2
        failed=1
    fi
    if ! python3 - "$work/$name.json" "$work/$name.svg" "$mode" <<'EOF'
import json, sys

path, svg, mode = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    with open(path) as f:
        r = json.load(f)
except Exception as e:  # missing or malformed report
    sys.exit(f"report {path}: {e}")
problems = []
def need(cond, what):
    if not cond:
        problems.append(what)
need(r.get("schema_version") == 1, "schema_version is not 1")
for key in ("command_line", "started_at", "machine", "scenario", "connect", "traffic",
            "latency", "accounting", "loadgen", "histograms", "passed", "failures"):
    need(key in r, f"missing field {key}")
a = r.get("accounting", {})
for key in ("expected", "delivered", "lost", "duplicated", "out_of_order", "seq_regressions"):
    need(isinstance(a.get(key), int), f"accounting.{key} is not an integer")
need(a.get("expected", 0) > 0, "nothing was expected")
need(a.get("delivered") == a.get("expected"), "delivered != expected")
need(a.get("lost") == 0, f"{a.get('lost')} lost")
need(a.get("duplicated") == 0, f"{a.get('duplicated')} duplicated")
need(a.get("out_of_order") == 0, f"{a.get('out_of_order')} out of order")
need(a.get("seq_regressions") == 0, f"{a.get('seq_regressions')} seq regressions")
need(r.get("connect", {}).get("users_failed") == 0, "some users never connected")
need(r.get("latency", {}).get("delivery", {}).get("count", 0) > 0, "no delivery latency samples")
need(r.get("passed") is True, f"run failed: {r.get('failures')}")
if mode == "e2e":
    need(a.get("undecryptable") == 0, f"{a.get('undecryptable')} undecryptable")
    need("--e2e" in r.get("command_line", []), "the e2e run's command line has no --e2e")
    # --warmup: accounted (the whole-run checks above include it), reported apart, and kept
    # out of the measured delivery histogram (in a passing run every first arrival is one
    # expected delivery, so the counts must match exactly).
    w = r.get("warmup") or {}
    need(w.get("sent", 0) > 0, "no warm-up traffic (warmup section missing or empty)")
    need(w.get("expected", 0) > 0 and w.get("delivered") == w.get("expected"),
         f"warm-up delivered {w.get('delivered')} of {w.get('expected')} expected")
    need(w.get("undecryptable") == 0, f"{w.get('undecryptable')} undecryptable in the warm-up")
    need(w.get("delivery", {}).get("count") == w.get("delivered"),
         "warm-up delivery histogram count != warm-up deliveries")
    need(r.get("latency", {}).get("delivery", {}).get("count") == a.get("delivered", 0) - w.get("delivered", 0),
         "measured delivery histogram count != deliveries minus the warm-up's")
try:
    with open(svg) as f:
        need(f.read().rstrip().endswith("</svg>"), "plot is not a complete SVG")
except OSError as e:
    problems.append(f"plot: {e}")
if problems:
    sys.exit(f"report {path}: " + "; ".join(problems))
d = r["latency"]["delivery"]
print(f"smoke: {r['scenario']['target']} ({mode}): expected {a['expected']}, delivered {a['delivered']}, "
      f"lost 0, duplicated 0; delivery p50 {d['p50_us']} us, p99 {d['p99_us']} us")
if r.get("warmup"):
    w = r["warmup"]
    print(f"smoke: {r['scenario']['target']} ({mode}) warm-up: {w['duration_secs']:.0f}s, sent {w['sent']}, "
          f"delivered {w['delivered']} of {w['expected']}, p99 {w['delivery']['p99_us']} us, "
          f"late keys {w['late_keys']}, first sends after it {w['first_sends_after_warmup']}")
EOF
    then
        failed=1
    fi
done
if [[ $mode == e2e ]]; then
    for target in tern-ws tern-wt; do
        echo "smoke: rotation burst over $target: 100 members"
        rc=0
        timeout 300 "$loadgen" rotation --target "$target" --server "$addr" --cert-hash "$hash" \
            --members 100 --before 3 --report "$work/rotation-$target.json" || rc=$?
        if [[ $rc -ne 0 ]]; then
            echo "smoke: rotation over $target exited with $rc" >&2
            failed=1
        fi
    done
fi
done

if [[ $failed -ne 0 ]]; then
    echo "smoke: FAILED (server log follows)" >&2
    tail -n 50 "$work/server.log" >&2 || true
    echo "smoke: 0 passed, 1 failed"
    exit 1
fi
echo "smoke: 1 passed, 0 failed"
