#!/usr/bin/env bash
# Multi-conn read scaling: 4 KiB random reads through fio's nbd engine on one connection at
# QD32 and on four connections at QD8 each (the same total queue depth), against sspd and
# against nbdkit's file plugin on a file of the same size, in one run. The goal (issue 11) is
# that four connections to one LU are not slower than one.
#
# Usage: scripts/bench-multiconn.sh [SSPD_BIN_DIR]   (default: target/release)
# Environment:
#   BENCH_DIR        work directory [a new mktemp -d]
#   BENCH_SIZE_MB    data written to the LU (and the nbdkit file size) [1024]
#   BENCH_RUNTIME    seconds per fio run [10]
#   BENCH_SERVERS    ["sspd nbdkit"]
# Prints one line per run: server, layout, IOPS. Exit 77 when a tool is missing.
set -euo pipefail
BENCH_NAME=bench-multiconn
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib/bench-common.sh
source "$here/lib/bench-common.sh"

BIN=${1:-$here/../target/release}
SIZE_MB=${BENCH_SIZE_MB:-1024}
RUNTIME=${BENCH_RUNTIME:-10}
read -r -a SERVERS <<<"${BENCH_SERVERS:-sspd nbdkit}"
DIR=${BENCH_DIR:-$(mktemp -d)}
ensure_tools fio=fio nbdkit=nbdkit nbdcopy=libnbd-bin
[[ -x $BIN/sspd && -x $BIN/sspctl ]] || die77 "no sspd/sspctl in $BIN (cargo build --release)"

SRV=""
cleanup() { [[ -n $SRV ]] && stop_pid "$SRV"; }
trap cleanup EXIT

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() { # PORT
    local i
    for ((i = 0; i < 100; i++)); do
        nbdinfo --size "nbd://127.0.0.1:$1/${2:-}" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die77 "server on port $1 did not come up"
}

fio_iops() { # URI IODEPTH NUMJOBS (fio prints "connected" lines before its JSON)
    fio --name=r --ioengine=nbd --uri="$1" --rw=randread --bs=4k --iodepth="$2" \
        --numjobs="$3" --group_reporting --time_based --runtime="$RUNTIME" \
        --size="${SIZE_MB}M" --output-format=json 2>/dev/null |
        "$PYTHON" -c 'import json,sys; s=sys.stdin.read(); j=json.loads(s[s.index("{"):]); print(round(j["jobs"][0]["read"]["iops"]))'
}

measure() { # SERVER URI
    printf '%-8s 1 conn x QD32: %8s IOPS\n' "$1" "$(fio_iops "$2" 32 1)"
    printf '%-8s 4 conn x QD8 : %8s IOPS\n' "$1" "$(fio_iops "$2" 8 4)"
}

head -c $((SIZE_MB << 20)) /dev/urandom >"$DIR/data.img"
for s in "${SERVERS[@]}"; do
    port=$(free_port)
    case $s in
    sspd)
        rm -rf "$DIR/pool" "$DIR/pv0.img"
        "$BIN/sspctl" --pool "$DIR/pool" pool create --pv "$DIR/pv0.img:$((SIZE_MB * 3))M" >/dev/null
        "$BIN/sspctl" --pool "$DIR/pool" lu create lu --size "${SIZE_MB}M" >/dev/null
        RUST_LOG=warn "$BIN/sspd" --pool "$DIR/pool" --listen "127.0.0.1:$port" >"$DIR/sspd.log" 2>&1 &
        SRV=$!
        wait_port "$port" lu
        nbdcopy "$DIR/data.img" "nbd://127.0.0.1:$port/lu"
        measure sspd "nbd://127.0.0.1:$port/lu"
        ;;
    nbdkit)
        nbdkit --exit-with-parent -f -p "$port" -i 127.0.0.1 file "$DIR/data.img" &
        SRV=$!
        wait_port "$port"
        measure nbdkit "nbd://127.0.0.1:$port/"
        ;;
    *) die77 "unknown server $s" ;;
    esac
    stop_pid "$SRV"
    SRV=""
done
[[ -n ${BENCH_DIR:-} ]] || rm -rf "$DIR"
