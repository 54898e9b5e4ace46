#!/usr/bin/env bash
# Hostile NBD clients against sspd and its peers -- qemu-nbd (raw file), nbdkit (file plugin)
# and nbd-server -- in one run, each server fresh for each case, on the same cases (issue 10):
#
#   zeroes  WRITE_ZEROES with NO_HOLE, then TRIM, of 512 GiB on a 1 TiB export with extended
#           headers where the server negotiates them, else of 0xFFFFF000 bytes (60 s per reply)
#   zeroes32  the same with compact headers for every server: 0xFFFFF000 bytes
#   hoard   2000 READs of 32 MiB whose replies are never read (stop sending when the socket
#           blocks for 5 s), wait 5 s, close
#   churn   20,000 x connect, handshake, close
#   flood   the server under `prlimit --nofile=256:256`, 400 idle connections: is a fresh
#           client served meanwhile? (sspd: and `sspctl lu list`?)
#   slow    connect and send nothing for 30 s: does the server close it, and when?
#
# Per case and server: RSS before, at its peak (VmRSS of the server and, for nbd-server, its
# per-connection children, summed and sampled every 50 ms) and 3 s after the client left;
# whether the server is still alive and a fresh client (handshake + 4 KiB READ within 10 s) is
# served afterwards. The clients are raw-socket Python (scripts/lib/hostile.py, /usr/bin/python3).
# Exports: sspd a 1 TiB thin LU of a pool on a sparse PV file, the peers a 1 TiB sparse raw file
# each, all on a tmpfs of HOSTILE_TMPFS_GIB (so zero-filling servers hit ENOSPC there, not the
# disk). The table goes to stdout and, with the date and commit, to docs/bench-hostile.md.
# Takes about 20 minutes. Needs root (apt-get, mount).
#
# Environment (defaults in brackets):
#   HOSTILE_SERVERS   ["sspd qemu-nbd nbdkit nbd-server"]
#   HOSTILE_CASES     ["zeroes zeroes32 hoard churn flood slow"]
#   HOSTILE_CHURN     connections in the churn case [20000]
#   HOSTILE_PV_GIB    sspd's PV size [2]
#   HOSTILE_TMPFS_GIB [6]
#   HOSTILE_DOC       [docs/bench-hostile.md]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BENCH_NAME=bench-hostile
# shellcheck source=lib/bench-common.sh
source scripts/lib/bench-common.sh

SERVERS=${HOSTILE_SERVERS:-sspd qemu-nbd nbdkit nbd-server}
CASES=${HOSTILE_CASES:-zeroes zeroes32 hoard churn flood slow}
DOC=${HOSTILE_DOC:-$ROOT/docs/bench-hostile.md}

ensure_tools nbdkit=nbdkit nbd-server=nbd-server qemu-nbd=qemu-utils nbdinfo=libnbd-bin prlimit=util-linux
nbdkit file --version >/dev/null 2>&1 || die77 "nbdkit has no file plugin"
log "building sspd and sspctl (release)"
env -u CARGO_TARGET_DIR cargo build --release --locked --bin sspd --bin sspctl >&2

RUN=$(mktemp -d /tmp/ssp-hostile.XXXXXX)
cleanup() {
  # Servers are stopped by hostile.py; anything it left behind dies with the tmpfs.
  mountpoint -q "$RUN/data" && umount -l "$RUN/data"
  rm -rf "$RUN"
}
trap cleanup EXIT
mkdir -p "$RUN/data"
mount -t tmpfs -o "size=${HOSTILE_TMPFS_GIB:-6}G" tmpfs "$RUN/data" || die77 "cannot mount a tmpfs"

read -r -a servers <<<"$SERVERS"
read -r -a cases <<<"$CASES"
"$PYTHON" - "$RUN/config.json" "$RUN/data" "${servers[*]}" "${cases[*]}" <<PY
import json, sys
json.dump({"dir": sys.argv[2], "servers": sys.argv[3].split(), "cases": sys.argv[4].split(),
           "sspd": "$ROOT/target/release/sspd", "sspctl": "$ROOT/target/release/sspctl",
           "pv_gib": int("${HOSTILE_PV_GIB:-2}"), "churn": int("${HOSTILE_CHURN:-20000}"),
           "op_seconds": 60, "slow_seconds": 30}, open(sys.argv[1], "w"))
PY
# A server that dies leaves its children (nbd-server) to hostile.py's stop(); the whole run is
# bounded by each case's own limits (at most ~5 min per case and server).
timeout 7200 "$PYTHON" scripts/lib/hostile.py "$RUN/config.json" "$RUN/rows.json"

"$PYTHON" - "$RUN/rows.json" "$DOC" <<PY
import json, subprocess, sys, time
rows = json.load(open(sys.argv[1]))
mib = lambda k: "-" if k is None else f"{k / 1024:.0f}"
yn = lambda b: "yes" if b else "**no**"
git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                     text=True).stdout.strip()
dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                       capture_output=True, text=True).stdout.strip()
ver = lambda c: subprocess.run(c, capture_output=True, text=True, shell=True).stdout.strip()
table = ["| case | server | RSS before MiB | RSS peak MiB | RSS after MiB | alive after | fresh client during | fresh client after | what happened |",
         "| --- | --- | ---: | ---: | ---: | --- | --- | --- | --- |"]
for r in rows:
    during = "-" if r.get("during") is None else yn(r["during"])
    table.append(f"| {r['case']} | {r['server']} | {mib(r.get('before'))} | {mib(r.get('peak'))} | "
                 f"{mib(r.get('after'))} | {yn(r.get('alive'))} | {during} | {yn(r.get('served'))} | "
                 f"{r.get('notes', '').replace('|', '/')} |")
text = "\n".join(table)
print(text)
doc = f"""# Hostile NBD clients: sspd vs qemu-nbd, nbdkit and nbd-server

Made by \`scripts/bench-hostile.sh\` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, sspd at
commit {git}{' (with uncommitted changes)' if dirty else ''}; $(machine_desc).
Versions: {ver('qemu-nbd --version | head -1')}; {ver('nbdkit --version')}; {ver("nbd-server -V 2>&1 | head -1 | sed 's/This is //'")}.

Each server is started fresh for each case, with a 1 TiB export on a {int("${HOSTILE_TMPFS_GIB:-6}")} GiB tmpfs
(sspd: a thin LU on a {int("${HOSTILE_PV_GIB:-2}")} GiB sparse PV file; the peers: a sparse raw file).
RSS is VmRSS from /proc (for nbd-server summed with its per-connection children), sampled every
50 ms: before the case, its peak, and 4 s after the client left ("-": the server died). A fresh
client negotiates (NBD_OPT_GO) and reads 4 KiB within 10 s: "during" the flood (400 connections
open) and the slow handshake (the silent connection open), and "after" every case.

Cases: **huge WRITE_ZEROES/TRIM**: WRITE_ZEROES with NO_HOLE, then TRIM, of 512 GiB with extended
headers where the server negotiates them, else of 0xFFFFF000 bytes (each reply awaited 60 s);
then the same with compact headers (0xFFFFF000 bytes) for every server.
**Reply hoarding**: 2000 READs of 32 MiB, replies never read; sending stops when the socket
blocks for 5 s; then 5 s wait and close. **Connection churn**: {int("${HOSTILE_CHURN:-20000}")} x
connect, NBD_OPT_GO, close (at most 240 s). **Flood**: the server under \`prlimit --nofile=256:256\`,
400 idle connections, then a fresh client (and for sspd \`sspctl lu list\`) during the flood.
**Slow handshake**: connect, read the greeting, send nothing for 30 s.

{text}
"""
open(sys.argv[2], "w").write(doc)
PY
log "wrote $DOC"
