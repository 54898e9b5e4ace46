#!/usr/bin/env bash
# Generate the man pages (section 8: sspd, sspctl and one page per sspctl verb) and the bash, zsh
# and fish completions of both binaries from their clap definitions.
#   scripts/gen-docs.sh [OUT_DIR]          default target/docs
# Writes OUT_DIR/man8/*.8 and OUT_DIR/completions/{bash,zsh,fish}/. Uses SSPD/SSPCTL when set
# (paths of built binaries), else builds them (cargo build --release, or $PROFILE).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/docs}
if [ -z "${SSPD:-}" ] || [ -z "${SSPCTL:-}" ]; then
  profile=${PROFILE:-release}
  if [ "$profile" = release ]; then
    cargo build --locked --release --bin sspd --bin sspctl
  else
    cargo build --locked --profile "$profile" --bin sspd --bin sspctl
  fi
  dir=target/$([ "$profile" = dev ] && echo debug || echo "$profile")
  SSPD=${SSPD:-$dir/sspd}
  SSPCTL=${SSPCTL:-$dir/sspctl}
fi
rm -rf "$out/man8" "$out/completions"
mkdir -p "$out"
"$SSPD" --generate-docs "$out"
"$SSPCTL" generate-docs "$out"
# Every page must render without a warning (when man is installed).
if command -v man >/dev/null; then
  for p in "$out"/man8/*.8; do
    warn=$(MANWIDTH=80 LC_ALL=C.UTF-8 man --warnings -l "$p" 2>&1 >/dev/null || true)
    if [ -n "$warn" ]; then
      echo "$p: $warn" >&2
      exit 1
    fi
  done
fi
echo "man pages: $(ls "$out"/man8 | wc -l) in $out/man8; completions: $out/completions/{bash,zsh,fish}"
