#!/usr/bin/env bash
# Install everything ssp needs to build and test on a fresh Debian 12 machine.
# Idempotent: safe to run again. Needs root (or sudo) for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# Debian packages: a C toolchain for crates with build scripts, and the NBD/QEMU tools the
# interoperability tests and the demo use; e2fsprogs and xorriso build and check the guest
# tests' disks (mkfs.ext4 -d, e2fsck, debugfs; an ISO 9660 config disk); systemd gives
# systemd-socket-activate and systemd-analyze (tests/ops_systemd.rs).
APT_PACKAGES=(build-essential pkg-config ca-certificates qemu-utils libnbd-bin python3-libnbd
  e2fsprogs xorriso systemd)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# QEMU system emulators for the guest tests (tests/guests.rs, scripts/guests/): a ppc64 pseries
# guest (qemu-system-ppc provides qemu-system-ppc64; SLOF and VOF come with qemu-system-data) and
# an x86_64 guest running the kernel's NBD client (SeaBIOS and iPXE's NIC option ROMs). They come
# from bookworm-backports, to match qemu-utils 10.x (the machine's qemu-img is a backport).
BPO_PACKAGES=(qemu-system-ppc qemu-system-x86 qemu-system-data)
FW_PACKAGES=(seabios ipxe-qemu)
BPO_SOURCES=/etc/apt/sources.list.d/bookworm-backports.sources
bpo_missing=()
for p in "${BPO_PACKAGES[@]}"; do
  v=$(dpkg-query -W -f='${Status} ${Version}' "$p" 2>/dev/null || true)
  case "$v" in "install ok installed"*bpo*) ;; *) bpo_missing+=("$p") ;; esac
done
for p in "${FW_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || bpo_missing+=("$p")
done
if [ ${#bpo_missing[@]} -gt 0 ]; then
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "adding bookworm-backports to the apt sources ($BPO_SOURCES)"
    printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' 'Suites: bookworm-backports' \
      'Components: main' 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' |
      $SUDO tee "$BPO_SOURCES" >/dev/null
  fi
  echo "installing Debian packages from bookworm-backports: ${bpo_missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    -t bookworm-backports "${bpo_missing[@]}" >/dev/null
fi

# Rust toolchain (stable) with rustfmt and clippy.
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: install Rust stable with rustup first" >&2
  exit 1
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

# cargo-fuzz for scripts/fuzz.sh (libFuzzer targets in tools/fuzz; stable Rust with
# RUSTC_BOOTSTRAP=1).
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

# Crates.
cargo fetch --locked
