#!/usr/bin/env bash
# Build the x86_64 NBD-client guest: an initramfs for Debian's amd64 kernel (packages from
# scripts/guests/fetch.sh, cached) with static busybox, the NIC and nbd modules and their
# dependencies, Debian's nbd-client with the shared libraries it needs, and
# /init = scripts/guests/initramfs-x86.sh.
#
#   vmlinuz     the kernel (a link to the cached package's)
#   initrd.img  gzip'd cpio
#
# Output in ${1:-$CACHE/build/x86}; rebuilt only when the scripts or packages change. Prints
# the output directory.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
guest_env
OUT="${1:-$GUEST_CACHE/build/x86}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
exec 8> "$OUT/.lock"
flock 8
STAMP=$(build_stamp "$ROOT_X86" "$0" "$GUESTS_DIR/initramfs-x86.sh")
if [ -f "$OUT/.stamp" ] && [ "$(cat "$OUT/.stamp")" = "$STAMP" ] &&
  [ -f "$OUT/initrd.img" ] && [ -e "$OUT/vmlinuz" ]; then
  echo "$OUT"
  exit 0
fi
rm -f "$OUT/.stamp"

MODULES=(virtio_pci virtio_net e1000 nbd)
MODDIR="$ROOT_X86/lib/modules/$KVER_X86"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
I="$WORK/initramfs"
mkdir -p "$I"/{proc,sys,dev,run,tmp,etc}
install_busybox "$I" "$ROOT_X86/bin/busybox" "$BUSYBOX_HOST"
stage_modules "$MODDIR" "$I" "${MODULES[@]}"

# nbd-client and every shared library it needs (recursively, by readelf -d NEEDED), at the
# paths the dynamic loader looks in.
install -m 0755 "$ROOT_X86/sbin/nbd-client" "$I/sbin/nbd-client"
needed() { readelf -d "$1" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
interp=$(readelf -l "$ROOT_X86/sbin/nbd-client" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
mkdir -p "$I$(dirname "$interp")"
cp -L "$ROOT_X86$interp" "$I$interp"
declare -A seen=()
mapfile -t queue < <(needed "$ROOT_X86/sbin/nbd-client")
while [ ${#queue[@]} -gt 0 ]; do
  so=${queue[0]}
  queue=("${queue[@]:1}")
  [ -n "${seen[$so]:-}" ] && continue
  seen[$so]=1
  f=$(find "$ROOT_X86/lib" "$ROOT_X86/usr/lib" -name "$so" 2>/dev/null | head -1)
  [ -n "$f" ] || { echo "build-x86: no $so for nbd-client (scripts/guests/fetch.sh)" >&2; exit 1; }
  rel=${f#"$ROOT_X86"}
  mkdir -p "$I$(dirname "$rel")"
  cp -L "$f" "$I$rel"
  mapfile -t -O ${#queue[@]} queue < <(needed "$f")
done
install -m 0755 "$GUESTS_DIR/initramfs-x86.sh" "$I/init"
make_cpio "$I" "$OUT/initrd.img"
ln -sf "$ROOT_X86/boot/vmlinuz-$KVER_X86" "$OUT/vmlinuz"
echo "$KVER_X86" > "$OUT/kernel-version"
echo "$STAMP" > "$OUT/.stamp"
echo "$OUT"
