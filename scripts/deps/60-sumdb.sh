#!/usr/bin/env bash
# The checksum-database tests: tests/sumdbhelper is a Go program over
# golang.org/x/mod/sumdb, built by the tests with the go command. Fetches
# its module (pinned in its go.mod and go.sum) into the module cache from
# the go command's own GOPROXY. Idempotent: `go mod download` does nothing
# when the module is already cached.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
command -v go >/dev/null 2>&1 || { echo "60-sumdb: go is not on PATH" >&2; exit 1; }
cd "$here/tests/sumdbhelper"
GOFLAGS=-mod=mod GOTOOLCHAIN=local go mod download golang.org/x/mod
