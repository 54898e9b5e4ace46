#!/usr/bin/env bash
# Install sspd and sspctl with their man pages and shell completions.
#   scripts/install.sh                       builds (release) and installs under /usr/local
#   PREFIX=/usr DESTDIR=/tmp/pkg scripts/install.sh   staged install for packaging
# Installs:
#   $DESTDIR$PREFIX/bin/{sspd,sspctl}
#   $DESTDIR$PREFIX/share/man/man8/*.8                       (sspd(8), sspctl(8), sspctl-VERB(8), ...)
#   $DESTDIR$PREFIX/share/bash-completion/completions/{sspd,sspctl}
#   $DESTDIR$PREFIX/share/zsh/site-functions/{_sspd,_sspctl}
#   $DESTDIR$PREFIX/share/fish/vendor_completions.d/{sspd,sspctl}.fish
# SSPD/SSPCTL (paths of built binaries) skip the build.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
if [ -z "${SSPD:-}" ] || [ -z "${SSPCTL:-}" ]; then
  cargo build --locked --release --bin sspd --bin sspctl
  SSPD=target/release/sspd
  SSPCTL=target/release/sspctl
fi
docs=$(mktemp -d)
trap 'rm -rf "$docs"' EXIT
SSPD=$SSPD SSPCTL=$SSPCTL scripts/gen-docs.sh "$docs" >/dev/null
root=$DESTDIR$PREFIX
install -d "$root/bin" "$root/share/man/man8" "$root/share/bash-completion/completions" \
  "$root/share/zsh/site-functions" "$root/share/fish/vendor_completions.d"
install -m 0755 "$SSPD" "$SSPCTL" "$root/bin/"
install -m 0644 "$docs"/man8/*.8 "$root/share/man/man8/"
install -m 0644 "$docs"/completions/bash/* "$root/share/bash-completion/completions/"
install -m 0644 "$docs"/completions/zsh/* "$root/share/zsh/site-functions/"
install -m 0644 "$docs"/completions/fish/* "$root/share/fish/vendor_completions.d/"
echo "installed sspd, sspctl, $(ls "$docs"/man8 | wc -l) man pages and completions under $root"
