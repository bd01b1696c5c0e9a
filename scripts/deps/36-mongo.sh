#!/usr/bin/env bash
# Mongo-wire servers for the mongo backend's tests, pinned:
#   - FerretDB v1.24.2 (SQLite handler), built from its Go module into
#     $FERRETDB_DIR (default /usr/local/bin, or ~/.local/bin when not root);
#   - secantusdb 0.7.0b3 from PyPI (`secantusd-py`);
#   - openssl, for the TLS test's certificates;
#   - Athens v0.18.0's proxy (`athens-proxy`, built from its Go module into
#     the same directory as FerretDB), the peer that reads our Mongo
#     database and uses our external-storage server in the tests.
# Idempotent: each is checked first and installed only when missing.
set -euo pipefail

FERRETDB_VERSION=v1.24.2
SECANTUS_VERSION=0.7.0b3
ATHENS_VERSION=v0.18.0

if [ "$(id -u)" = 0 ]; then
  BIN_DIR=${FERRETDB_DIR:-/usr/local/bin}
else
  BIN_DIR=${FERRETDB_DIR:-$HOME/.local/bin}
fi
mkdir -p "$BIN_DIR"

# --- FerretDB -----------------------------------------------------------------
if [ -x "$BIN_DIR/ferretdb" ] && "$BIN_DIR/ferretdb" --version 2>/dev/null | grep "$FERRETDB_VERSION" >/dev/null; then
  echo "ferretdb $FERRETDB_VERSION: present ($BIN_DIR/ferretdb)"
else
  echo "ferretdb $FERRETDB_VERSION: building"
  mod_dir=$(go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$mod_dir" ] && [ -d "$mod_dir" ] || { echo "go mod download gave no Dir" >&2; exit 1; }
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cp -r "$mod_dir" "$work/src"
  chmod -R u+w "$work/src"
  # The module ships without the version file its build embeds.
  mkdir -p "$work/src/build/version"
  printf '%s' "$FERRETDB_VERSION" > "$work/src/build/version/version.txt"
  (cd "$work/src" && GOFLAGS=-mod=mod go build -o "$BIN_DIR/ferretdb" ./cmd/ferretdb)
  "$BIN_DIR/ferretdb" --version | sed -n 1,3p
fi

# --- secantusdb ---------------------------------------------------------------
if command -v secantusd-py >/dev/null 2>&1 && python3 -m pip show secantusdb 2>/dev/null | grep "^Version: $SECANTUS_VERSION\$" >/dev/null; then
  echo "secantusdb $SECANTUS_VERSION: present"
else
  echo "secantusdb $SECANTUS_VERSION: installing"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-pip
  fi
  python3 -m pip install -q "secantusdb==$SECANTUS_VERSION" \
    || python3 -m pip install -q --break-system-packages "secantusdb==$SECANTUS_VERSION"
  command -v secantusd-py >/dev/null 2>&1 || echo "warning: secantusd-py is not on PATH" >&2
fi

# --- openssl (the TLS test makes its certificates with it) ----------------------
if ! command -v openssl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openssl
fi

# --- Athens (the peer) ----------------------------------------------------------
if [ -x "$BIN_DIR/athens-proxy" ] && [ "$(cat "$BIN_DIR/athens-proxy.version" 2>/dev/null)" = "$ATHENS_VERSION" ]; then
  echo "athens $ATHENS_VERSION: present ($BIN_DIR/athens-proxy)"
else
  echo "athens $ATHENS_VERSION: building"
  athens_dir=$(go mod download -json "github.com/gomods/athens@$ATHENS_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$athens_dir" ] && [ -d "$athens_dir" ] || { echo "go mod download gave no Dir for athens" >&2; exit 1; }
  (cd "$athens_dir" && go build -o "$BIN_DIR/athens-proxy" ./cmd/proxy)
  printf '%s' "$ATHENS_VERSION" > "$BIN_DIR/athens-proxy.version"
fi
