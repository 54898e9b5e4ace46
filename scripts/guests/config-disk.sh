#!/usr/bin/env bash
# Make a small read-only activation config disk for a guest, as a clone's second export would
# carry it: ISO 9660 (Rock Ridge, Joliet), volume label "cidata", holding
#   meta-data      cloud-init NoCloud (instance-id, local-hostname)
#   user-data      "#cloud-config" (empty)
#   ovf-env.xml    an OVF environment with the hostname property (as PowerVC writes it)
#
#   scripts/guests/config-disk.sh HOSTNAME OUT.iso
#
# The golden image's activation engine (scripts/guests/activate.sh) prefers it to the kernel
# command line and the NVRAM. Needs xorriso (scripts/install-deps.sh).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 HOSTNAME OUT.iso" >&2; exit 2; }
NAME=$1
OUT=$2
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
printf 'instance-id: iid-%s\nlocal-hostname: %s\n' "$NAME" "$NAME" > "$D/meta-data"
printf '#cloud-config\n' > "$D/user-data"
cat > "$D/ovf-env.xml" <<XML
<?xml version="1.0" encoding="UTF-8"?>
<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1"
    xmlns:oe="http://schemas.dmtf.org/ovf/environment/1" oe:id="$NAME">
  <PropertySection>
    <Property oe:key="com.ibm.ovf.vmcontrol.system.networking.hostname" oe:value="$NAME"/>
  </PropertySection>
</Environment>
XML
xorriso -as mkisofs -quiet -V cidata -J -r -o "$OUT.tmp" "$D" 2>/dev/null ||
  { echo "config-disk: xorriso failed (scripts/install-deps.sh installs it)" >&2; exit 1; }
mv "$OUT.tmp" "$OUT"
