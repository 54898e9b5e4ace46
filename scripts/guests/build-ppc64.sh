#!/usr/bin/env bash
# Build the ppc64le guest: a "golden" root disk image and an initramfs for Debian's
# powerpc64le kernel (packages from scripts/guests/fetch.sh, cached).
#
#   golden.img  raw ext4 filesystem (64 MiB, no partition table), label ssp-root: static
#               busybox and /sbin/init = scripts/guests/activate.sh, the activation engine
#   initrd.img  gzip'd cpio: busybox, the disk/filesystem modules and their dependencies,
#               /init = scripts/guests/initramfs-ppc64.sh (mounts root= and switch_roots)
#   vmlinux     the kernel (a link to the cached package's)
#   golden-disk.img  a full disk for firmware boot (128 MiB): MBR with a PReP partition (1 MiB,
#               8 MiB) holding GRUB for powerpc-ieee1275 (grub-mkimage, Debian's modules) and a
#               root partition (9 MiB to the end, ext4 label ssp-root) holding the same root as
#               golden.img plus /boot (vmlinux.gz, initrd.img, grub/grub.cfg). SLOF loads GRUB
#               from the PReP partition, GRUB the kernel: no -kernel needed.
#
# Output in ${1:-$CACHE/build/ppc64}; rebuilt only when the scripts or packages change.
# Prints the output directory. Runs as root (mkfs.ext4 -d keeps the files' owners) or not
# (everything is made root-owned).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
guest_env
OUT="${1:-$GUEST_CACHE/build/ppc64}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
exec 8> "$OUT/.lock"
flock 8
STAMP=$(build_stamp "$ROOT_PPC64" "$0" "$GUESTS_DIR/activate.sh" "$GUESTS_DIR/initramfs-ppc64.sh")
if [ -f "$OUT/.stamp" ] && [ "$(cat "$OUT/.stamp")" = "$STAMP" ] &&
  [ -f "$OUT/golden.img" ] && [ -f "$OUT/golden-disk.img" ] && [ -f "$OUT/initrd.img" ] &&
  [ -e "$OUT/vmlinux" ]; then
  echo "$OUT"
  exit 0
fi
rm -f "$OUT/.stamp"

# Modules the initramfs loads: spapr-vscsi (ibmvscsi) and virtio disks, ext4 (crc32c through
# the crypto API, so loaded explicitly), and ISO 9660 / FAT for a config disk.
MODULES=(ibmvscsi sd_mod sr_mod virtio_pci virtio_blk virtio_scsi crc32c_generic ext4
  isofs vfat nls_cp437 nls_iso8859_1 nls_ascii)
MODDIR="$ROOT_PPC64/lib/modules/$KVER_PPC64"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The initramfs.
I="$WORK/initramfs"
mkdir -p "$I"/{proc,sys,dev,newroot,etc,tmp}
install_busybox "$I" "$ROOT_PPC64/bin/busybox" "$BUSYBOX_HOST"
stage_modules "$MODDIR" "$I" "${MODULES[@]}"
install -m 0755 "$GUESTS_DIR/initramfs-ppc64.sh" "$I/init"
make_cpio "$I" "$OUT/initrd.img"

# The golden root filesystem.
R="$WORK/root"
mkdir -p "$R"/{proc,sys,dev,run,tmp,root,mnt,etc,var/lib/ssp}
chmod 1777 "$R/tmp"
install_busybox "$R" "$ROOT_PPC64/bin/busybox" "$BUSYBOX_HOST"
rm -f "$R/sbin/init"
install -m 0755 "$GUESTS_DIR/activate.sh" "$R/sbin/init"
echo "ssp-golden" > "$R/etc/hostname"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$R/etc/passwd"
printf 'root:x:0:\n' > "$R/etc/group"
printf '/dev/root / ext4 rw 0 1\n' > "$R/etc/fstab"
{
  echo "ssp golden image: Debian $KVER_PPC64 userland-less root, busybox, activation engine"
  sed -n 's/^busybox-static_\(.*\)_ppc64el.deb$/busybox-static \1/p' "$ROOT_PPC64/.ssp-packages"
} > "$R/etc/ssp-release"
# Fixed UUID and hash seed (file times still differ from build to build).
rm -f "$WORK/golden.img"
truncate -s 64M "$WORK/golden.img"
E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -L ssp-root \
  -U 5e5e5e5e-0000-4000-8000-00000000ad01 -E root_owner=0:0,hash_seed=5e5e5e5e-0000-4000-8000-00000000ad02 \
  -d "$R" "$WORK/golden.img"
e2fsck -fn "$WORK/golden.img" >/dev/null 2>&1 || { echo "build-ppc64: golden.img fails e2fsck -fn" >&2; exit 1; }
mv "$WORK/golden.img" "$OUT/golden.img"

# The full disk for firmware boot: SLOF -> GRUB (PReP partition) -> kernel.
MiB=1048576
DISK_MIB=128 PREP_START_MIB=1 PREP_MIB=8
ROOT_START_MIB=$((PREP_START_MIB + PREP_MIB))
mkdir -p "$R/boot/grub"
gzip -6n -c "$ROOT_PPC64/boot/vmlinux-$KVER_PPC64" > "$R/boot/vmlinux.gz"
cp "$OUT/initrd.img" "$R/boot/initrd.img"
cat > "$R/boot/grub/grub.cfg" <<CFG
# ssp golden disk: boot the kernel with the root found by its label. The machine's identity
# comes from a config disk or the NVRAM (-prom-env ssp-hostname=NAME), not from here.
echo "ssp: GRUB loading Linux $KVER_PPC64"
linux /boot/vmlinux.gz console=hvc0 root=LABEL=ssp-root rootfstype=ext4 panic=1
initrd /boot/initrd.img
boot
CFG
cat > "$WORK/early.cfg" <<'CFG'
search --no-floppy --label ssp-root --set=root
set prefix=($root)/boot/grub
configfile ($root)/boot/grub/grub.cfg
CFG
LD_LIBRARY_PATH="$GRUB_LIBPATH" "$GRUB_MKIMAGE" -O powerpc-ieee1275 -d "$GRUB_PPC_DIR" \
  -o "$WORK/core.elf" -c "$WORK/early.cfg" -p /boot/grub \
  part_msdos ext2 linux gzio search search_label configfile echo boot
[ "$(stat -c %s "$WORK/core.elf")" -le $((PREP_MIB * MiB)) ] || { echo "GRUB too big" >&2; exit 1; }
truncate -s $(((DISK_MIB - ROOT_START_MIB) * MiB)) "$WORK/rootpart.img"
E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -L ssp-root \
  -U 5e5e5e5e-0000-4000-8000-00000000ad03 -E root_owner=0:0,hash_seed=5e5e5e5e-0000-4000-8000-00000000ad04 \
  -d "$R" "$WORK/rootpart.img"
e2fsck -fn "$WORK/rootpart.img" >/dev/null 2>&1 || { echo "build-ppc64: root partition fails e2fsck -fn" >&2; exit 1; }
truncate -s $((DISK_MIB * MiB)) "$WORK/disk.img"
write_mbr "$WORK/disk.img" "0x80:0x41:$((PREP_START_MIB * 2048)):$((PREP_MIB * 2048))" \
  "0:0x83:$((ROOT_START_MIB * 2048)):$(((DISK_MIB - ROOT_START_MIB) * 2048))"
dd if="$WORK/core.elf" of="$WORK/disk.img" bs=$MiB seek=$PREP_START_MIB conv=notrunc status=none
dd if="$WORK/rootpart.img" of="$WORK/disk.img" bs=$MiB seek=$ROOT_START_MIB conv=notrunc,sparse status=none
mv "$WORK/disk.img" "$OUT/golden-disk.img"
echo "$ROOT_START_MIB" > "$OUT/golden-disk.root-offset-mib"
ln -sf "$ROOT_PPC64/boot/vmlinux-$KVER_PPC64" "$OUT/vmlinux"
echo "$KVER_PPC64" > "$OUT/kernel-version"
echo "$STAMP" > "$OUT/.stamp"
echo "$OUT"
