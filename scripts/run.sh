#!/usr/bin/env bash
# Builds and runs the proxy as one process (the embedded default: storage,
# locks and fetcher in the gateway). Configuration as Athens: -config_file
# <path>, ./athens.toml, and ATHENS_* environment overrides. Extra arguments
# are passed to the gateway.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v go >/dev/null 2>&1 || need+=(golang-go)
# The etcd lock driver's client compiles etcd's protos at build time.
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
exec cargo run --release --locked -p modmesh-gateway --bin gateway -- "$@"
