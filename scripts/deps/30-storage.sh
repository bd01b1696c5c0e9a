#!/usr/bin/env bash
# Storage tests: two S3 API servers (pinned) that the s3 and minio backend
# tests start on 127.0.0.1: moto, and s3s-fs (which checks request
# signatures). Idempotent: installs only what is missing. moto goes into its
# own virtual environment under /opt (Debian's Python refuses system-wide
# pip installs), s3s-fs under /opt/modmesh-s3s (about 3 minutes to build);
# the tests look on PATH first, then there.
set -euo pipefail

MOTO_VERSION=5.2.1
VENV=/opt/modmesh-venv
S3S_VERSION=0.14.1
S3S_ROOT=/opt/modmesh-s3s

if command -v s3s-fs >/dev/null 2>&1 || [ -x "$S3S_ROOT/bin/s3s-fs" ]; then
  echo "storage deps: s3s-fs present"
else
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO mkdir -p "$S3S_ROOT"
  $SUDO "$(command -v cargo)" install "s3s-fs@$S3S_VERSION" --features binary --locked --root "$S3S_ROOT"
  echo "storage deps: s3s-fs $S3S_VERSION installed in $S3S_ROOT"
fi

have_moto() {
  if command -v moto_server >/dev/null 2>&1; then return 0; fi
  [ -x "$VENV/bin/moto_server" ] && "$VENV/bin/python" -c "import moto" 2>/dev/null
}

if have_moto; then
  echo "storage deps: moto_server present"
  exit 0
fi

if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
# Debian ships venv (with pip) separately from python3.
probe=$(mktemp -d)
if ! command -v python3 >/dev/null 2>&1 || ! python3 -m venv "$probe/v" >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-venv
fi
rm -rf "$probe"
$SUDO rm -rf "$VENV"
$SUDO python3 -m venv "$VENV"
$SUDO "$VENV/bin/pip" install -q "moto[server]==$MOTO_VERSION"
"$VENV/bin/moto_server" --help >/dev/null
echo "storage deps: moto $MOTO_VERSION installed in $VENV"
