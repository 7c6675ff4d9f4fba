#!/usr/bin/env bash
# The web app's checks: build (wasm facade, Vite, transfer-size budget), lint, typecheck, format,
# then the Chromium end-to-end tests against the real `tern` binary serving the built app.
# Installs what it needs on a fresh machine: Debian's chromium and libnss3-tools (certutil) as
# root when missing, the npm packages from the lockfile. Bounded: Playwright's global timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v certutil >/dev/null || need+=(libnss3-tools)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "missing ${need[*]}: apt-get install -y ${need[*]} (as root)" >&2
    exit 2
  fi
fi

bash scripts/build-web.sh
# tern-cli: the native client some specs run beside the pages (tests/e2e/cli.ts).
cargo build --locked -p tern-gateway -p tern-cli --bin tern --bin tern-cli
cd clients/web
npm run --silent lint
npm run --silent typecheck
npm run --silent format:check
TERN_BIN="$CARGO_TARGET_DIR/debug/tern" timeout 2400 npx playwright test
