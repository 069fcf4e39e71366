#!/bin/sh
# The recipe of every Python service image (tracking, postcode), written once. A Dockerfile copies
# this script and the build context's extra-ca.crt into /tmp/image/ and runs it a step at a time, so
# that each step stays a layer of its own and Docker's cache keeps the packages while only the
# service's code changes:
#
#   packages <venv>   packages stage: python3-venv and the CAs, then requirements.txt (copied beside
#                     this script) into the virtualenv <venv> (/opt/<service>), checked, pip removed
#   runtime <user>    final stage: python3 if the base lacks it, the CAs, the service's system user
#   compile <folder>  final stage, last: bytecode now (the root filesystem is read-only at run time),
#                     and /tmp/image/ removed
set -eu

here=$(dirname "$0")
step=${1:-}

# Extra CAs (TLS-intercepting proxies) go into every image the project builds.
trust_extra_cas() {
    install -m 0644 "$here/extra-ca.crt" /usr/local/share/ca-certificates/fleetdeploy-extra-ca.crt
}

case "$step" in
packages)
    trust_extra_cas
    apt-get update
    apt-get install -y --no-install-recommends ca-certificates python3 python3-venv
    rm -rf /var/lib/apt/lists/*
    update-ca-certificates
    python3 -m venv "$2"
    # pip reads the system bundle, the extra CAs included.
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$2/bin/pip" install --no-cache-dir -r "$here/requirements.txt"
    "$2/bin/pip" check
    # Nothing is installed at run time: pip and setuptools would only widen the image.
    "$2/bin/pip" uninstall -y -q pip setuptools
    ;;
runtime)
    trust_extra_cas
    if ! command -v python3 >/dev/null; then
        apt-get update
        apt-get install -y --no-install-recommends python3
        rm -rf /var/lib/apt/lists/*
    fi
    # A base without ca-certificates keeps the bundle it has.
    if command -v update-ca-certificates >/dev/null; then update-ca-certificates; fi
    useradd --system --no-create-home --shell /usr/sbin/nologin "$2"
    ;;
compile)
    # The virtualenv's python3 is this one: the same bytecode.
    python3 -m compileall -q "$2"
    rm -rf "$here"
    ;;
*)
    echo "image.sh: no step '$step' (packages <venv>, runtime <user>, compile <folder>)" >&2
    exit 2
    ;;
esac
