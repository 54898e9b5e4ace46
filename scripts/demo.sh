#!/usr/bin/env bash
# The main job on a fresh machine: build ssp, make a pool from two sparse files, create thin
# LUs, put data in one, and show what the pool reports. Re-running starts from scratch.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR="${SSP_DEMO_DIR:-$PWD/demo}"
scripts/install-deps.sh >/dev/null
echo "== building ssp (release)"
cargo build --release --locked --quiet
SSPCTL="$PWD/target/release/sspctl"
rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR"
POOL="$DEMO_DIR/pool"
say() { printf '\n== %s\n' "$*"; }

say "Creating a pool from two sparse files (1 GiB and 512 MiB) in $DEMO_DIR"
"$SSPCTL" --pool "$POOL" pool create --name demo \
  --pv "$DEMO_DIR/pv0.img:1G" --pv "$DEMO_DIR/pv1.img:512M"

say "Creating thin LUs: they use no space until written"
"$SSPCTL" --pool "$POOL" lu create golden-rootvg --size 10G >/dev/null
"$SSPCTL" --pool "$POOL" lu create vm1-data --size 100G >/dev/null
"$SSPCTL" --pool "$POOL" lu list

say "Writing 64 MiB of data into golden-rootvg"
head -c $((64 << 20)) /dev/urandom > "$DEMO_DIR/payload.bin"
"$SSPCTL" --pool "$POOL" lu import golden-rootvg "$DEMO_DIR/payload.bin"

say "Reading it back and comparing"
"$SSPCTL" --pool "$POOL" lu export golden-rootvg "$DEMO_DIR/back.bin"
if cmp -s -n $((64 << 20)) "$DEMO_DIR/payload.bin" "$DEMO_DIR/back.bin"; then
  echo "identical: 64 MiB read back byte for byte"
else
  echo "MISMATCH" >&2; exit 1
fi
rm -f "$DEMO_DIR/back.bin"

say "LUs (UNUSED shrinks only by what was written)"
"$SSPCTL" --pool "$POOL" lu list

say "Pool status (100 GiB + 10 GiB provisioned on 1.5 GiB: thin overcommit)"
"$SSPCTL" --pool "$POOL" pool status

say "Full consistency check (every checksum, map entry and counter)"
"$SSPCTL" --pool "$POOL" check

echo
echo "Done. The pool lives in $POOL; try: $SSPCTL --pool $POOL lu list --json"
