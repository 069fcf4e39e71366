#!/usr/bin/env bash
# Install one Debian package a test needs on this machine, when its binary is missing:
#   scripts/ensure-package.sh chromium /usr/bin/chromium             (the console's browser test)
#   scripts/ensure-package.sh docker-registry /usr/bin/docker-registry (tests/test_promote.py)
# Idempotent: when the binary is there it does nothing and takes milliseconds. The package's own services
# are not started (policy-rc.d): a test runs what it needs as plain processes.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 <debian-package> <binary-it-installs>" >&2
  exit 2
fi
package=$1
binary=$2
if [ -x "$binary" ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-package: $binary is missing; install Debian's '$package' package as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "ensure-package: installing $package from Debian"
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
# Try the cached package lists first; refresh them only if that fails (a new machine has none).
apt-get install -y -q "$package" >/dev/null 2>&1 ||
  { apt-get update -q >/dev/null && apt-get install -y -q "$package" >/dev/null; }
if [ ! -x "$binary" ]; then
  echo "ensure-package: installing $package did not give $binary" >&2
  exit 1
fi
"$binary" --version
