#!/usr/bin/env bash
# Install everything ssp needs to build and test on a fresh Debian 12 machine.
# Idempotent: safe to run again. Needs root (or sudo) for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# Debian packages: a C toolchain for crates with build scripts, and the NBD/QEMU tools the
# interoperability tests and the demo use.
APT_PACKAGES=(build-essential pkg-config ca-certificates qemu-utils libnbd-bin python3-libnbd)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# Rust toolchain (stable) with rustfmt and clippy.
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: install Rust stable with rustup first" >&2
  exit 1
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

# Crates.
cargo fetch --locked
