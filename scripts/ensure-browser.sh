#!/usr/bin/env bash
# Install Debian's Chromium for the console's browser test (Playwright drives it; no browser download).
# Idempotent: when /usr/bin/chromium is there it does nothing and takes milliseconds.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-browser: /usr/bin/chromium is missing; install Debian's 'chromium' package as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "ensure-browser: installing chromium from Debian"
# Try the cached package lists first; refresh them only if that fails (a new machine has none).
apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
/usr/bin/chromium --version
