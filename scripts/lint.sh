#!/usr/bin/env bash
# yamllint, a syntax check of every playbook, then ansible-lint with the production profile.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"

echo "lint: yamllint"
yamllint --strict .

echo "lint: ansible-playbook --syntax-check"
for playbook in ./*.yml playbooks/*.yml playbooks/aws/*.yml; do
  case "$playbook" in ./requirements.yml) continue ;; esac
  ansible-playbook --syntax-check "$playbook" >/dev/null
done

echo "lint: ansible-lint (profile production)"
ansible-lint --offline
