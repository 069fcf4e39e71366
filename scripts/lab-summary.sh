#!/usr/bin/env bash
# Print where to look once `make lab` is done.
set -euo pipefail
cd "$(dirname "$0")/.."
inventory=inventories/local/hosts.yml
[ -f "$inventory" ] || { echo "lab: no inventory at $inventory; run 'make lab'" >&2; exit 1; }
cat <<TXT

The lab is up. Hosts (ssh with the lab's key; host keys are checked):
$(grep -E '^        [a-z0-9]+:$|ansible_port' "$inventory" | paste - - | awk '{sub(":","",$1); printf "  %-8s ssh -p %s -i .lab/fleetdeploy/ssh/id_ed25519 -o UserKnownHostsFile=.lab/fleetdeploy/known_hosts admin@127.0.0.1\n", $1, $3}')

  The application:          http://127.0.0.1:8080/ (web, /api/), /tracking/, /postcode/search?place=Berlin
  Sign in as:               demo / $(cat .lab/fleetdeploy/secrets/web_demo_password 2>/dev/null || echo '(not created yet)')
  Sample parcels:           http://127.0.0.1:8080/parcels/LAB0000001 (LAB0000002, LAB0000003)
  Load balancer (HAProxy):  http://127.0.0.1:8080/   https://127.0.0.1:8443/
  HAProxy stats/metrics:    lb:8404 inside the lab network
  Prometheus:               http://127.0.0.1:9090/
  Alertmanager:             http://127.0.0.1:9093/
  Registry:                 https://127.0.0.1:5443/v2/

Next: 'ansible-playbook deploy.yml -e release=<tag>', 'make lab-destroy' to remove it all.
TXT
