#!/usr/bin/env bash
# Install Debian's docker-registry (Docker distribution) for tests/test_promote.py, which runs two of them
# on 127.0.0.1 as plain processes. Idempotent: when the binary is there it does nothing.
set -euo pipefail

if [ -x /usr/bin/docker-registry ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-registry: /usr/bin/docker-registry is missing; install Debian's 'docker-registry' package as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "ensure-registry: installing docker-registry from Debian"
# The package's own service is not wanted on a test machine: policy-rc.d keeps it from starting.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
# Try the cached package lists first; refresh them only if that fails (a new machine has none).
apt-get install -y -q --no-install-recommends docker-registry >/dev/null 2>&1 ||
  { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends docker-registry >/dev/null; }
/usr/bin/docker-registry --version
