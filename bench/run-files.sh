#!/usr/bin/env bash
# File transfer measurements (issue 13), with curl as the client so the numbers are the
# server's, not an SDK's:
#   1. throughput: one 100 MB upload (resumable PATCHes of 8 MiB on one keep-alive connection)
#      and its download through a signed URL, for the local and the S3 backend, beside curl
#      PUT/GET straight to the same S3 server (the floor Tern's S3 path cannot beat);
#   2. memory and chat under uploads: CLIENTS clients upload SIZE_MB each at once while the
#      load generator runs the chat scenario against the same server; the server's RSS is
#      sampled every 0.25 s, and the chat's delivery p99 is compared with a run without uploads.
# The bytes are random (what a client-side encrypted file looks like to the server).
#
# Usage: bench/run-files.sh [--skip-build] [--backends "local s3"] [--out DIR]
# Env: SIZE_MB (100), CLIENTS (20), USERS (10000), RATE (1000), DURATION (90s), GROUP_SIZES,
# UPLOAD_DELAY (s into the chat run before the uploads start, 30), PACE (bytes/s for the
# server's upload_bytes_per_sec and download_bytes_per_sec; unset = the server's default,
# 0 = unpaced), UPLOADER_NICE (niceness of the uploading client process, 0; raising it shows how
# much of the chat's tail is the co-located client's CPU rather than the server's work),
# FILES_TMPFS (1: the server's files.dir on /dev/shm, the store on disk),
# FRESH_SERVER (1, the default: the run beside the uploads gets a new server, data directory and
# loadgen population, so it is a first run like the one alone; 0: the same server and
# population again, whose conversations then hold the first run's history),
# CONTROL (1: the second run has no uploads either: an A/A pair that measures how much the two
# runs' p99 differ by themselves),
# KEEP_DATA (1: keep the payload, the stores and the TLS material in OUT; default: removed).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

SKIP_BUILD=0
BACKENDS="local s3"
SIZE_MB="${SIZE_MB:-100}"
CLIENTS="${CLIENTS:-20}"
USERS="${USERS:-10000}"
RATE="${RATE:-1000}"
DURATION="${DURATION:-90s}"
UPLOAD_DELAY="${UPLOAD_DELAY:-30}"
GROUP_SIZES="${GROUP_SIZES:-2:60,5:30,50:10}"
OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --skip-build) SKIP_BUILD=1; shift ;;
        --backends) BACKENDS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n 2,19p "$0"; exit 0 ;;
        *) echo "run-files: unknown argument $1" >&2; exit 2 ;;
    esac
done
OUT="${OUT:-$ROOT/target/files-bench/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT/logs"
OUT="$(cd "$OUT" && pwd)"
log() { printf '[run-files %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [[ "$SKIP_BUILD" == 0 ]]; then
    log "building release binaries"
    cargo build --release --locked -p tern-gateway -p tern-loadgen
fi
TERN_BIN="$ROOT/target/release/tern"
LOADGEN_BIN="$ROOT/target/release/tern-loadgen"

SERVER_PID=""
S3_DIR="$OUT/s3"
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
    stop_server
    bash scripts/s3-server.sh stop "$S3_DIR" >/dev/null 2>&1 || true
    rm -rf "/dev/shm/tern-files-bench-$$"
    # OUT keeps the reports; the bulk (payload, parts, stores, S3 data: gigabytes) and the
    # secrets (TLS key, tokens, saved accounts) go, unless KEEP_DATA=1.
    if [[ "${KEEP_DATA:-0}" != 1 ]]; then
        rm -rf "$OUT"/payload.bin "$OUT"/parts "$OUT"/data-* "$OUT"/state-* "$OUT"/s3 "$OUT"/tls \
            "$OUT"/upload-jobs-* "$OUT"/uploader-go-* "$OUT"/tern-*.toml
    fi
}
trap cleanup EXIT

bash bench/peers/tls.sh "$OUT/tls" >/dev/null
CERT="$OUT/tls/cert.pem"
KEY="$OUT/tls/key.pem"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT="$(free_port)"
OPS_PORT="$(free_port)"
BASE="https://127.0.0.1:$PORT/api/v1"
CURL=(curl -sS --fail-with-body --cacert "$CERT" --max-time 600)

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
now() { date +%s.%N; }
mbps() { python3 -c "print(f'{$1 / ($3 - $2) / 1e6:.1f}')"; }

log "test file: $SIZE_MB MB of random bytes"
FILE="$OUT/payload.bin"
head -c "$((SIZE_MB * 1000 * 1000))" /dev/urandom >"$FILE"
SIZE="$(stat -c %s "$FILE")"
CHUNK=$((8 * 1024 * 1024))
(cd "$OUT" && rm -rf parts && mkdir parts && split -b "$CHUNK" -d -a 4 payload.bin parts/p)

start_tern() {
    local backend="$1" data="$OUT/data-$1"
    {
        echo 'login_attempts_per_address = 1000000'
        echo 'max_connections_per_address = 1000000'
        echo 'login_failures_per_username = 1000'
        echo 'registrations_per_address = 1000000'
        echo 'registrations_per_window = 1000000'
        echo 'hash_queue_per_client = 256'
        echo 'log_format = "text"'
        echo "ops_listen = \"127.0.0.1:$OPS_PORT\""
        echo '[files]'
        echo "backend = \"$backend\""
        if [[ "${FILES_TMPFS:-0}" == 1 ]]; then
            # Staging and objects on tmpfs (files.dir), the store on disk: what is left of the
            # chat's rise beside the uploads is CPU, not the device the store's fsyncs share.
            mkdir -p "/dev/shm/tern-files-bench-$$/$backend"
            echo "dir = \"/dev/shm/tern-files-bench-$$/$backend\""
        fi
        echo "max_file_bytes = $((SIZE + 1024 * 1024))"
        if [[ -n "${PACE:-}" ]]; then
            echo "upload_bytes_per_sec = $PACE"
            echo "download_bytes_per_sec = $PACE"
        fi
        if [[ "$backend" == s3 ]]; then
            echo "s3_endpoint = \"$TERN_TEST_S3\""
            echo "s3_bucket = \"$TERN_TEST_S3_BUCKET\""
            echo "s3_access_key = \"$TERN_TEST_S3_ACCESS_KEY\""
            echo "s3_secret_key = \"$TERN_TEST_S3_SECRET_KEY\""
            echo 's3_allow_http = true'
        fi
    } >"$OUT/tern-$backend.toml"
    "$TERN_BIN" serve --config "$OUT/tern-$backend.toml" --data-dir "$data" \
        --listen "127.0.0.1:$PORT" --tls-cert "$CERT" --tls-key "$KEY" >"$OUT/logs/tern-$backend.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 600); do
        grep -q '^tern listening on ' "$OUT/logs/tern-$backend.log" 2>/dev/null && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "tern did not start; see $OUT/logs/tern-$backend.log"
    return 1
}

# Registers NAME, logs in, creates a group it owns; prints "TOKEN CONVERSATION".
account() {
    local name="$1" token conv
    "${CURL[@]}" -X POST -H 'Content-Type: application/json' \
        -d "{\"username\":\"$name\",\"password\":\"files bench password\"}" "$BASE/register" >/dev/null
    token="$("${CURL[@]}" -X POST -H 'Content-Type: application/json' \
        -d "{\"username\":\"$name\",\"password\":\"files bench password\"}" "$BASE/login" | json "['token']")"
    conv="$("${CURL[@]}" -X POST -H 'Content-Type: application/json' -H "Authorization: Bearer $token" \
        -d "{\"name\":\"files $name\",\"description\":\"\",\"members\":[]}" "$BASE/conversations/group" \
        | json "['conversation_id']")"
    echo "$token $conv"
}

# Creates an upload of $FILE's size as TOKEN in CONVERSATION; prints its id.
create_upload() {
    local token="$1" conv="$2"
    "${CURL[@]}" -X POST -H 'Content-Type: application/json' -H "Authorization: Bearer $token" \
        -d "{\"conversation\":\"$conv\",\"size\":$SIZE,\"content_type\":\"application/octet-stream\"}" \
        "$BASE/uploads" | json "['upload_id']"
}

# Sends $FILE into upload ID as TOKEN: every 8 MiB PATCH on one keep-alive connection (one
# curl process), then finish. Nothing but curl runs here, so the instrument costs little CPU
# while it is measured.
send_upload() {
    local token="$1" id="$2" args=() off=0 part
    for part in "$OUT"/parts/p*; do
        [[ ${#args[@]} -gt 0 ]] && args+=(--next)
        args+=(--cacert "$CERT" -sS --fail-with-body -o /dev/null -X PATCH
            -H "Authorization: Bearer $token" -H "Upload-Offset: $off"
            -H 'Content-Type: application/offset+octet-stream' --data-binary "@$part" "$BASE/uploads/$id")
        off=$((off + $(stat -c %s "$part")))
    done
    curl --max-time 600 "${args[@]}"
    "${CURL[@]}" -o /dev/null -X POST -H "Authorization: Bearer $token" "$BASE/uploads/$id/finish"
}

upload() {
    local id
    id="$(create_upload "$1" "$2")"
    send_upload "$1" "$id"
    echo "$id"
}

download() {
    local token="$1" id="$2" url
    url="$("${CURL[@]}" -X POST -H "Authorization: Bearer $token" "$BASE/files/$id/url" | json "['url']")"
    "${CURL[@]}" -o "$OUT/downloaded.bin" "https://127.0.0.1:$PORT$url"
    cmp -s "$OUT/downloaded.bin" "$FILE" || { log "download differs from the upload"; return 1; }
    rm -f "$OUT/downloaded.bin"
}

# RSS of PID in KiB every 0.25 s into FILE until the flag file disappears.
sample_rss() {
    local pid="$1" out="$2" flag="$3"
    while [[ -e "$flag" ]]; do
        awk -v t="$(date +%s.%N)" '/^VmRSS/ {print t, $2}' "/proc/$pid/status" >>"$out" 2>/dev/null || true
        sleep 0.25
    done
}

chat_run() {
    local name="$1"
    "$LOADGEN_BIN" chat --target tern-ws --server "127.0.0.1:$PORT" --ca-file "$CERT" \
        --users "$USERS" --group-sizes "$GROUP_SIZES" --rate "$RATE" --duration "$DURATION" \
        --server-pid "$SERVER_PID" --report "$OUT/$name.json" --state-dir "$OUT/state-$BACKEND" \
        >"$OUT/logs/$name.loadgen.log" 2>&1
}

# The server's /metrics now (operations listener), for the group commit's latency per window.
scrape() { curl -sk --max-time 5 "https://127.0.0.1:$OPS_PORT/metrics" >"$1" || : >"$1"; }
commit_of() {
    python3 bench/prom-delta.py "$1" "$2" tern_storage_commit_seconds 0.5 0.99 2>/dev/null \
        | awk -F'\t' '{for (i = 1; i <= NF; i++) {split($i, kv, "="); if (kv[1] == "p50") a = kv[2]; if (kv[1] == "p99") b = kv[2]} print "commit_p50_s=" a "\tcommit_p99_s=" b}'
}

p99_of() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['latency']['delivery']['p99_us']/1000)" "$1"; }

{
    echo "date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host_cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "host_cores=$(nproc)"
    echo "tern_commit=$(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty')"
    echo "size_mb=$SIZE_MB clients=$CLIENTS users=$USERS rate=$RATE duration=$DURATION pace=${PACE:-server default}"
    echo "files_tmpfs=${FILES_TMPFS:-0} uploader_nice=${UPLOADER_NICE:-0} fresh_server=${FRESH_SERVER:-1} control=${CONTROL:-0}"
} >"$OUT/environment.txt"
: >"$OUT/results.tsv"
row() { printf '%s\n' "$*" | tee -a "$OUT/results.tsv"; }

if [[ " $BACKENDS " == *" s3 "* ]]; then
    log "starting the S3 server (scripts/s3-server.sh)"
    eval "$(bash scripts/s3-server.sh start "$S3_DIR")"
    log "floor: curl PUT/GET straight to S3"
    t0="$(now)"
    curl -sS --fail-with-body --aws-sigv4 "aws:amz:us-east-1:s3" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
        --user "$TERN_TEST_S3_ACCESS_KEY:$TERN_TEST_S3_SECRET_KEY" -T "$FILE" \
        "$TERN_TEST_S3/$TERN_TEST_S3_BUCKET/floor.bin" >/dev/null
    t1="$(now)"
    curl -sS --fail-with-body --aws-sigv4 "aws:amz:us-east-1:s3" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
        --user "$TERN_TEST_S3_ACCESS_KEY:$TERN_TEST_S3_SECRET_KEY" -o /dev/null \
        "$TERN_TEST_S3/$TERN_TEST_S3_BUCKET/floor.bin"
    t2="$(now)"
    row "curl-direct-s3	upload_MBps=$(mbps "$SIZE" "$t0" "$t1")	download_MBps=$(mbps "$SIZE" "$t1" "$t2")"
fi

for BACKEND in $BACKENDS; do
    log "== backend $BACKEND"
    start_tern "$BACKEND"
    read -r TOKEN CONV < <(account "single-$BACKEND")
    t0="$(now)"
    ID="$(upload "$TOKEN" "$CONV")"
    t1="$(now)"
    download "$TOKEN" "$ID"
    t2="$(now)"
    row "tern-$BACKEND	upload_MBps=$(mbps "$SIZE" "$t0" "$t1")	download_MBps=$(mbps "$SIZE" "$t1" "$t2")"

    log "chat baseline ($USERS users, $RATE msg/s, $DURATION), no uploads"
    chat_run "chat-$BACKEND-alone" &
    chat=$!
    # The group commit's latency over the chat's steady traffic, as in the next run's upload
    # window: after the setup (registrations; the log's "creating conversations" line) and
    # UPLOAD_DELAY more seconds.
    for _ in $(seq 1 1800); do
        grep -q 'creating conversations' "$OUT/logs/chat-$BACKEND-alone.loadgen.log" 2>/dev/null && break
        sleep 0.2
    done
    sleep "$UPLOAD_DELAY"; scrape "$OUT/metrics-$BACKEND-alone-0.txt"
    wait "$chat"; scrape "$OUT/metrics-$BACKEND-alone-1.txt"

    if [[ "${FRESH_SERVER:-1}" == 1 ]]; then
        # The second run on the same server would send into conversations that already hold
        # the first run's ~90,000 messages (the loadgen's state dir keeps the population), which
        # can cost the server more per message by itself (issue 16): a new server, store and
        # population make both runs first runs, one difference fewer than the uploads'.
        stop_server
        rm -rf "$OUT/data-$BACKEND" "$OUT/state-$BACKEND"
        [[ "${FILES_TMPFS:-0}" == 1 ]] && rm -rf "/dev/shm/tern-files-bench-$$/$BACKEND"
        start_tern "$BACKEND"
    fi
    log "$CLIENTS clients x $SIZE_MB MB uploads during the same chat scenario (control=${CONTROL:-0})"
    # Accounts and upload ids before the chat starts, and the uploader process (one Python
    # process, bench/files-uploader.py) started and waiting: exec'ing 20 curls and their shell
    # work at the moment the uploads begin took the 2 cores from the server for most of a
    # second (measured: one dip in deliveries that alone lifted the chat's p99 from 7 to 41 ms).
    jobs="$OUT/upload-jobs-$BACKEND.txt"; : >"$jobs"
    for i in $(seq 1 "$CLIENTS"); do
        read -r tok conv < <(account "up$i-$BACKEND")
        echo "$tok $(create_upload "$tok" "$conv")" >>"$jobs"
    done
    go="$OUT/uploader-go-$BACKEND"; rm -f "$go"; mkfifo "$go"
    nice -n "${UPLOADER_NICE:-0}" python3 bench/files-uploader.py --port "$PORT" --cacert "$CERT" --file "$FILE" --jobs "$jobs" \
        --chunk "$CHUNK" <"$go" >"$OUT/uploader-$BACKEND.json" 2>"$OUT/logs/uploader-$BACKEND.log" &
    uploader=$!
    exec 3>"$go" # opening the FIFO's write end lets the uploader's open of stdin return
    for _ in $(seq 1 100); do grep -q '^ready' "$OUT/logs/uploader-$BACKEND.log" && break; sleep 0.1; done
    flag="$OUT/sampling-$BACKEND"; touch "$flag"
    sample_rss "$SERVER_PID" "$OUT/rss-$BACKEND.txt" "$flag" &
    sampler=$!
    chat_run "chat-$BACKEND-uploads" &
    chat=$!
    sleep "$UPLOAD_DELAY" # the chat is connected and steady before the uploads start
    rss_before="$(awk '/^VmRSS/ {print $2}' "/proc/$SERVER_PID/status")"
    scrape "$OUT/metrics-$BACKEND-uploads-0.txt"
    # CONTROL=1: the uploader is told to skip and exits without uploading. (Closing the FIFO
    # would not do: the chat and the sampler, started after it was opened, hold fd 3 too.)
    if [[ "${CONTROL:-0}" == 1 ]]; then echo skip >&3; else echo go >&3; fi
    exec 3>&-
    uploader_rc=0
    wait "$uploader" || uploader_rc=$?
    scrape "$OUT/metrics-$BACKEND-uploads-1.txt"
    rss_after="$(awk '/^VmRSS/ {print $2}' "/proc/$SERVER_PID/status")"
    chat_rc=0
    wait "$chat" || chat_rc=$?
    # Parsed only now: a python start while the chat still runs is the kind of stall this avoids.
    failed="$(json "['failed']" <"$OUT/uploader-$BACKEND.json" 2>/dev/null || echo "$CLIENTS")"
    [[ "$uploader_rc" == 0 || "$failed" != 0 ]] || failed="$CLIENTS"
    read -r t0 t1 < <(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['t0'], r['t1'])" \
        "$OUT/uploader-$BACKEND.json" 2>/dev/null || echo "0 1")
    rm -f "$flag"; wait "$sampler" || true
    peak="$(awk 'BEGIN {m = 0} {if ($2 > m) m = $2} END {print m}' "$OUT/rss-$BACKEND.txt")"
    upload_mbps="$(mbps "$((SIZE * CLIENTS))" "$t0" "$t1")"
    [[ "${CONTROL:-0}" != 1 ]] || upload_mbps="none(control)"
    row "tern-$BACKEND-concurrent	clients=$CLIENTS	failed_uploads=$failed	aggregate_upload_MBps=$upload_mbps	rss_before_kib=$rss_before	rss_after_uploads_kib=$rss_after	rss_peak_kib=$peak	chat_p99_alone_ms=$(p99_of "$OUT/chat-$BACKEND-alone.json")	chat_p99_uploads_ms=$(p99_of "$OUT/chat-$BACKEND-uploads.json")	chat_rc=$chat_rc"
    row "tern-$BACKEND-commit-alone	$(commit_of "$OUT/metrics-$BACKEND-alone-0.txt" "$OUT/metrics-$BACKEND-alone-1.txt")"
    row "tern-$BACKEND-commit-uploads	$(commit_of "$OUT/metrics-$BACKEND-uploads-0.txt" "$OUT/metrics-$BACKEND-uploads-1.txt")"
    stop_server
done
log "results: $OUT/results.tsv"
