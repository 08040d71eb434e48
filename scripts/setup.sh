#!/usr/bin/env bash
# Installs everything bpfsight's build, tests and benchmarks need on a fresh Debian machine.
# Idempotent: every step checks before it installs. Run as root (the tests load eBPF).
#
#   scripts/setup.sh            # system packages + Python test venv
#   scripts/setup.sh --bpf      # also the nightly toolchain pieces to rebuild the BPF object
#   scripts/setup.sh --fuzz     # also cargo-fuzz (the fuzz target builds with nightly)
set -euo pipefail
cd "$(dirname "$0")/.."

want_bpf=0
want_fuzz=0
for a in "$@"; do
  [ "$a" = "--bpf" ] && want_bpf=1
  [ "$a" = "--fuzz" ] && want_fuzz=1
done

log() { printf '[setup] %s\n' "$*" >&2; }

# --- system packages: nftables for fault injection, iproute2 for netns/veth -------------------
need_pkgs=()
command -v nft >/dev/null 2>&1 || need_pkgs+=(nftables)
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "apt: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null || apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# --- kernel filesystems the collector and tests use -------------------------------------------
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true

# --- Python venv with the official MCP SDK (pinned) for the integration tests -----------------
VENV=${BPFSIGHT_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ] || ! cmp -s tests/requirements.txt "$VENV/.requirements" ; then
  log "python venv at $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt
  cp tests/requirements.txt "$VENV/.requirements"
fi

# --- MCP Inspector CLI (npm) with a Node 22 binary for it, for the interoperability tests ---
if [ ! -x tests/inspector/node_modules/.bin/mcp-inspector ] || [ tests/inspector/package-lock.json -nt tests/inspector/node_modules ]; then
  log "npm: MCP Inspector CLI"
  (cd tests/inspector && npm ci --silent --no-audit --no-fund)
fi

# --- optional: toolchain to rebuild bpf/ from source ------------------------------------------
if [ $want_bpf = 1 ]; then
  rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src' \
    || rustup component add rust-src --toolchain nightly
  if ! command -v bpf-linker >/dev/null 2>&1; then
    log "building bpf-linker against the nightly's LLVM (about a minute)"
    S=$(rustc +nightly --print sysroot)
    mkdir -p /tmp/llvm
    ln -sf "$(ls "$S"/lib/libLLVM.so.*-rust-* | head -n1)" /tmp/llvm/libLLVM.so
    RUSTFLAGS="-L /tmp/llvm -C link-arg=-Wl,-rpath,$S/lib" \
      cargo +nightly install --locked bpf-linker --no-default-features --features llvm-22 \
      || RUSTFLAGS="-L /tmp/llvm -C link-arg=-Wl,-rpath,$S/lib" \
      cargo +nightly install bpf-linker --no-default-features --features llvm-22
  fi
fi
if [ $want_fuzz = 1 ] && ! command -v cargo-fuzz >/dev/null 2>&1; then
  log "building cargo-fuzz (about two minutes)"
  cargo install --locked cargo-fuzz
fi
log "done"
