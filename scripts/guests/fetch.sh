#!/usr/bin/env bash
# Fetch and cache the Debian 12 (bookworm) packages the guest tests boot, without touching the
# host's dpkg or apt state: a private apt configuration per architecture (lists, cache and
# sources in the cache directory, dpkg status /dev/null), `apt-get download`, `dpkg-deb -x`.
#
#   ppc64el: linux-image-<ver>-powerpc64le (kernel + modules), busybox-static,
#            grub-ieee1275-bin (GRUB's powerpc-ieee1275 modules, for firmware boot)
#   amd64:   linux-image-<ver>-amd64, busybox-static (also the build tools: cpio, depmod),
#            nbd-client and the shared libraries it needs (checked with readelf -d),
#            grub-common and libdevmapper1.02.1 (grub-mkimage, run from the cache)
#
# <ver> comes from the Depends of the linux-image-powerpc64le / linux-image-amd64 meta packages.
# Cached in ${SSP_GUEST_CACHE:-$HOME/.cache/ssp-guests}: once fetched, later runs do nothing and
# need no network (pass --refresh to look for newer packages). Writes $CACHE/guests.env
# (KVER_PPC64, ROOT_PPC64, KVER_X86, ROOT_X86, BUSYBOX_HOST, GRUB_MKIMAGE...) for the build
# scripts, and prints its path.
set -euo pipefail
CACHE="${SSP_GUEST_CACHE:-${HOME:-/root}/.cache/ssp-guests}"
MIRROR="${SSP_GUEST_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
REFRESH=0
FETCH_VERSION=2 # bump when the package set changes: caches of older versions are refetched
[ "${1:-}" = --refresh ] && REFRESH=1
mkdir -p "$CACHE"
CACHE="$(cd "$CACHE" && pwd)"
ENV_FILE="$CACHE/guests.env"
# One fetch at a time (tests run in parallel and may all ask for the packages).
exec 9> "$CACHE/.fetch.lock"
flock 9

if [ "$REFRESH" = 0 ] && [ -f "$ENV_FILE" ]; then
  # shellcheck disable=SC1090
  . "$ENV_FILE"
  if [ "${FETCHED_VERSION:-}" = "$FETCH_VERSION" ] && [ -f "$ROOT_PPC64/.ssp-fetched" ] &&
    [ -f "$ROOT_X86/.ssp-fetched" ]; then
    echo "$ENV_FILE"
    exit 0
  fi
fi

log() { echo "fetch.sh: $*" >&2; }

# apt-get / apt-cache with a private state for architecture $1.
apt_for() {
  local arch=$1 tool=$2
  shift 2
  local d="$CACHE/apt/$arch"
  "$tool" -q \
    -oAPT::Architecture="$arch" -oAPT::Architectures="$arch" \
    -oDir::State="$d/state" -oDir::State::Lists="$d/lists" -oDir::State::status=/dev/null \
    -oDir::Cache="$d/cache" \
    -oDir::Etc::SourceList="$d/sources.list" -oDir::Etc::SourceParts="$d/sources.list.d" \
    -oDir::Etc::Preferences=/dev/null -oDir::Etc::PreferencesParts="$d/preferences.d" \
    -oAcquire::IndexTargets::deb::DEP-11::DefaultEnabled=false \
    -oAcquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false \
    -oAcquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false \
    -oAPT::Sandbox::User=root "$@"
}

apt_setup() {
  local arch=$1 d="$CACHE/apt/$1"
  mkdir -p "$d/state" "$d/lists/partial" "$d/cache/archives/partial" "$d/sources.list.d" \
    "$d/preferences.d" "$CACHE/debs/$arch"
  echo "deb [arch=$arch] $MIRROR $SUITE main" > "$d/sources.list"
  log "apt-get update ($arch, $SUITE)"
  apt_for "$arch" apt-get update >/dev/null
}

# The kernel ABI name that the meta package depends on, e.g. 6.1.0-50-powerpc64le.
kernel_of() {
  local arch=$1 meta=$2
  apt_for "$arch" apt-cache show "$meta" |
    sed -n 's/^Depends:.*linux-image-\([0-9][^ ,]*\).*/\1/p' | head -1
}

# Every library package that $@ need, walking Depends only through library packages.
lib_closure() {
  local arch=$1
  shift
  local -A seen=()
  local queue=("$@") p d
  while [ ${#queue[@]} -gt 0 ]; do
    p=${queue[0]}
    queue=("${queue[@]:1}")
    [ -n "${seen[$p]:-}" ] && continue
    seen[$p]=1
    echo "$p"
    for d in $(apt_for "$arch" apt-cache depends --no-recommends --no-suggests --no-conflicts \
      --no-breaks --no-replaces --no-enhances "$p" |
      sed -n 's/^ *|\{0,1\}\(Pre\)\{0,1\}Depends: \([^<> ]*\)$/\2/p'); do
      case "$d" in lib* | zlib1g) [ -z "${seen[$d]:-}" ] && queue+=("$d") ;; esac
    done
  done
}

# Download packages $2.. for $1 (skipping those already cached) and extract them into ROOT.
fetch_extract() {
  local arch=$1 root=$2
  shift 2
  local p deb
  mkdir -p "$root"
  for p in "$@"; do
    deb=$(find "$CACHE/debs/$arch" -name "${p}_*.deb" | sort -V | tail -1)
    if [ -z "$deb" ]; then
      log "downloading $p ($arch)"
      (cd "$CACHE/debs/$arch" && apt_for "$arch" apt-get download "$p:$arch" >/dev/null)
      deb=$(find "$CACHE/debs/$arch" -name "${p}_*.deb" | sort -V | tail -1)
      [ -n "$deb" ] || { log "apt-get download $p:$arch gave no .deb"; exit 1; }
    fi
    dpkg-deb -x "$deb" "$root"
    basename "$deb" >> "$root/.ssp-packages"
  done
}

# The sonames an ELF file needs.
needed() { readelf -d "$1" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }

# Check that every shared library $2 needs (recursively) is in ROOT $1.
check_libs() {
  local root=$1 bin=$2 missing=0 so f
  local -A seen=()
  local queue
  mapfile -t queue < <(needed "$root/$bin")
  while [ ${#queue[@]} -gt 0 ]; do
    so=${queue[0]}
    queue=("${queue[@]:1}")
    [ -n "${seen[$so]:-}" ] && continue
    seen[$so]=1
    f=$(find "$root/lib" "$root/usr/lib" -name "$so" 2>/dev/null | head -1)
    if [ -z "$f" ]; then
      log "missing shared library $so (needed by $bin)"
      missing=1
      continue
    fi
    mapfile -t -O ${#queue[@]} queue < <(needed "$f")
  done
  return $missing
}

PPC_ROOT="$CACHE/ppc64el/root"
X86_ROOT="$CACHE/amd64/root"

apt_setup ppc64el
apt_setup amd64
KVER_PPC64=$(kernel_of ppc64el linux-image-powerpc64le)
KVER_X86=$(kernel_of amd64 linux-image-amd64)
[ -n "$KVER_PPC64" ] && [ -n "$KVER_X86" ] || { log "cannot resolve the kernel versions"; exit 1; }
log "kernels: $KVER_PPC64, $KVER_X86"

rm -rf "$PPC_ROOT" "$X86_ROOT"
fetch_extract ppc64el "$PPC_ROOT" "linux-image-$KVER_PPC64" busybox-static grub-ieee1275-bin
mapfile -t X86_LIBS < <(lib_closure amd64 nbd-client | grep -v '^nbd-client$')
fetch_extract amd64 "$X86_ROOT" "linux-image-$KVER_X86" busybox-static nbd-client "${X86_LIBS[@]}" \
  grub-common libdevmapper1.02.1
check_libs "$X86_ROOT" sbin/nbd-client || { log "nbd-client's libraries are incomplete"; exit 1; }
for f in "$PPC_ROOT/bin/busybox" "$X86_ROOT/bin/busybox" "$X86_ROOT/sbin/nbd-client" \
  "$X86_ROOT/usr/bin/grub-mkimage" "$PPC_ROOT/usr/lib/grub/powerpc-ieee1275/kernel.img"; do
  [ -e "$f" ] || { log "missing $f after extraction"; exit 1; }
done

cat > "$ENV_FILE" <<ENV
# Written by scripts/guests/fetch.sh
KVER_PPC64=$KVER_PPC64
ROOT_PPC64=$PPC_ROOT
KVER_X86=$KVER_X86
ROOT_X86=$X86_ROOT
BUSYBOX_HOST=$X86_ROOT/bin/busybox
# grub-mkimage from the cache: LD_LIBRARY_PATH=\$GRUB_LIBPATH \$GRUB_MKIMAGE -d \$GRUB_PPC_DIR ...
GRUB_MKIMAGE=$X86_ROOT/usr/bin/grub-mkimage
GRUB_LIBPATH=$X86_ROOT/lib/x86_64-linux-gnu:$X86_ROOT/usr/lib/x86_64-linux-gnu
GRUB_PPC_DIR=$PPC_ROOT/usr/lib/grub/powerpc-ieee1275
FETCHED_VERSION=$FETCH_VERSION
ENV
date -u +%FT%TZ > "$PPC_ROOT/.ssp-fetched"
date -u +%FT%TZ > "$X86_ROOT/.ssp-fetched"
echo "$ENV_FILE"
