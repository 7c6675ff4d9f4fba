#!/usr/bin/env bash
# Starts Centrifugo for the benchmark: bench/peers/centrifugo/config.json (insecure client mode,
# client publish, memory engine, no history or recovery, WebSocket only) with the given TLS
# certificate, on 127.0.0.1:PORT. The process replaces this shell (exec), so the PID of this
# script is Centrifugo's PID (what --server-pid wants).
#
# Usage: bench/peers/centrifugo/run.sh PORT CERT.pem KEY.pem
# Ready when `curl --cacert CERT.pem https://127.0.0.1:PORT/health` answers.
set -euo pipefail

port="${1:?usage: run.sh PORT CERT.pem KEY.pem}"
cert="$(realpath "${2:?usage: run.sh PORT CERT.pem KEY.pem}")"
key="$(realpath "${3:?usage: run.sh PORT CERT.pem KEY.pem}")"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$here/../.bin/centrifugo"
[[ -x "$bin" ]] || { echo "run.sh: $bin missing; run bench/peers/centrifugo/install.sh" >&2; exit 1; }

# Settings from the environment override the config file (Centrifugo v6 CENTRIFUGO_<PATH>).
export CENTRIFUGO_HTTP_SERVER_PORT="$port"
export CENTRIFUGO_HTTP_SERVER_TLS_CERT_PEM="$cert"
export CENTRIFUGO_HTTP_SERVER_TLS_KEY_PEM="$key"
exec "$bin" --config "$here/config.json"
