#!/usr/bin/env bash
# Attach an LU with the Linux kernel's NBD client in a small x86_64 guest:
#
#   scripts/guests/nbd-client-x86.sh PORT LU
#
# sspd must listen on 127.0.0.1:PORT (the guest reaches it as 10.0.2.2:PORT through QEMU user
# networking). The guest (scripts/guests/build-x86.sh, built if needed) writes 8 MiB at 1 MiB
# with O_DIRECT, reads it back, discards [1 MiB, 5 MiB), detaches and powers off; see
# scripts/guests/initramfs-x86.sh. The LU must be at least 16 MiB; its first 9 MiB are
# overwritten.
#
# Exits 0 only if the guest printed "SSP-NBD-RESULT ok ..." and powered off within
# SSP_GUEST_TIMEOUT seconds (default 300); prints that line (the host can check the checksums
# through NBD) and "nbd-client-x86: OK seconds=N". Console log: SSP_GUEST_LOG (default a temp
# file, named on failure). SSP_GUEST_ACCEL: tcg (default) or kvm; SSP_GUEST_NIC: the NIC model,
# virtio-net-pci (default) or e1000.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 PORT LU" >&2; exit 2; }
PORT=$1
LU=$2
TIMEOUT=${SSP_GUEST_TIMEOUT:-300}
ACCEL=${SSP_GUEST_ACCEL:-tcg}
NIC=${SSP_GUEST_NIC:-virtio-net-pci}
G="$(cd "$(dirname "$0")" && pwd)"
BUILD=$("$G/build-x86.sh")
LOG=${SSP_GUEST_LOG:-$(mktemp --tmpdir ssp-x86-console.XXXXXX)}

start=$(date +%s%N)
set +e
timeout -k 5 "$TIMEOUT" qemu-system-x86_64 -accel "$ACCEL" -m 512M -smp 1 \
  -nographic -no-reboot -nodefaults -serial mon:stdio \
  -kernel "$BUILD/vmlinuz" -initrd "$BUILD/initrd.img" \
  -append "console=ttyS0 panic=1 ssp.server=10.0.2.2 ssp.port=$PORT ssp.lu=$LU" \
  -nic "user,model=$NIC" < /dev/null > "$LOG" 2>&1
rc=$?
set -e
ms=$((($(date +%s%N) - start) / 1000000))
secs=$((ms / 1000)).$((ms % 1000 / 100))

fail() {
  echo "nbd-client-x86: FAILED ($*) seconds=$secs; console log: $LOG" >&2
  tail -n 25 "$LOG" | sed 's/^/  | /' >&2
  exit 1
}
[ $rc -ne 124 ] && [ $rc -ne 137 ] || fail "timed out after $TIMEOUT s"
[ $rc -eq 0 ] || fail "qemu exited with status $rc"
result=$(tr -d '\r' < "$LOG" | grep -m1 '^SSP-NBD-RESULT' || true)
[ -n "$result" ] || fail "no SSP-NBD-RESULT line"
case "$result" in "SSP-NBD-RESULT ok "*) ;; *) fail "$result" ;; esac
tr -d '\r' < "$LOG" | sed -n '/^SSP-NBD-RESULT/,$p' | grep -q 'reboot: Power down' ||
  fail "no power-down after the result"
echo "$result"
echo "nbd-client-x86: OK seconds=$secs"
[ -n "${SSP_GUEST_LOG:-}" ] || rm -f "$LOG"
