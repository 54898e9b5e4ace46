#!/usr/bin/env bash
# Replication between two pools, each served by its own sspd, in one run:
#
#   send+receive full   sspctl --pool A send src@s1 | sspctl --pool B receive full
#                       (both online, through the sspd admin sockets)
#   nbdcopy             nbdcopy of the same snapshot, A's export src@s1 -> an LU of B
#   send+receive incr   after 1 % of the LU's 4 KiB blocks were rewritten at random and
#                       src@s2 taken: send src@s2 --from src@s1 | receive full
#
# and prints a Markdown table (seconds, MiB/s of the LU size, and the incremental's time as a
# percentage of the full send's). The goals (issue 14): the full send at least as fast as
# nbdcopy, the incremental at most 3 % of the full send's time. Both copies are then compared
# (qemu-img compare over NBD) so a fast wrong copy does not count.
#
# Usage: scripts/bench-send.sh            (4 GiB: a few minutes on an idle 2-core machine)
#        SIZE=64M scripts/bench-send.sh   (smoke test)
# Environment (defaults in brackets):
#   SIZE          LU size, with a K/M/G suffix [4G]
#   BENCH_DIR     data and logs [${CARGO_TARGET_DIR:-target}/bench-send]
#   SSPD, SSPCTL  use these binaries instead of building them (cargo build --release)
#   BENCH_KEEP_DATA=1 keep the pools after the run
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BENCH_NAME=bench-send
# shellcheck source=scripts/lib/bench-common.sh
source "$ROOT/scripts/lib/bench-common.sh"

SIZE=${SIZE:-4G}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH_DIR=${BENCH_DIR:-$TARGET_DIR/bench-send}

ensure_tools nbdcopy=libnbd-bin qemu-img=qemu-utils qemu-io=qemu-utils

to_bytes() {
    local s=$1 n u
    n=${s%[KkMmGgTt]}
    u=${s#"$n"}
    case $u in
    K | k) echo $((n << 10)) ;;
    M | m) echo $((n << 20)) ;;
    G | g) echo $((n << 30)) ;;
    T | t) echo $((n << 40)) ;;
    "") echo "$n" ;;
    esac
}
BYTES=$(to_bytes "$SIZE")
((BYTES >= 1 << 20)) || { echo "SIZE must be at least 1M" >&2; exit 1; }
PV_BYTES=$((BYTES * 4 + (1 << 30)))

if [[ -n ${SSPD:-} && -n ${SSPCTL:-} ]]; then
    [[ -x $SSPD && -x $SSPCTL ]] || { echo "SSPD=$SSPD / SSPCTL=$SSPCTL are not executables" >&2; exit 1; }
else
    log "building sspd and sspctl (release, target dir $TARGET_DIR)"
    cargo build --release --locked --bin sspd --bin sspctl >&2
    SSPD=$TARGET_DIR/release/sspd
    SSPCTL=$TARGET_DIR/release/sspctl
fi

RUN=$(mktemp -d /tmp/ssp-bsend.XXXXXX) # sockets (short paths)
LOGS=$BENCH_DIR/logs
DATA=$BENCH_DIR/data
PIDS=()

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    rm -rf "$RUN"
    if [[ ${BENCH_KEEP_DATA:-0} != 1 ]]; then rm -rf "$DATA"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rm -rf "$LOGS" "$DATA"
mkdir -p "$LOGS" "$DATA"

# serve TAG: create pool TAG and serve it on $RUN/TAG.sock.
serve() {
    local tag=$1
    "$SSPCTL" --pool "$DATA/$tag" pool create --pv "$DATA/$tag.pv:$PV_BYTES" >>"$LOGS/commands.log"
    "$SSPD" --pool "$DATA/$tag" --unix "$RUN/$tag.sock" >"$LOGS/sspd-$tag.log" 2>&1 &
    PIDS+=($!)
    local i
    for ((i = 0; i < 300; i++)); do
        [[ -S $RUN/$tag.sock && -S $DATA/$tag/admin.sock ]] && return 0
        sleep 0.1
    done
    echo "sspd for pool $tag did not start: $(tail -n 5 "$LOGS/sspd-$tag.log")" >&2
    exit 1
}
uri() { echo "nbd+unix:///$2?socket=$RUN/$1.sock"; }
A() { "$SSPCTL" --pool "$DATA/a" "$@"; }
B() { "$SSPCTL" --pool "$DATA/b" "$@"; }
now() { date +%s.%N; }
secs() { "$PYTHON" -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$1" "$2"; }

serve a
serve b
A lu create src --size "$BYTES" >>"$LOGS/commands.log"
B lu create copy --size "$BYTES" >>"$LOGS/commands.log"
log "filling src with $SIZE of random data"
head -c "$BYTES" /dev/urandom | nbdcopy - "$(uri a src)"
A snapshot create src@s1 >>"$LOGS/commands.log"
sync

# Two rounds, alternating which copy goes first (the page cache and the disk's writeback carry
# state from one copy to the next); each figure is the faster of its two runs.
FULLS=()
NBDCOPYS=()
full_copy() {
    log "send+receive, full ($1)"
    sync
    local t0 t1
    t0=$(now)
    A send src@s1 | B receive "$1" >>"$LOGS/commands.log"
    t1=$(now)
    FULLS+=("$(secs "$t0" "$t1")")
}
nbd_copy() {
    log "nbdcopy of the same snapshot"
    sync
    local t0 t1
    t0=$(now)
    # --flush: a receive ends with its data durable (it syncs the pool), so the copy it is
    # compared with must end durable too.
    nbdcopy --flush "$(uri a src@s1)" "$(uri b copy)"
    t1=$(now)
    NBDCOPYS+=("$(secs "$t0" "$t1")")
}
full_copy full
nbd_copy
nbd_copy
full_copy full2
FULL=$("$PYTHON" -c 'import sys; print(min(map(float, sys.argv[1:])))' "${FULLS[@]}")
NBDCOPY=$("$PYTHON" -c 'import sys; print(min(map(float, sys.argv[1:])))' "${NBDCOPYS[@]}")
log "full send+receive runs: ${FULLS[*]} s; nbdcopy runs: ${NBDCOPYS[*]} s"

BLOCKS=$((BYTES / 4096))
CHANGE=$(((BLOCKS + 99) / 100))
log "rewriting $CHANGE random 4 KiB blocks (1 %)"
"$PYTHON" - "$BLOCKS" "$CHANGE" >"$RUN/writes.qio" <<'EOF'
import random, sys
blocks, n = int(sys.argv[1]), int(sys.argv[2])
for b in random.Random(1).sample(range(blocks), n):
    print(f"write -P {b % 251} {b * 4096} 4k")
EOF
qemu-io -f raw "$(uri a src)" <"$RUN/writes.qio" >>"$LOGS/commands.log"
A snapshot create src@s2 >>"$LOGS/commands.log"
sync

log "send+receive, incremental"
t0=$(now)
A send src@s2 --from src@s1 | B receive full >>"$LOGS/commands.log"
t1=$(now)
INCR=$(secs "$t0" "$t1")

log "checking the copies"
qemu-img compare -f raw -F raw "$(uri a src@s1)" "$(uri b full@s1)" >>"$LOGS/commands.log"
qemu-img compare -f raw -F raw "$(uri a src@s1)" "$(uri b copy)" >>"$LOGS/commands.log"
qemu-img compare -f raw -F raw "$(uri a src@s2)" "$(uri b full@s2)" >>"$LOGS/commands.log"

echo
echo "bench-send: $SIZE LU, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs"
echo
"$PYTHON" - "$BYTES" "$FULL" "$NBDCOPY" "$INCR" <<'EOF'
import sys
size, full, nbdcopy, incr = int(sys.argv[1]), *map(float, sys.argv[2:])
mib = size / 1048576
print("| copy | seconds | MiB/s (of the LU) | note |")
print("|---|---:|---:|---|")
print(f"| send+receive, full | {full:.2f} | {mib / full:.0f} | {100 * full / nbdcopy:.0f} % of nbdcopy's time |")
print(f"| nbdcopy (same snapshot) | {nbdcopy:.2f} | {mib / nbdcopy:.0f} | |")
print(f"| send+receive, incremental (1 % changed) | {incr:.2f} | {mib / incr:.0f} | {100 * incr / full:.1f} % of the full send's time |")
EOF
