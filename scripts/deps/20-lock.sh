#!/usr/bin/env bash
# Lock drivers' real servers: redis-server and redis-sentinel (redis and
# redis-sentinel drivers), etcd (etcd driver, a three-member cluster on
# loopback), and protoc (etcd-client's build script compiles etcd's protos).
# Idempotent: installs only what is missing.
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
# etcd-client's protos import google/protobuf/*.proto, which protoc finds here.
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  echo "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
redis-server --version
etcd --version | sed -n 1p
protoc --version
