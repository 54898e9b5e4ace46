#!/bin/sh
# /init of the x86_64 NBD-client guest: the Linux kernel's NBD client against sspd on the host.
#
# Kernel command line: ssp.server=HOST (default 10.0.2.2, QEMU user networking's alias of the
# host's 127.0.0.1), ssp.port=PORT, ssp.lu=LU. Configures eth0 (10.0.2.15/24, gateway
# 10.0.2.2), loads nbd, attaches /dev/nbd0 with Debian's nbd-client, then:
#   1. writes 8 MiB of random data at 1 MiB with O_DIRECT (dd oflag=direct, conv=fsync: a flush)
#   2. reads it back with O_DIRECT and compares
#   3. discards [1 MiB, 5 MiB) (blkdiscard: NBD_CMD_TRIM) and flushes
#   4. detaches (nbd-client -d), prints
#        SSP-NBD-RESULT ok written_sha256=W kept_sha256=K
#      (W: the 8 MiB written; K: its last 4 MiB, still at [5 MiB, 9 MiB)) and powers off.
# A failure prints "SSP-NBD-RESULT failed: why" and powers off.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run /tmp

fail() {
  echo "SSP-NBD-RESULT failed: $*"
  nbd-client -d /dev/nbd0 >/dev/null 2>&1
  poweroff -f
  sleep 10
}
cmdline_param() {
  for w in $(cat /proc/cmdline); do
    case "$w" in "$1="*) echo "${w#*=}" ;; esac
  done
}

while read -r m; do
  insmod "$m" 2>/dev/null || echo "init: insmod $m failed"
done < /etc/modules.load

server=$(cmdline_param ssp.server)
server=${server:-10.0.2.2}
port=$(cmdline_param ssp.port)
lu=$(cmdline_param ssp.lu)
[ -n "$port" ] && [ -n "$lu" ] || fail "ssp.port= and ssp.lu= are needed on the kernel command line"

i=0
while [ ! -e /sys/class/net/eth0 ]; do
  i=$((i + 1))
  [ $i -le 100 ] || fail "no eth0"
  sleep 0.1
done
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0 || fail "cannot configure eth0"
ip link set eth0 up
ip route add default via 10.0.2.2 || fail "cannot add the default route"
i=0
while [ ! -b /dev/nbd0 ]; do
  i=$((i + 1))
  [ $i -le 100 ] || fail "no /dev/nbd0"
  sleep 0.1
done

echo "init: nbd-client $server $port /dev/nbd0 -N $lu"
nbd-client "$server" "$port" /dev/nbd0 -N "$lu" -b 4096 || fail "nbd-client could not attach $lu"
size=$(blockdev --getsize64 /dev/nbd0)
echo "init: /dev/nbd0 attached, $size bytes"
[ "$size" -ge $((16 << 20)) ] || fail "/dev/nbd0 is only $size bytes"

MiB=1048576
dd if=/dev/urandom of=/tmp/pattern bs=$MiB count=8 status=none || fail "no random data"
dd if=/tmp/pattern of=/dev/nbd0 bs=$MiB seek=1 oflag=direct conv=notrunc,fsync status=none ||
  fail "O_DIRECT write failed"
dd if=/dev/nbd0 of=/tmp/readback bs=$MiB skip=1 count=8 iflag=direct status=none ||
  fail "O_DIRECT read failed"
cmp /tmp/pattern /tmp/readback || fail "read back differs from what was written"
written=$(sha256sum < /tmp/pattern | cut -d' ' -f1)
kept=$(dd if=/tmp/pattern bs=$MiB skip=4 count=4 status=none | sha256sum | cut -d' ' -f1)
echo "init: wrote and read back 8 MiB with O_DIRECT"

blkdiscard -o $((1 * MiB)) -l $((4 * MiB)) /dev/nbd0 || fail "blkdiscard failed"
blockdev --flushbufs /dev/nbd0
sync
dd if=/dev/nbd0 of=/tmp/trimmed bs=$MiB skip=1 count=4 iflag=direct status=none ||
  fail "read after discard failed"
dd if=/dev/nbd0 of=/tmp/kept bs=$MiB skip=5 count=4 iflag=direct status=none ||
  fail "read after discard failed"
[ "$(sha256sum < /tmp/kept | cut -d' ' -f1)" = "$kept" ] || fail "discard changed data outside its range"
if cmp -s /tmp/trimmed /dev/zero 2>/dev/null || [ "$(dd if=/dev/zero bs=$MiB count=4 status=none | sha256sum)" = "$(sha256sum < /tmp/trimmed)" ]; then
  trim=zeroes
else
  trim=unchanged
fi
echo "init: discarded 4 MiB (reads back as $trim)"

nbd-client -d /dev/nbd0 || fail "nbd-client -d failed"
echo "SSP-NBD-RESULT ok written_sha256=$written kept_sha256=$kept trimmed_reads=$trim"
poweroff -f
sleep 10
