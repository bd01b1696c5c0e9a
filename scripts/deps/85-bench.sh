#!/usr/bin/env bash
# The benchmark harness's reference servers and load generator (tests/src/bin/bench.rs):
#   - nginx (Debian's nginx-light), started by the harness on a loopback port
#     with a generated config; the package's own service is kept from starting;
#   - wrk, the load generator (the harness falls back to its own when missing);
#   - Athens v0.18.0 (`athens-proxy`) is built by 36-mongo.sh.
# Idempotent: installs only what is missing.
set -euo pipefail

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  echo "installing Debian packages: ${need[*]}"
  # Keep the package's post-install from starting a system nginx on port 80.
  policy_added=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    policy_added=1
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
  [ -n "$policy_added" ] && $SUDO rm -f /usr/sbin/policy-rc.d
fi
/usr/sbin/nginx -v
command -v wrk >/dev/null && wrk --version 2>&1 | sed -n 1p || true
