#!/bin/sh
# /sbin/init of the golden ppc64le root disk: the activation engine.
#
# On first boot it takes the machine's identity (hostname) from, in this order: a config disk
# (ISO 9660 or FAT with cloud-init NoCloud meta-data or an OVF ovf-env.xml), the kernel command
# line (ssp.hostname=NAME), or the firmware's NVRAM (the Open Firmware option ssp-hostname, set
# with qemu-system-ppc64 -prom-env ssp-hostname=NAME: /proc/device-tree/options); writes it into /etc/hostname and the
# /var/lib/ssp/activated marker of its own root filesystem, remounts the root read-only (the
# journal is checkpointed: the filesystem is clean for e2fsck -fn), prints
#   SSP-ACTIVATED hostname=NAME
# on the console and powers off. A boot that finds the marker prints
#   SSP-ALREADY-ACTIVATED hostname=NAME
# and powers off. Any failure prints "SSP-ACTIVATION-FAILED: why" and powers off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null

halt_now() {
  mount -o remount,ro / 2>/dev/null
  sync
  poweroff -f
  sleep 10
}
fail() {
  echo "SSP-ACTIVATION-FAILED: $*"
  halt_now
}

# The value of NAME=VALUE on the kernel command line.
cmdline_param() {
  for w in $(cat /proc/cmdline); do
    case "$w" in "$1="*) echo "${w#*=}" ;; esac
  done
}

# The hostname from a config disk: any block device other than the root that mounts as
# iso9660 or vfat and holds meta-data (local-hostname:) or ovf-env.xml (a hostname property).
config_disk_hostname() {
  root_dev=$(awk '$2 == "/" { print $1 }' /proc/mounts | tail -1)
  mkdir -p /run/config
  for dev in /dev/sr[0-9] /dev/sd[a-z] /dev/vd[a-z]; do
    [ -b "$dev" ] && [ "$dev" != "$root_dev" ] || continue
    for t in iso9660 vfat; do
      mount -r -t "$t" "$dev" /run/config 2>/dev/null || continue
      name=""
      if [ -f /run/config/meta-data ]; then
        name=$(sed -n 's/^local-hostname: *//p' /run/config/meta-data | head -1)
      fi
      if [ -z "$name" ] && [ -f /run/config/ovf-env.xml ]; then
        name=$(sed 's/>/>\n/g' /run/config/ovf-env.xml |
          sed -n 's/.*oe:key="[^"]*hostname"[^>]*oe:value="\([^"]*\)".*/\1/p' | head -1)
      fi
      umount /run/config
      if [ -n "$name" ]; then
        echo "$name"
        return 0
      fi
    done
  done
  return 1
}

valid_hostname() {
  case "$1" in
    "" | -* | *[!A-Za-z0-9.-]*) return 1 ;;
  esac
  [ ${#1} -le 63 ]
}

if [ -f /var/lib/ssp/activated ]; then
  echo "SSP-ALREADY-ACTIVATED hostname=$(cat /etc/hostname)"
  halt_now
fi

source=config-disk
name=$(config_disk_hostname)
if [ -z "$name" ]; then
  source=cmdline
  name=$(cmdline_param ssp.hostname)
fi
if [ -z "$name" ] && [ -f /proc/device-tree/options/ssp-hostname ]; then
  source=nvram
  name=$(tr -d '\000' < /proc/device-tree/options/ssp-hostname)
fi
[ -n "$name" ] || fail "no identity: no config disk, no ssp.hostname= on the kernel command line, no ssp-hostname in NVRAM"
valid_hostname "$name" || fail "invalid hostname '$name'"

echo "$name" > /etc/hostname || fail "cannot write /etc/hostname"
hostname "$name"
mkdir -p /var/lib/ssp
{
  echo "hostname=$name"
  echo "source=$source"
  echo "kernel=$(uname -r)"
} > /var/lib/ssp/activated.tmp || fail "cannot write the activation marker"
mv /var/lib/ssp/activated.tmp /var/lib/ssp/activated
sync
mount -o remount,ro / || fail "cannot remount / read-only"
sync
echo "SSP-ACTIVATED hostname=$name"
poweroff -f
sleep 10
