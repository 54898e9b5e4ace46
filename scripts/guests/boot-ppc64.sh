#!/usr/bin/env bash
# Boot the ppc64le golden image (or a clone of it) in a QEMU pseries guest over NBD:
#
#   scripts/guests/boot-ppc64.sh URI HOSTNAME [vscsi|virtio] [kernel|firmware]
#
# URI is nbd://127.0.0.1:PORT/LU (or a raw image file). The disk is on spapr-vscsi (scsi-hd,
# /dev/sda: the default) or virtio-blk-pci (/dev/vda).
#   kernel (default): the disk holds golden.img (a bare ext4 root); QEMU loads the kernel and
#     initramfs of scripts/guests/build-ppc64.sh (built if needed) and passes
#     ssp.hostname=HOSTNAME on the kernel command line.
#   firmware: the disk holds golden-disk.img; no -kernel: SLOF boots GRUB from the disk's PReP
#     partition, GRUB the kernel; HOSTNAME goes into the NVRAM (-prom-env ssp-hostname=...).
# Either way the activation engine in the image names the machine HOSTNAME and powers off.
#
# Exits 0 only if the console showed "SSP-ACTIVATED hostname=HOSTNAME" (with
# SSP_GUEST_EXPECT=already: "SSP-ALREADY-ACTIVATED hostname=...") and then the kernel's
# power-down, within SSP_GUEST_TIMEOUT seconds (default 300). The console log goes to
# SSP_GUEST_LOG (default: a temp file, named on failure); the last line printed is
#   boot-ppc64: OK hostname=NAME disk=vscsi seconds=N
# Environment: SSP_GUEST_FIRMWARE=slof (default) or vof (QEMU's faster Virtual Open Firmware),
# SSP_GUEST_EXTRA_ARGS (more qemu arguments, e.g. a second -drive for a config disk).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 URI HOSTNAME [vscsi|virtio]" >&2; exit 2; }
URI=$1
NAME=$2
DISK=${3:-vscsi}
BOOT=${4:-kernel}
TIMEOUT=${SSP_GUEST_TIMEOUT:-300}
EXPECT=${SSP_GUEST_EXPECT:-activated}
FIRMWARE=${SSP_GUEST_FIRMWARE:-slof}
G="$(cd "$(dirname "$0")" && pwd)"
BUILD=$("$G/build-ppc64.sh")
LOG=${SSP_GUEST_LOG:-$(mktemp --tmpdir ssp-ppc64-console.XXXXXX)}

case "$DISK" in
  vscsi) ROOT=/dev/sda DEV=(-device spapr-vscsi,id=scsi0 -device scsi-hd,drive=d0,bus=scsi0.0,bootindex=0) ;;
  virtio) ROOT=/dev/vda DEV=(-device virtio-blk-pci,drive=d0,bootindex=0) ;;
  *) echo "disk must be vscsi or virtio, not $DISK" >&2; exit 2 ;;
esac
case "$BOOT" in
  kernel)
    BOOT_ARGS=(-kernel "$BUILD/vmlinux" -initrd "$BUILD/initrd.img"
      -append "console=hvc0 root=$ROOT rootfstype=ext4 panic=1 ssp.hostname=$NAME") ;;
  firmware)
    [ "$FIRMWARE" = slof ] || { echo "firmware boot needs SLOF" >&2; exit 2; }
    BOOT_ARGS=(-prom-env "ssp-hostname=$NAME") ;;
  *) echo "boot must be kernel or firmware, not $BOOT" >&2; exit 2 ;;
esac
MACHINE=pseries,cap-cfpc=broken,cap-sbbc=broken,cap-ibs=broken,cap-ccf-assist=off
case "$FIRMWARE" in
  slof) ;;
  vof) MACHINE="$MACHINE,x-vof=on" ;;
  *) echo "SSP_GUEST_FIRMWARE must be slof or vof" >&2; exit 2 ;;
esac
case "$EXPECT" in
  activated) WANT="SSP-ACTIVATED hostname=$NAME" ;;
  already) WANT="SSP-ALREADY-ACTIVATED hostname=" ;;
  *) echo "SSP_GUEST_EXPECT must be activated or already" >&2; exit 2 ;;
esac

# shellcheck disable=SC2206
EXTRA=(${SSP_GUEST_EXTRA_ARGS:-})
start=$(date +%s%N)
set +e
timeout -k 5 "$TIMEOUT" qemu-system-ppc64 -M "$MACHINE" -accel tcg -m 1G -smp 1 \
  -nographic -no-reboot -nodefaults -serial mon:stdio \
  "${BOOT_ARGS[@]}" \
  -drive "file=$URI,format=raw,if=none,id=d0,cache=none" "${DEV[@]}" \
  "${EXTRA[@]}" < /dev/null > "$LOG" 2>&1
rc=$?
set -e
ms=$((($(date +%s%N) - start) / 1000000))
secs=$((ms / 1000)).$((ms % 1000 / 100))

fail() {
  echo "boot-ppc64: FAILED ($*) hostname=$NAME disk=$DISK boot=$BOOT seconds=$secs; console log: $LOG" >&2
  tail -n 25 "$LOG" | sed 's/^/  | /' >&2
  exit 1
}
[ $rc -ne 124 ] && [ $rc -ne 137 ] || fail "timed out after $TIMEOUT s"
[ $rc -eq 0 ] || fail "qemu exited with status $rc"
tr -d '\r' < "$LOG" | grep -q "^$WANT" || fail "no '$WANT' line"
# The activation line, then the kernel powering the machine down (not a panic).
tr -d '\r' < "$LOG" | sed -n "/^$WANT/,\$p" | grep -q 'reboot: Power down' || fail "no power-down after activation"
if tr -d '\r' < "$LOG" | grep -q 'Kernel panic'; then fail "kernel panic"; fi
line=$(tr -d '\r' < "$LOG" | grep -m1 "^$WANT")
echo "boot-ppc64: OK ${line#* } disk=$DISK boot=$BOOT firmware=$FIRMWARE seconds=$secs"
[ -n "${SSP_GUEST_LOG:-}" ] || rm -f "$LOG"
