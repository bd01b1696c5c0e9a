#!/usr/bin/env bash
# Cloud storage backends' and lock drivers' real servers: fake-gcs-server
# (GCS JSON API, for the gcp backend and lock driver) built with the Go
# toolchain, and Azurite (Azure Blob API, for the azureblob backend and lock
# driver) from npm. Idempotent: installs only what is missing, pinned.
set -euo pipefail

FAKE_GCS_VERSION=v1.56.1
AZURITE_VERSION=3.37.0

if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
BIN=/usr/local/bin

# openssl makes the throwaway service-account key the gcp tests sign with.
if ! command -v openssl >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends openssl
fi

if ! command -v fake-gcs-server >/dev/null 2>&1; then
  command -v go >/dev/null 2>&1 || {
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends golang-go
  }
  echo "installing fake-gcs-server $FAKE_GCS_VERSION"
  tmp=$(mktemp -d)
  GOBIN="$tmp" go install "github.com/fsouza/fake-gcs-server@$FAKE_GCS_VERSION"
  $SUDO install -m 0755 "$tmp/fake-gcs-server" "$BIN/fake-gcs-server"
  rm -rf "$tmp"
fi

if ! command -v azurite-blob >/dev/null 2>&1; then
  command -v npm >/dev/null 2>&1 || {
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
  }
  echo "installing azurite $AZURITE_VERSION"
  $SUDO npm install -g --no-audit --no-fund "azurite@$AZURITE_VERSION"
fi

command -v fake-gcs-server
command -v azurite-blob
