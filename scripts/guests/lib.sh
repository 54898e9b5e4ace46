# Helpers shared by the guest build scripts (sourced, not run).
# shellcheck shell=bash

GUESTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GUEST_CACHE="${SSP_GUEST_CACHE:-${HOME:-/root}/.cache/ssp-guests}"

# Fetch (cached) and load guests.env: KVER_PPC64, ROOT_PPC64, KVER_X86, ROOT_X86, BUSYBOX_HOST.
guest_env() {
  local env_file
  env_file=$("$GUESTS_DIR/fetch.sh")
  # shellcheck disable=SC1090
  . "$env_file"
}

# A stamp of everything a build depends on: the scripts and the fetched packages. A build
# whose output directory holds the same stamp is up to date.
build_stamp() {
  local root=$1
  shift
  cat "$@" "$GUESTS_DIR/lib.sh" "$root/.ssp-packages" | sha256sum | cut -d' ' -f1
}

# The module file for each module name in a module tree (names use '_', files may use '-').
# Prints "name path" lines.
module_index() {
  local moddir=$1
  find "$moddir/kernel" -name '*.ko' | while read -r f; do
    local b=${f##*/}
    b=${b%.ko}
    echo "${b//-/_} $f"
  done
}

# The modules $2.. of module tree $1 with all their dependencies (from each module's .modinfo
# depends= field, as Debian ships no modules.dep), dependencies first, as paths relative to the
# module tree. Built-in modules (modules.builtin) are skipped.
resolve_modules() {
  local moddir=$1
  shift
  local -A file=() state=()
  local name path
  while read -r name path; do file[$name]=$path; done < <(module_index "$moddir")
  local -A builtin=()
  if [ -f "$moddir/modules.builtin" ]; then
    while read -r path; do
      name=${path##*/}
      name=${name%.ko}
      builtin[${name//-/_}]=1
    done < "$moddir/modules.builtin"
  fi
  visit() {
    local m=${1//-/_} d deps
    [ -n "${builtin[$m]:-}" ] && return 0
    case "${state[$m]:-}" in "done" | active) return 0 ;; esac
    if [ -z "${file[$m]:-}" ]; then
      echo "resolve_modules: no module $m in $moddir" >&2
      return 1
    fi
    state[$m]=active
    deps=$(readelf -p .modinfo "${file[$m]}" | sed -n 's/.*\] *depends=//p' | tr ',' ' ')
    for d in $deps; do visit "$d" || return 1; done
    state[$m]="done"
    echo "${file[$m]#"$moddir"/}"
  }
  local m
  for m in "$@"; do visit "$m" || return 1; done
}

# Copy modules $3.. (with dependencies) of module tree $1 into the initramfs tree $2 (same
# paths under lib/modules/KVER) and list them, in load order, in $2/etc/modules.load.
stage_modules() {
  local moddir=$1 tree=$2
  shift 2
  local kver=${moddir##*/} rel
  mkdir -p "$tree/lib/modules/$kver" "$tree/etc"
  : > "$tree/etc/modules.load"
  while read -r rel; do
    mkdir -p "$tree/lib/modules/$kver/$(dirname "$rel")"
    cp "$moddir/$rel" "$tree/lib/modules/$kver/$rel"
    echo "/lib/modules/$kver/$rel" >> "$tree/etc/modules.load"
  done < <(resolve_modules "$moddir" "$@")
  cp "$moddir/modules.order" "$moddir/modules.builtin" "$tree/lib/modules/$kver/" 2>/dev/null || true
  # modules.dep too, so that modprobe works in the guest (busybox depmod, run on the host).
  "$BUSYBOX_HOST" depmod -b "$tree" "$kver" 2>/dev/null || true
}

# Static busybox $2 into tree $1 as /bin/busybox, with a symlink for each applet that $3 (a
# busybox runnable on the host) lists.
install_busybox() {
  local tree=$1 bb=$2 host_bb=$3 a
  mkdir -p "$tree/bin" "$tree/sbin" "$tree/usr/bin" "$tree/usr/sbin"
  cp "$bb" "$tree/bin/busybox"
  for a in $("$host_bb" --list-full); do
    [ -e "$tree/$a" ] || ln -s /bin/busybox "$tree/$a"
  done
}

# A gzip'd newc cpio archive of tree $1 into file $2, every file owned by root.
make_cpio() {
  local tree=$1 out=$2
  (cd "$tree" && find . -mindepth 1 | LC_ALL=C sort | "$BUSYBOX_HOST" cpio -o -H newc -R 0:0 2>/dev/null) |
    gzip -9n > "$out.tmp"
  mv "$out.tmp" "$out"
}

# 4 little-endian bytes of N.
le32() {
  printf "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $((($1 >> 8) & 255)) \
    $((($1 >> 16) & 255)) $((($1 >> 24) & 255)))"
}

# An MBR partition table on image $1 (the boot code area is left as it is): each further
# argument is a partition BOOT:TYPE:START:SECTORS (BOOT 0x80 or 0, TYPE e.g. 0x41 PReP,
# 0x83 Linux; START and SECTORS in 512-byte sectors). CHS fields say "use LBA".
write_mbr() {
  local img=$1 n=0 p boot type start sectors
  shift
  {
    for p in "$@"; do
      IFS=: read -r boot type start sectors <<< "$p"
      printf "\\x$(printf %02x $((boot)))\\xfe\\xff\\xff\\x$(printf %02x $((type)))\\xfe\\xff\\xff"
      le32 "$start"
      le32 "$sectors"
      n=$((n + 1))
    done
    while [ $n -lt 4 ]; do
      head -c 16 /dev/zero
      n=$((n + 1))
    done
    printf '\x55\xaa'
  } | dd of="$img" bs=1 seek=446 conv=notrunc status=none
}
