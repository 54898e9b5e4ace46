#!/usr/bin/env bash
# Install the systemd units for sspd (contrib/systemd/sspd@.service and sspd@.socket).
#   scripts/install-systemd.sh                 # units into /etc/systemd/system, sspd in /usr/local/bin
#   PREFIX=/usr DESTDIR=/tmp/pkg UNITDIR=/usr/lib/systemd/system scripts/install-systemd.sh
# PREFIX names where sspd is installed (the units run $PREFIX/bin/sspd); DESTDIR stages the
# files under another root (packaging). Then: systemctl daemon-reload &&
# systemctl enable --now sspd@POOL.socket  (serves /var/lib/ssp/POOL).
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
UNITDIR=${UNITDIR:-/etc/systemd/system}
DESTDIR=${DESTDIR:-}
dest="$DESTDIR$UNITDIR"
install -d "$dest"
for u in sspd@.service sspd@.socket; do
  sed "s|@BINDIR@|$PREFIX/bin|g" "contrib/systemd/$u" >"$dest/$u.tmp"
  chmod 0644 "$dest/$u.tmp"
  mv "$dest/$u.tmp" "$dest/$u"
  echo "installed $dest/$u"
done
install -d "$DESTDIR/etc/ssp"
if [ -z "$DESTDIR" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
