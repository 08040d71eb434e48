#!/usr/bin/env bash
# The whole test suite: unit tests, then the real binary over stdio with the official Python
# MCP client against real kernel events. Run as root (the tests load eBPF programs).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
target=${CARGO_TARGET_DIR:-$PWD/target}

cargo build --release --locked -p bpfsight
cargo test --release --locked --workspace
BPFSIGHT_BIN="$target/release/bpfsight" .venv/bin/python -m pytest tests -q -p no:cacheprovider "$@"
