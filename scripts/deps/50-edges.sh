#!/usr/bin/env bash
# The gateway's edge tests (module index) start real database servers:
# PostgreSQL and MariaDB from Debian. Installs only what is missing.
set -euo pipefail

if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
missing=()
# PostgreSQL 15 (Debian bookworm): initdb and postgres live under the
# versioned directory, not on PATH.
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v mariadbd >/dev/null 2>&1 || command -v mysqld >/dev/null 2>&1 \
  || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The packages' own services are not used (the tests start their servers on
# loopback ports with temporary data directories); no service is started here.
ls /usr/lib/postgresql/*/bin/postgres
ls /usr/sbin/mariadbd 2>/dev/null || command -v mariadbd
