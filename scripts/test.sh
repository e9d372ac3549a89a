#!/usr/bin/env bash
# Runs every test skiff has, after installing what the tests need. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

# The official Python client, for the client-compatibility tests.
if ! python3 -c 'import kubernetes' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check 'kubernetes>=31'
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
