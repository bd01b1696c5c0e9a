#!/usr/bin/env bash
# Sets up everything the tests need on a fresh machine (idempotently), then
# runs the checks and the whole test suite: formatting, clippy, unit tests,
# each backend's compliance suite, and the end-to-end suite with the real go
# command as client.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# --- prerequisites -----------------------------------------------------------
need_apt=()
command -v go >/dev/null 2>&1 || need_apt+=(golang-go)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v pkill >/dev/null 2>&1 || need_apt+=(procps)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (https://rustup.rs); this project builds with stable Rust" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
log "toolchain: $(cargo --version), $(go version)"

# Real servers and tools the tests start (one script per area, each
# idempotent: it installs only what is missing, into a pinned version).
for dep in scripts/deps/*.sh; do
  [ -e "$dep" ] || continue
  log "dependencies: $dep"
  bash "$dep"
done


# --- checks ------------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo machete (no unused dependencies)"
cargo machete

# --- tests -------------------------------------------------------------------
log "building the four binaries"
cargo build --workspace --bins --locked

log "cargo test"
cargo test --workspace --locked -- --test-threads="${TEST_THREADS:-2}"
