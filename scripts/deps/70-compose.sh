#!/usr/bin/env bash
# Compose test (tests/ops.rs, module compose): podman, podman-compose, runc
# and debootstrap from Debian 12 (podman 4.3, podman-compose 1.0.3), used as
# root without a daemon; the test writes its own containers.conf and
# storage.conf under a work folder and touches nothing in /etc. Idempotent:
# installs only what is missing.
set -euo pipefail

need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v podman-compose >/dev/null 2>&1 || need+=(podman-compose)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
# Rootless podman (a non-root runner) needs these; harmless as root.
command -v newuidmap >/dev/null 2>&1 || need+=(uidmap)
command -v slirp4netns >/dev/null 2>&1 || need+=(slirp4netns)
command -v update-ca-certificates >/dev/null 2>&1 || need+=(ca-certificates)
# Networks with service-name DNS (netavark, aardvark-dns), `init: true`
# (catatonit), overlay storage: Debian ships them as recommendations.
for pkg in netavark aardvark-dns catatonit fuse-overlayfs; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done

if [ ${#need[@]} -eq 0 ]; then
  echo "compose deps: podman, podman-compose, runc, debootstrap present"
  exit 0
fi
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
echo "compose deps: installed ${need[*]}"
