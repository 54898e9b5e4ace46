#!/usr/bin/env bash
# The main job on a fresh machine: build ssp, make a pool from two sparse files, create thin
# LUs, serve them over NBD with sspd, write and read one with qemu-img, capture it as a client
# image, deploy two linked clones from a snapshot of it, personalise one, and show what the pool
# reports about sharing. Re-running starts from scratch.
#
#   scripts/demo.sh [--boot]
#
# With --boot (or SSP_DEMO_BOOT=1) it goes on to boot two linked clones of a ppc64le golden
# disk in QEMU pseries guests over NBD, each named by its own `clone --activation` config disk
# (the guest kernel and busybox come from Debian, fetched and built once by scripts/guests/ and
# cached in ~/.cache/ssp-guests; the first run takes a few minutes more). Off by default: the
# plain demo stays quick.
set -euo pipefail
cd "$(dirname "$0")/.."
BOOT="${SSP_DEMO_BOOT:-0}"
for a in "$@"; do
  case "$a" in
    --boot) BOOT=1 ;;
    *) echo "usage: $0 [--boot]" >&2; exit 2 ;;
  esac
done
DEMO_DIR="${SSP_DEMO_DIR:-$PWD/demo}"
scripts/install-deps.sh >/dev/null
echo "== building ssp (release)"
cargo build --release --locked --quiet
TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
SSPCTL="$TARGET_DIR/release/sspctl"
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

say "Starting sspd: every LU is now an NBD export"
SSPD="$TARGET_DIR/release/sspd"
"$SSPD" --pool "$POOL" --listen 127.0.0.1:0 > "$DEMO_DIR/sspd.out" 2> "$DEMO_DIR/sspd.log" &
SSPD_PID=$!
trap 'kill $SSPD_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q listening "$DEMO_DIR/sspd.out" 2>/dev/null && break; sleep 0.1; done
ADDR=$(grep -o '127.0.0.1:[0-9]*' "$DEMO_DIR/sspd.out" | head -1)
echo "sspd is serving on nbd://$ADDR/ (pid $SSPD_PID)"
nbdinfo --list "nbd://$ADDR/" | grep -E 'export=|export-size' || true

say "Writing 64 MiB into golden-rootvg over NBD (qemu-img convert)"
head -c $((64 << 20)) /dev/urandom > "$DEMO_DIR/payload.bin"
qemu-img convert -n -f raw -O raw "$DEMO_DIR/payload.bin" "nbd://$ADDR/golden-rootvg"

say "Reading it back over NBD and comparing"
# The LU is 10 GiB: qemu-img also checks that everything past the 64 MiB reads as zeroes.
qemu-img compare -f raw -F raw "$DEMO_DIR/payload.bin" "nbd://$ADDR/golden-rootvg"

say "Allocation map over NBD (base:allocation): data then a thin hole"
nbdinfo --map "nbd://$ADDR/golden-rootvg"

say "Capturing golden-rootvg into a client image (a real copy, like the seed's dd)"
"$SSPCTL" --pool "$POOL" image capture golden-rootvg aix-golden-image

say "Snapshotting the image and deploying two linked clones (each one atomic, O(1) step)"
"$SSPCTL" --pool "$POOL" snapshot create aix-golden-image@deploy
"$SSPCTL" --pool "$POOL" clone aix-golden-image@deploy vm1-rootvg
"$SSPCTL" --pool "$POOL" clone aix-golden-image@deploy vm2-rootvg
"$SSPCTL" --pool "$POOL" snapshot list

say "vm1 personalises itself: 1 MiB written over NBD (qemu-io); vm2 still reads the image"
qemu-io -f raw -c "write -P 0x42 4M 1M" "nbd://$ADDR/vm1-rootvg" | head -1
qemu-img compare -f raw -F raw "$DEMO_DIR/payload.bin" "nbd://$ADDR/vm2-rootvg"

say "file stat vm1-rootvg: it owns only the 256 blocks it wrote, and shares the rest"
"$SSPCTL" --pool "$POOL" file stat vm1-rootvg

say "file layout vm1-rootvg (first extents): where its blocks live, shared or owned"
"$SSPCTL" --pool "$POOL" file layout vm1-rootvg > "$DEMO_DIR/layout.txt"
head -12 "$DEMO_DIR/layout.txt"

say "Sharing over NBD block status (ssp:sharing, bit 0 = shared) for vm1-rootvg"
nbdinfo --map=ssp:sharing "nbd://$ADDR/vm1-rootvg" > "$DEMO_DIR/sharing.txt"
head -5 "$DEMO_DIR/sharing.txt"

say "What vm1 changed since the image snapshot (sspctl diff; also the NBD context ssp:changed:aix-golden-image@deploy)"
"$SSPCTL" --pool "$POOL" diff aix-golden-image@deploy vm1-rootvg

if [ "$BOOT" = 1 ]; then
  say "Booting linked clones: fetching and building the ppc64le guest (cached after the first run)"
  GUEST_BUILD=$(scripts/guests/build-ppc64.sh | tail -1)
  echo "golden disk: $GUEST_BUILD/golden-disk.img (MBR, PReP partition with GRUB, ext4 root with an activation engine)"

  say "Writing the golden disk into an LU over NBD, capturing it, snapshotting the image"
  "$SSPCTL" --pool "$POOL" lu create ppc64-golden-rootvg --size 128M >/dev/null
  qemu-img convert -n -f raw -O raw "$GUEST_BUILD/golden-disk.img" "nbd://$ADDR/ppc64-golden-rootvg"
  "$SSPCTL" --pool "$POOL" image capture ppc64-golden-rootvg ppc64-golden-image
  "$SSPCTL" --pool "$POOL" snapshot create ppc64-golden-image@deploy

  say "Two linked clones, each with its activation config disk (a read-only client image NAME-config)"
  "$SSPCTL" --pool "$POOL" clone ppc64-golden-image@deploy lpar1-rootvg \
    --activation hostname=lpar1,ip=192.168.10.11/24,gateway=192.168.10.1,dns=192.168.10.53
  "$SSPCTL" --pool "$POOL" clone ppc64-golden-image@deploy lpar2-rootvg \
    --activation hostname=lpar2,ip=192.168.10.12/24,gateway=192.168.10.1,dns=192.168.10.53
  nbdinfo --json "nbd://$ADDR/lpar1-rootvg-config" | grep -E '"export-size"|"is_read_only"'

  say "Booting both at once in QEMU pseries guests (TCG) over NBD: SLOF -> GRUB -> Linux -> activation engine"
  # The config disk is a CD-ROM on the clone's spapr-vscsi adapter. The NVRAM name given to
  # boot-ppc64.sh is only a fallback: the config disk wins, as the activation marker shows.
  pids=()
  for n in 1 2; do
    SSP_GUEST_LOG="$DEMO_DIR/console-lpar$n.log" \
      SSP_GUEST_EXTRA_ARGS="-drive file=nbd://$ADDR/lpar$n-rootvg-config,format=raw,if=none,id=cfg,readonly=on -device scsi-cd,drive=cfg,bus=scsi0.0" \
      scripts/guests/boot-ppc64.sh "nbd://$ADDR/lpar$n-rootvg" "lpar$n" vscsi firmware &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  for n in 1 2; do
    tr -d '\r' < "$DEMO_DIR/console-lpar$n.log" | grep -aoE 'ssp: GRUB.*|^SSP-ACTIVATED.*' |
      sed "s/^/lpar$n console: /" || true
  done

  say "Each clone's activation marker, read back over NBD (debugfs on the root partition)"
  off=$(cat "$GUEST_BUILD/golden-disk.root-offset-mib")
  for n in 1 2; do
    qemu-img convert -f raw -O raw "nbd://$ADDR/lpar$n-rootvg" "$DEMO_DIR/lpar$n.img"
    dd if="$DEMO_DIR/lpar$n.img" of="$DEMO_DIR/lpar$n.root" bs=1M skip="$off" status=none
    debugfs -R 'cat /var/lib/ssp/activated' "$DEMO_DIR/lpar$n.root" 2>/dev/null |
      grep -E '^(hostname|source)=' | tr '\n' ' ' | sed "s/^/lpar$n-rootvg: /; s/ \$/\n/" || true
    rm -f "$DEMO_DIR/lpar$n.img" "$DEMO_DIR/lpar$n.root"
  done

  for n in 1 2; do
    say "file stat lpar$n-rootvg: it owns only the blocks its first boot changed"
    "$SSPCTL" --pool "$POOL" file stat "lpar$n-rootvg"
  done
fi

say "LUs, asked online through sspd's admin socket (UNUSED shrinks only by what was written)"
"$SSPCTL" --pool "$POOL" lu list

say "Pool status (140 GiB of LUs, clones and image provisioned on 1.5 GiB: thin overcommit)"
"$SSPCTL" --pool "$POOL" pool status

say "Full consistency check (every checksum, map entry and counter), online"
"$SSPCTL" --pool "$POOL" check

say "Stopping sspd (SIGTERM: in-flight requests finish, the pool is checkpointed)"
kill -TERM $SSPD_PID
wait $SSPD_PID
trap - EXIT

echo
echo "Done. The pool lives in $POOL. Serve it again with:"
echo "  $SSPD --pool $POOL --listen 127.0.0.1:10809"
echo "and use nbd://127.0.0.1:10809/vm1-rootvg (a linked clone) from qemu-img, qemu, nbdinfo or nbd-client."
