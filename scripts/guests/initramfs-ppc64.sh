#!/bin/sh
# /init of the ppc64le initramfs: load the disk and filesystem drivers, mount the root disk
# (root=: /dev/sda on spapr-vscsi, /dev/vda on virtio-blk, or LABEL=NAME) read-write and switch_root into its
# /sbin/init. A failure prints "SSP-INITRAMFS-FAILED: why" and powers off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
  echo "SSP-INITRAMFS-FAILED: $*"
  poweroff -f
  sleep 10
}
cmdline_param() {
  for w in $(cat /proc/cmdline); do
    case "$w" in "$1="*) echo "${w#*=}" ;; esac
  done
}

while read -r m; do
  insmod "$m" 2>/dev/null || echo "initramfs: insmod $m failed"
done < /etc/modules.load

root=$(cmdline_param root)
fstype=$(cmdline_param rootfstype)
[ -n "$root" ] || fail "no root= on the kernel command line"
i=0
dev=$root
while :; do
  case "$root" in LABEL=* | UUID=*) dev=$(findfs "$root" 2>/dev/null) ;; esac
  [ -n "$dev" ] && [ -b "$dev" ] && break
  i=$((i + 1))
  [ $i -le 300 ] || fail "no root device $root after 30 s ($(ls /dev | tr '\n' ' '))"
  sleep 0.1
done
mkdir -p /newroot
mount -t "${fstype:-ext4}" -o rw "$dev" /newroot || fail "cannot mount $root ($dev)"
[ -x /newroot/sbin/init ] || fail "no /sbin/init on $root"
umount /sys
umount /proc
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot /sbin/init
fail "switch_root failed"
