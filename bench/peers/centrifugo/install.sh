#!/usr/bin/env bash
# Installs the Centrifugo server used by the peer comparison into bench/peers/.bin/ (gitignored),
# built from its Go module at a pinned version. Skips the build when that version is already
# there. Needs Go (1.24+) and the Go module proxy; no prebuilt binary is downloaded.
#
# Note: `go install` builds without the release ldflags, so `centrifugo version` prints 0.0.0
# and the server logs a "development build" warning; the code is exactly the tagged module.
set -euo pipefail

VERSION="${CENTRIFUGO_VERSION:-v6.9.1}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_dir="$(cd "$here/.." && pwd)/.bin"
stamp="$bin_dir/centrifugo.version"

if [[ -x "$bin_dir/centrifugo" && -f "$stamp" && "$(cat "$stamp")" == "$VERSION" ]]; then
    echo "centrifugo $VERSION already installed in $bin_dir"
    exit 0
fi
if ! command -v go >/dev/null 2>&1; then
    echo "install.sh: Go is required (go install github.com/centrifugal/centrifugo/v6@$VERSION)" >&2
    exit 1
fi
mkdir -p "$bin_dir"
echo "building centrifugo $VERSION with $(go version) (takes a few minutes the first time)"
GOBIN="$bin_dir" go install "github.com/centrifugal/centrifugo/v6@$VERSION"
echo "$VERSION" >"$stamp"
echo "installed $bin_dir/centrifugo"
