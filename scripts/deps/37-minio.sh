#!/usr/bin/env bash
# The MinIO server, the real server of the `minio` storage type's tests
# (compliance suite and the object-store e2e suite). MinIO publishes no
# semantic-version tags, so it is pinned to a pseudo-version the Go module
# proxy serves and built with `go install` (about 5 minutes on 2 cores).
# Idempotent: does nothing when that version is already installed.
set -euo pipefail

MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c

if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
BIN=/usr/local/bin

if [ -x "$BIN/minio" ] && [ "$(cat "$BIN/minio.version" 2>/dev/null)" = "$MINIO_VERSION" ]; then
  echo "minio $MINIO_VERSION: present ($BIN/minio)"
  exit 0
fi

command -v go >/dev/null 2>&1 || {
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends golang-go
}
echo "minio $MINIO_VERSION: building"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
GOBIN="$tmp" go install "github.com/minio/minio@$MINIO_VERSION"
$SUDO install -m 0755 "$tmp/minio" "$BIN/minio"
printf '%s' "$MINIO_VERSION" | $SUDO tee "$BIN/minio.version" >/dev/null
echo "minio $MINIO_VERSION: installed in $BIN"
