#!/usr/bin/env bash
# Storage tests: an S3 API server (moto, pinned) that the s3 and minio
# backend tests start on 127.0.0.1. Idempotent: installs only what is
# missing. moto goes into its own virtual environment under /opt (Debian's
# Python refuses system-wide pip installs); the tests look for
# `moto_server` on PATH, then in that environment.
set -euo pipefail

MOTO_VERSION=5.2.1
VENV=/opt/modmesh-venv

have_moto() {
  if command -v moto_server >/dev/null 2>&1; then return 0; fi
  [ -x "$VENV/bin/moto_server" ] && "$VENV/bin/python" -c "import moto" 2>/dev/null
}

if have_moto; then
  echo "storage deps: moto_server present"
  exit 0
fi

if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c "import ensurepip" 2>/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-venv
fi
$SUDO python3 -m venv "$VENV"
$SUDO "$VENV/bin/pip" install -q "moto[server]==$MOTO_VERSION"
"$VENV/bin/moto_server" --help >/dev/null
echo "storage deps: moto $MOTO_VERSION installed in $VENV"
