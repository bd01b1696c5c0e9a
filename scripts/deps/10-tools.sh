#!/usr/bin/env bash
# Tools the checks use: cargo-machete finds dependencies no code uses.
set -euo pipefail
MACHETE_VERSION=0.9.1
if ! cargo machete --version 2>/dev/null | grep "$MACHETE_VERSION" >/dev/null; then
  cargo install cargo-machete --version "$MACHETE_VERSION" --locked
fi
