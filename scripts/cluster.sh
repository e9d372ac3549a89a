#!/usr/bin/env bash
# Builds skiff and runs a one-node cluster in the foreground. Ctrl-C stops it; the data
# (certificates, kubeconfig, objects) stays in $SKIFF_DATA_DIR for the next start.
set -euo pipefail
cd "$(dirname "$0")/.."
export SKIFF_DATA_DIR="${SKIFF_DATA_DIR:-/var/lib/skiff}"
# libcontainer's seccomp support builds against libseccomp.
if ! dpkg -s libseccomp-dev >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y libseccomp-dev pkg-config || { apt-get update && apt-get install -y libseccomp-dev pkg-config; }
fi
cargo build --locked --release -p skiff
echo "skiff: once it says ready, run: export KUBECONFIG=$SKIFF_DATA_DIR/kubeconfig.yaml" >&2
exec target/release/skiff server "$@"
