#!/usr/bin/env bash
# Make sure a Docker engine answers. An engine that already runs is never touched.
# Where none answers on Debian/Ubuntu as root, install Debian's docker.io and start dockerd
# (with systemd when it is PID 1, in the background otherwise: CI has no systemd).
set -euo pipefail

log=${FLEETDEPLOY_DOCKERD_LOG:-/var/log/fleetdeploy-dockerd.log}
wait_seconds=${FLEETDEPLOY_ENGINE_WAIT:-60}

say() { printf 'engine: %s\n' "$*" >&2; }

if docker info >/dev/null 2>&1; then
  say "a Docker engine already answers; leaving it as it is"
  exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "no Docker engine answers and this is not Debian/Ubuntu as root."
    say "Install Docker Engine (https://docs.docker.com/engine/install/) or Debian's docker.io, start it, and run again."
    exit 1
  fi
  say "installing Debian's docker.io"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends docker.io iptables
fi

if [ "$(id -u)" -ne 0 ]; then
  say "dockerd is installed but not running, and starting it needs root: run 'sudo systemctl start docker'."
  exit 1
fi

if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
  say "starting docker.service"
  systemctl start docker
else
  say "no systemd here: starting dockerd in the background (log: $log)"
  # A stale pid file from an engine that died with the machine stops dockerd from starting.
  if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
  fi
  setsid nohup dockerd >>"$log" 2>&1 </dev/null &
fi

for _ in $(seq 1 $((wait_seconds * 2))); do
  if docker info >/dev/null 2>&1; then
    say "engine answers: $(docker version --format 'server {{.Server.Version}}')"
    exit 0
  fi
  sleep 0.5
done
say "dockerd did not answer within ${wait_seconds}s; its log ends with:"
tail -n 20 "$log" >&2 || true
exit 1
