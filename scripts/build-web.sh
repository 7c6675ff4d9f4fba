#!/usr/bin/env bash
# Builds the web app into clients/web/dist: the wasm facade (clients/core-wasm/build.sh, release
# unless --dev) and the search index's module (clients/search-wasm/build.sh, loaded only by the
# search worker), `npm ci`, typecheck, `vite build` (hashed assets), then .gz siblings and the
# transfer-size report, which fails above the budget (clients/web/scripts/postbuild.mjs).
#   bash scripts/build-web.sh [--dev]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
mode=--release
[ "${1:-}" = "--dev" ] && mode=""

web=clients/web
if [ "${TERN_WEB_SKIP_WASM:-0}" != 1 ]; then
  if [ ! -x clients/core-wasm/build.sh ] && [ ! -f clients/core-wasm/build.sh ]; then
    echo "clients/core-wasm/build.sh missing: the wasm facade is needed" >&2
    exit 2
  fi
  bash scripts/wasm-tools.sh
  bash clients/core-wasm/build.sh "$web/wasm" $mode
  bash clients/search-wasm/build.sh "$web/wasm/search" $mode
fi
cd "$web"
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npx tsc --noEmit -p tsconfig.json
npx vite build
node scripts/postbuild.mjs
