#!/usr/bin/env bash
# Create .venv from the pins. A second run with unchanged pins does nothing and takes well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
python=${PYTHON:-python3}
stamp="$venv/.fleetdeploy-pins"
want=$(cat requirements.txt constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1)-$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/ansible-playbook" ]; then
  echo "venv: .venv matches the pins"
  exit 0
fi

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "venv: fleetdeploy needs Python 3.11 or newer; $("$python" --version) found" >&2
  exit 1
fi
if ! "$python" -m venv --help >/dev/null 2>&1 || ! "$python" -c 'import ensurepip' >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
  else
    echo "venv: Python's venv module is missing: install python3-venv" >&2
    exit 1
  fi
fi

echo "venv: installing the pinned toolchain into .venv"
[ -d "$venv" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r requirements.txt -c constraints.txt
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps -e .
echo "$want" > "$stamp"
echo "venv: ready"
