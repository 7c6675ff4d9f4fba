#!/usr/bin/env bash
# A local S3-compatible server for the file-storage tests (issue 13): s3s-fs, which keeps each
# bucket as a directory and each object as a file under DIR/data.
#
#   eval "$(bash scripts/s3-server.sh start DIR)"   # installs s3s-fs if missing, starts it on a
#                                                    # free loopback port, prints export lines
#   bash scripts/s3-server.sh stop DIR               # stops the server started in DIR
#
# Printed on stdout (everything else goes to stderr):
#   TERN_TEST_S3 (endpoint URL), TERN_TEST_S3_ACCESS_KEY, TERN_TEST_S3_SECRET_KEY,
#   TERN_TEST_S3_BUCKET (created), TERN_TEST_S3_DIR (the bucket's directory, to scan).
# Environment: S3S_PROFILE (release, the default, for measurements such as bench/run-files.sh's
# curl floor; debug for the tests: it builds in half the time and their 10 MB files run as fast
# either way), ROOT (install root, default target/tools/s3s or target/tools/s3s-debug),
# S3S_VERSION (0.14.1: 0.17 needs a newer rustc), TERN_TEST_S3_BUCKET (default tern-test).
set -euo pipefail

cmd="${1:-}"
dir="${2:-}"
if [[ -z "$cmd" || -z "$dir" ]]; then
  echo "usage: $0 start|stop DIR" >&2
  exit 2
fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
profile="${S3S_PROFILE:-release}"
case "$profile" in
  release) profile_flag=(); default_root="$repo/target/tools/s3s" ;;
  debug) profile_flag=(--debug); default_root="$repo/target/tools/s3s-debug" ;;
  *) echo "S3S_PROFILE must be release or debug, not $profile" >&2; exit 2 ;;
esac
ROOT="${ROOT:-$default_root}"
S3S_VERSION="${S3S_VERSION:-0.14.1}"
bucket="${TERN_TEST_S3_BUCKET:-tern-test}"
access_key="ternaccess"
secret_key="ternsecret123"
bin="$ROOT/bin/s3s-fs"

alive() { [[ -f "$dir/pid" ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; }

exports() {
  local port
  port="$(cat "$dir/port")"
  echo "export TERN_TEST_S3=http://127.0.0.1:$port"
  echo "export TERN_TEST_S3_ACCESS_KEY=$access_key"
  echo "export TERN_TEST_S3_SECRET_KEY=$secret_key"
  echo "export TERN_TEST_S3_BUCKET=$bucket"
  echo "export TERN_TEST_S3_DIR=$(cd "$dir/data/$bucket" && pwd)"
}

case "$cmd" in
  start)
    mkdir -p "$dir/data/$bucket"
    if alive; then
      exports
      exit 0
    fi
    if [[ ! -x "$bin" ]]; then
      echo "installing s3s-fs $S3S_VERSION ($profile build) into $ROOT..." >&2
      # Its own build directory: the workspace's target dir is not for installed tools.
      env -u CARGO_TARGET_DIR cargo install "s3s-fs@$S3S_VERSION" --features binary --locked \
        "${profile_flag[@]}" --root "$ROOT" >&2
    fi
    # A free loopback port (the kernel picks it; the tiny race with another process is retried).
    for _ in 1 2 3 4 5; do
      port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
      "$bin" --host 127.0.0.1 --port "$port" --access-key "$access_key" \
        --secret-key "$secret_key" "$dir/data" >"$dir/s3s.log" 2>&1 &
      echo $! >"$dir/pid"
      echo "$port" >"$dir/port"
      for _ in $(seq 1 100); do
        if ! alive; then break; fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
          echo "s3s-fs ready on 127.0.0.1:$port (pid $(cat "$dir/pid"), data $dir/data)" >&2
          exports
          exit 0
        fi
        sleep 0.1
      done
      if alive; then kill "$(cat "$dir/pid")" || true; fi
      rm -f "$dir/pid"
    done
    echo "s3s-fs did not start; its log:" >&2
    cat "$dir/s3s.log" >&2 || true
    exit 1
    ;;
  stop)
    if alive; then
      kill "$(cat "$dir/pid")"
      echo "s3s-fs stopped" >&2
    fi
    rm -f "$dir/pid"
    ;;
  *)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
