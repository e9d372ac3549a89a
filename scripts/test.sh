#!/usr/bin/env bash
# Runs every test skiff has, after installing what the tests need. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

# The official Python client, for the client-compatibility tests.
if ! python3 -c 'import kubernetes' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check 'kubernetes>=31'
fi
# Debian packages the build and the tests use:
# - libseccomp-dev: libcontainer's seccomp support links libseccomp (without it a seccomp
#   profile would be silently ignored);
# - docker-registry: a real OCI registry (the CNCF distribution) the tests start on
#   127.0.0.1 and push plugin components and images to;
# - busybox-static, umoci, skopeo: the tests build a small busybox image and push it.
packages=(libseccomp-dev pkg-config docker-registry busybox-static umoci skopeo)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y "${missing[@]}" || { apt-get update && apt-get install -y "${missing[@]}"; }
fi
command -v kubectl >/dev/null || { echo "kubectl (v1.32) is required at /usr/bin/kubectl" >&2; exit 1; }

# The plugins (default, example and test components) are built to wasm32-wasip2, in release
# so they are small; the plugin host's tests and the end-to-end tests load them.
rustup target add wasm32-wasip2
# From inside plugins/, so its .cargo/config.toml (target wasm32-wasip2, shared target/) applies.
(cd plugins && cargo build --locked --release)

# The end-to-end tests drive the real binary.
cargo build --locked -p skiff
cargo test --locked --workspace "$@"

# A full run also runs the node agent's end-to-end tests on a pure cgroup v2 host (a qemu
# guest booted with cgroup_no_v1=all): these machines have v1 hierarchies.
if [ $# -eq 0 ]; then
    # The end-to-end test binary just built (same features, so nothing is rebuilt).
    binary=$(cargo test --locked --workspace --no-run --message-format=json 2>/dev/null \
        | grep '"name":"all"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
    ./scripts/v2-host.sh "$binary"
fi
