#!/usr/bin/env bash
# Makes the one certificate every server in the peer comparison uses (Tern, Socket.IO, Centrifugo),
# so that all three pay for the same TLS handshake and record layer: a self-signed ECDSA P-256
# leaf for 127.0.0.1 and localhost, valid 14 days (WebTransport certificate-hash pinning accepts
# at most 14 days). It is an end-entity certificate (CA:FALSE): rustls/webpki refuses a CA
# certificate used as a server certificate, and the loadgen trusts this leaf directly, either as
# a root via --ca-file cert.pem or pinned via --cert-hash (printed, and written to cert.sha256).
#
# Usage: bench/peers/tls.sh OUT_DIR      -> OUT_DIR/cert.pem, OUT_DIR/key.pem, OUT_DIR/cert.sha256
# Reuses an existing pair that is still valid for at least one more day.
set -euo pipefail

out="${1:?usage: tls.sh OUT_DIR}"
mkdir -p "$out"
cert="$out/cert.pem"
key="$out/key.pem"

if ! command -v openssl >/dev/null 2>&1; then
    echo "tls.sh: installing openssl" >&2
    apt-get update -qq && apt-get install -y -qq openssl >/dev/null
fi

if [[ -s "$cert" && -s "$key" ]] && openssl x509 -in "$cert" -noout -checkend 86400 >/dev/null 2>&1; then
    : # still valid: keep it, so repeated runs pin the same hash
else
    conf="$(mktemp)"
    trap 'rm -f "$conf"' EXIT
    cat >"$conf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = leaf
[dn]
CN = localhost
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
EOF
    openssl req -x509 -new -config "$conf" \
        -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$key" -out "$cert" -days 14 2>/dev/null
    chmod 600 "$key"
fi

hash="$(openssl x509 -in "$cert" -outform DER | sha256sum | cut -d' ' -f1)"
echo "$hash" >"$out/cert.sha256"
echo "$hash"
