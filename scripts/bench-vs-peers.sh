#!/usr/bin/env bash
# Benchmark sspd against its peers -- qemu-nbd, nbdkit (file plugin) and nbd-server -- in one
# run, with the same fio workloads (fio's libnbd-based `nbd` ioengine) against each server in
# turn, over a unix socket and over TCP loopback:
#
#   4 KiB random read / random write at queue depth 32,
#   1 MiB sequential read / sequential write at queue depth 8,
#
# each on a 4 GiB export of its own: sspd serves one 4 GiB thin LU of a pool on a 6 GiB sparse
# PV file, every peer serves one 4 GiB raw file. Every export is prefilled (written sequentially
# once) before it is measured. The read workloads run with the data on the repository's disk
# (ext4 here); the write workloads run there and again with the data on a tmpfs. Servers are
# interleaved: for each workload and transport every server runs in turn (the starting server
# rotates from one group to the next), so slow phases of the machine hit everyone alike.
#
# For every run the table gives IOPS, MiB/s, fio's p99 completion latency, the server's CPU time
# per request (utime+stime of the server process -- and of its per-connection children for
# nbd-server, which forks one per client -- sampled from /proc/PID/stat every 0.1 s and taken
# over exactly the measured window, i.e. after fio's ramp, divided by the I/Os fio completed in
# it) and the ratio of its IOPS to the best peer (qemu-nbd, nbdkit, nbd-server) on the same
# workload, transport and storage in this run.
#
# The table is printed as Markdown and written, with the date, the machine and the versions, to
# docs/bench-vs-peers.md. Logs and fio's JSON of the last run stay in $BENCH_DIR/logs.
#
# Needs root (apt-get installs fio, nbdkit, nbd-server, qemu-utils, libnbd-bin when missing; the
# tmpfs is mounted with `mount -t tmpfs`, else /dev/shm is used when it is big enough). Exits 77
# when a required tool cannot be installed. Takes about 15 minutes on a 2-core machine.
#
# Usage: scripts/bench-vs-peers.sh
# Environment (defaults in brackets):
#   BENCH_DIR         where the disk-backed data and the logs go [$PWD/target/bench-peers]
#   BENCH_RUNTIME     measured seconds per fio run [8]
#   BENCH_RAMP        fio ramp seconds before measuring [2]
#   BENCH_SIZE_GIB    export size in GiB [4]
#   BENCH_PV_GIB      sspd's sparse PV size in GiB [6]
#   BENCH_SERVERS     servers to run ["sspd qemu-nbd nbdkit nbd-server"]
#   BENCH_TRANSPORTS  ["unix tcp"]
#   BENCH_STORAGES    ["disk tmpfs"] (disk = $BENCH_DIR's filesystem, labelled by its type)
#   BENCH_WORKLOADS   ["randread randwrite seqread seqwrite"]
#   BENCH_DOC         the Markdown report to write [docs/bench-vs-peers.md]
#   BENCH_KEEP_DATA=1 keep the disk-backed export files after the run (default: removed)
#   SSP_ENGINES       sspd's PV I/O engines to run side by side, e.g. "sync uring" (each is a
#                     server of its own, sspd-ENGINE-CACHE); unset: one sspd with its defaults
#   SSP_CACHE         sspd's cache modes to run side by side, e.g. "writeback none" [writeback
#                     when SSP_ENGINES is set]; `none` (O_DIRECT) is skipped on tmpfs, which
#                     has no O_DIRECT
# Example: SSP_ENGINES="sync uring" SSP_CACHE="writeback none" BENCH_SERVERS="sspd nbdkit" \
#          scripts/bench-vs-peers.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

RUNTIME=${BENCH_RUNTIME:-8}
RAMP=${BENCH_RAMP:-2}
SIZE_GIB=${BENCH_SIZE_GIB:-4}
PV_GIB=${BENCH_PV_GIB:-6}
BENCH_DIR=${BENCH_DIR:-$ROOT/target/bench-peers}
read -r -a SERVERS <<<"${BENCH_SERVERS:-sspd qemu-nbd nbdkit nbd-server}"
read -r -a TRANSPORTS <<<"${BENCH_TRANSPORTS:-unix tcp}"
read -r -a STORAGES <<<"${BENCH_STORAGES:-disk tmpfs}"
read -r -a WORKLOADS <<<"${BENCH_WORKLOADS:-randread randwrite seqread seqwrite}"
# sspd's engines and cache modes side by side: "sspd" becomes sspd-ENGINE-CACHE for each pair.
if [[ -n ${SSP_ENGINES:-}${SSP_CACHE:-} ]]; then
    read -r -a SSP_ENGINE_LIST <<<"${SSP_ENGINES:-auto}"
    read -r -a SSP_CACHE_LIST <<<"${SSP_CACHE:-writeback}"
    expanded=()
    for s in "${SERVERS[@]}"; do
        if [[ $s == sspd ]]; then
            for e in "${SSP_ENGINE_LIST[@]}"; do
                for c in "${SSP_CACHE_LIST[@]}"; do expanded+=("sspd-$e-$c"); done
            done
        else
            expanded+=("$s")
        fi
    done
    SERVERS=("${expanded[@]}")
fi
# sspd and sspctl read SSP_CACHE themselves (one mode): the list above is the script's.
unset SSP_CACHE
DOC=${BENCH_DOC:-$ROOT/docs/bench-vs-peers.md}
EXPORT=bench
TMPFS_GIB=$((PV_GIB > SIZE_GIB ? PV_GIB + 4 : SIZE_GIB + 4))
FIO_TIMEOUT=$((RUNTIME + RAMP + 60))        # a hung server must not hang the script
PREFILL_TIMEOUT=$((SIZE_GIB * 150 + 60))    # >= 7 MiB/s
START_TIMEOUT_TENTHS=600                    # 60 s for a server to answer nbdinfo

BENCH_NAME=bench-vs-peers
# shellcheck source=scripts/lib/bench-common.sh
source "$ROOT/scripts/lib/bench-common.sh"   # PYTHON, log, die77, ensure_tools, stop_pid, ...

# ---------------------------------------------------------------------------------------------
# Tools: install what is missing with apt (apt-get update first), exit 77 when that fails.
# ---------------------------------------------------------------------------------------------
ensure_tools fio=fio nbdkit=nbdkit nbd-server=nbd-server qemu-nbd=qemu-utils nbdinfo=libnbd-bin
fio --enghelp=nbd 2>/dev/null | grep -q uri || die77 "this fio has no nbd ioengine (libnbd)"
nbdkit file --version >/dev/null 2>&1 || die77 "nbdkit has no file plugin"
command -v "$PYTHON" >/dev/null 2>&1 || die77 "python3 is needed to read fio's JSON"
[[ $(id -u) == 0 ]] || log "warning: not root; mounting a tmpfs will fail (falls back to /dev/shm)"

# ---------------------------------------------------------------------------------------------
# ssp itself (default target dir, as the rest of the tree builds it).
# ---------------------------------------------------------------------------------------------
log "building sspd and sspctl (release)"
env -u CARGO_TARGET_DIR cargo build --release --locked --bin sspd --bin sspctl >&2
SSPD=$ROOT/target/release/sspd
SSPCTL=$ROOT/target/release/sspctl
[[ -x $SSPD && -x $SSPCTL ]] || { echo "no $SSPD / $SSPCTL after the build" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Work areas and cleanup.
# ---------------------------------------------------------------------------------------------
RUN=$(mktemp -d /tmp/ssp-bvp.XXXXXX)        # sockets (short paths), configs, pid files
LOGS=$BENCH_DIR/logs
DISK_DATA=$BENCH_DIR/data
TMPFS_DIR=""
TMPFS_MOUNTED=0
SRV_PID=""          # the server being measured (its pid; nbd-server: the daemon's pid)
SRV_CHILD=""        # the server process started by this script and still to be reaped
BG_PIDS=()          # fio / sampler running in the background

stop_server() {
    local kids=() k
    if [[ -n $SRV_PID ]]; then
        mapfile -t kids < <(children_of "$SRV_PID")
        stop_pid "$SRV_PID"
        for k in "${kids[@]}"; do stop_pid "$k"; done
    fi
    if [[ -n $SRV_CHILD ]]; then
        [[ $SRV_CHILD == "$SRV_PID" ]] || stop_pid "$SRV_CHILD"
        wait "$SRV_CHILD" 2>/dev/null || true
    fi
    SRV_PID=""
    SRV_CHILD=""
}

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${BG_PIDS[@]}"; do stop_pid "$p"; done
    stop_server
    if ((TMPFS_MOUNTED)); then
        umount "$TMPFS_DIR" 2>/dev/null || umount -l "$TMPFS_DIR" 2>/dev/null || true
    fi
    [[ -n $TMPFS_DIR ]] && rm -rf "$TMPFS_DIR"
    rm -rf "$RUN"
    if [[ ${BENCH_KEEP_DATA:-0} != 1 ]]; then rm -rf "$DISK_DATA"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rm -rf "$LOGS" "$DISK_DATA"
mkdir -p "$LOGS" "$DISK_DATA" "$RUN/sock" "$(dirname "$DOC")"
DISK_FS=$(findmnt -n -o FSTYPE -T "$BENCH_DIR" 2>/dev/null || df --output=fstype "$BENCH_DIR" | tail -1)
DISK_FS=${DISK_FS:-disk}

# tmpfs: mount one (root), else /dev/shm when it has room for one server's data at a time.
setup_tmpfs() {
    TMPFS_DIR=$(mktemp -d /tmp/ssp-bvp-tmpfs.XXXXXX)
    if mount -t tmpfs -o "size=${TMPFS_GIB}G" tmpfs "$TMPFS_DIR" 2>/dev/null; then
        TMPFS_MOUNTED=1
        log "tmpfs (${TMPFS_GIB} GiB) mounted at $TMPFS_DIR"
        return 0
    fi
    rmdir "$TMPFS_DIR"
    TMPFS_DIR=""
    local avail_kib
    avail_kib=$(df --output=avail -k /dev/shm 2>/dev/null | tail -1 || echo 0)
    if ((avail_kib >= TMPFS_GIB * 1024 * 1024)); then
        TMPFS_DIR=$(mktemp -d /dev/shm/ssp-bvp.XXXXXX)
        log "could not mount a tmpfs; using $TMPFS_DIR"
        return 0
    fi
    return 1
}

# ---------------------------------------------------------------------------------------------
# Helpers in Python: a CPU sampler and the per-run / final reports.
# ---------------------------------------------------------------------------------------------
write_cpu_sampler "$RUN/sampler.py"

cat >"$RUN/analyze.py" <<'PY'
# analyze.py FIO_JSON SAMPLES CLK_TCK RC STORAGE TRANSPORT WORKLOAD SERVER FIO_LOG SRV_ALIVE SRV_LOG
# Print one JSON line with the run's numbers (or its error) on stdout, a summary on stderr.
import atexit, json, re, sys
js, samples, hz, rc, storage, transport, workload, server, fio_log, alive, srv_log = sys.argv[1:12]
hz, rc = int(hz), int(rc)
row = dict(storage=storage, transport=transport, workload=workload, server=server, ok=False)
def tail(path, n):
    try:
        with open(path, errors="replace") as f:
            lines = [l.rstrip() for l in f if l.strip() and "connected to NBD server" not in l]
    except OSError:
        lines = []
    return lines[-n:]
def err_lines():
    # fio repeats an I/O error per request: keep the distinct ones (numbers aside), at most 5.
    seen, out = set(), []
    for l in tail(fio_log, 40):
        k = re.sub(r"\d+", "N", l)
        if k not in seen:
            seen.add(k)
            out.append(l)
    return out[-5:]
def finish():
    if alive != "1":
        row["ok"] = False
        row["error"] = ((row.get("error") or "") + " server exited during the run").strip()
        row["fio_output"] = (row.get("fio_output") or []) + \
            ["server log: " + l for l in tail(srv_log, 4)]
    print(json.dumps(row))
    if row.get("iops") is not None:
        p, c = row.get("p99_ms"), row.get("cpu_us_req")
        msg = (f"{row['iops']:>10,.0f} IOPS {row['mibs']:>8,.1f} MiB/s  p99 "
               f"{'-' if p is None else f'{p:.3f}'} ms  server CPU "
               f"{'-' if c is None else f'{c:.1f}'} us/req")
        if not row["ok"]:
            msg += f"  ERROR: {row.get('error')}"
    else:
        msg = f"FAILED: {row.get('error')}"
    if not row["ok"] and row.get("fio_output"):
        msg += "\n      " + "\n      ".join(row["fio_output"])
    print("      " + msg, file=sys.stderr)
atexit.register(finish)
try:
    with open(js, errors="replace") as f:
        text = f.read()
    j = json.loads(text[text.index("{"):])
    job = j["jobs"][0]
except (OSError, ValueError, KeyError, IndexError) as e:
    row["error"] = f"no fio JSON (fio exit {rc}" + (", timed out" if rc in (124, 137) else "") + ")"
    row["fio_output"] = err_lines()
    sys.exit(0)
ddir = "read" if "read" in workload else "write"
d = job[ddir]
ios = sum(job[k]["total_ios"] for k in ("read", "write", "trim") if k in job)
row.update(iops=d["iops"], mibs=d["bw_bytes"] / 2**20, ios=ios, runtime_ms=job["job_runtime"])
pct = (d.get("clat_ns") or {}).get("percentile") or {}
p99 = pct.get("99.000000")
row["p99_ms"] = p99 / 1e6 if p99 is not None else None
if job.get("error") or rc != 0 or ios == 0:
    row["error"] = f"fio error {job.get('error')} (exit {rc}" + \
        (", timed out" if rc in (124, 137) else "") + ")"
    row["fio_output"] = err_lines()
else:
    row["ok"] = True
# Server CPU over the measured window [end - job_runtime, end], end = fio's timestamp_ms.
pts = []
try:
    with open(samples) as f:
        for l in f:
            t, v = l.split()
            if v != "gone":
                pts.append((float(t), int(v)))
except (OSError, ValueError):
    pass
end = j.get("timestamp_ms", 0) / 1000.0
start = end - job["job_runtime"] / 1000.0
def at(t):
    if not pts or t < pts[0][0] - 0.25 or t > pts[-1][0] + 0.25:
        return None
    if t <= pts[0][0]:
        return pts[0][1]
    for (t0, v0), (t1, v1) in zip(pts, pts[1:]):
        if t0 <= t <= t1:
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1
    return pts[-1][1]
a, b = at(start), at(end)
if a is not None and b is not None and ios:
    row["cpu_s"] = (b - a) / hz
    row["cpu_us_req"] = (b - a) / hz * 1e6 / ios
    row["cpu_util"] = (b - a) / hz / (job["job_runtime"] / 1000.0) if job["job_runtime"] else None
PY

cat >"$RUN/report.py" <<'PY'
# report.py RESULTS_JSONL META_JSON DOC: print the Markdown table and write the report DOC.
import json, sys
res_path, meta_path, doc = sys.argv[1:4]
rows = [json.loads(l) for l in open(res_path) if l.strip()]
meta = json.load(open(meta_path))
WL = {"randread": "4k randread qd32", "randwrite": "4k randwrite qd32",
      "seqread": "1M seqread qd8", "seqwrite": "1M seqwrite qd8"}
order = lambda lst: {v: i for i, v in enumerate(lst)}
tr_o, st_o, wl_o, sv_o = (order(meta["transports"]), order(meta["storages"]),
                          order(meta["workloads"]), order(meta["servers"]))
rows.sort(key=lambda r: (tr_o.get(r["transport"], 9), st_o.get(r["storage"], 9),
                         wl_o.get(r["workload"], 9), sv_o.get(r["server"], 9)))
best = {}
for r in rows:
    if r["ok"] and not r["server"].startswith("sspd"):
        k = (r["transport"], r["storage"], r["workload"])
        best[k] = max(best.get(k, 0), r["iops"])
def f(v, fmt):
    return "–" if v is None else fmt.format(v)
hdr = ("| transport | storage | workload | server | IOPS | MiB/s | p99 ms | server CPU µs/req "
       "| vs best peer |")
lines = [hdr, "|---|---|---|---|--:|--:|--:|--:|--:|"]
notes = []
for r in rows:
    k = (r["transport"], r["storage"], r["workload"])
    head = f"| {r['transport']} | {r['storage']} | {WL.get(r['workload'], r['workload'])} | "
    name = f"**{r['server']}**" if r["server"].startswith("sspd") else r["server"]
    if not r["ok"] and r.get("iops") is None:
        lines.append(head + f"{name} | FAILED | | | | |")
    else:
        b = best.get(k)
        ratio = f"{r['iops'] / b:.2f}" if b and r.get("iops") is not None else "–"
        if not r["ok"]:
            ratio += " (error)"
        lines.append(head + f"{name} | {r['iops']:,.0f} | {r['mibs']:,.1f} | "
                     f"{f(r.get('p99_ms'), '{:.3f}')} | {f(r.get('cpu_us_req'), '{:.1f}')} | "
                     f"{ratio} |")
    if not r["ok"]:
        out = "; ".join(r.get("fio_output") or []) or "(no output)"
        notes.append(f"- {r['server']}, {r['transport']}, {r['storage']}, "
                     f"{WL.get(r['workload'], r['workload'])}: {r.get('error')}. "
                     f"fio/server said: `{out}`")
table = "\n".join(lines)
# sspd's ratio per group, compactly.
summ = ["| transport | storage | workload | sspd | sspd IOPS / best peer | best peer |",
        "|---|---|---|---|--:|---|"]
for r in rows:
    if not r["server"].startswith("sspd"):
        continue
    k = (r["transport"], r["storage"], r["workload"])
    b = best.get(k)
    who = [p["server"] for p in rows if p["ok"] and not p["server"].startswith("sspd") and
           (p["transport"], p["storage"], p["workload"]) == k and p["iops"] == b]
    val = f"{r['iops'] / b:.2f}" if (b and r["ok"]) else "FAILED" if not r["ok"] else "–"
    summ.append(f"| {k[0]} | {k[1]} | {WL.get(k[2], k[2])} | {r['server']} | {val} | {who[0] if who else '–'} |")
summary = "\n".join(summ)
print()
print(table)
print()
print(summary)
if notes:
    print("\nFailures:")
    print("\n".join(notes))
m = meta
doc_text = f"""# sspd vs qemu-nbd, nbdkit and nbd-server

Generated by `scripts/bench-vs-peers.sh` (run it as root from the repository; about 15 minutes
on 2 cores) on {m['date']}.

- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['mem_gib']:.1f} GiB memory, Linux {m['kernel']}.
- Versions: {m['fio']}; sspd {m['sspd']} (git {m['git']}); {m['qemu_nbd']}; {m['nbdkit']}; {m['nbd_server']}; {m['libnbd']}.
- Disk storage: {m['disk_fs']} (`{m['bench_dir']}`, the repository's filesystem). tmpfs storage: {m['tmpfs']}.

## Method

- Workloads (fio `ioengine=nbd`, one NBD connection per run): 4 KiB random read and random write at queue depth 32, 1 MiB sequential read and write at queue depth 8, each `--time_based --runtime={m['runtime']} --ramp_time={m['ramp']}`; the random ones with `--norandommap --randrepeat=0`.
- Each server serves its own {m['size_gib']} GiB export: sspd one thin LU of a pool on a {m['pv_gib']} GiB sparse PV file; qemu-nbd (`-f raw -t`), nbdkit (file plugin) and nbd-server (daemon mode: with `-d` it serves a single connection and exits, and fio's nbd engine connects twice) one raw file each, all with their default caching (page cache, no O_DIRECT). Every export is prefilled by one sequential 1 MiB fio write pass through its server before it is measured.
- Reads run on the disk storage only; writes on the disk storage and on tmpfs. On the disk storage the exports are prefilled once and `sync` runs before every measured run (so no run pays for an earlier run's write-back); on tmpfs each run gets a fresh export (created, prefilled, measured, removed), so only one server's data is in memory at a time.
- Interleaving: for each storage, workload and transport every server runs in turn, the first one rotating from group to group; each server is started for its run and stopped after it.
- Server CPU µs/req: utime+stime of the server process from `/proc/PID/stat` (all its threads; for nbd-server, which forks a child per connection, the children too), sampled every 0.1 s and interpolated to fio's measured window (after the ramp), divided by the I/Os fio completed in that window. p99 is fio's completion-latency (clat) 99th percentile.
- Ratio: the row's IOPS divided by the best peer's (qemu-nbd, nbdkit, nbd-server) IOPS on the same transport, storage and workload in this run; the best peer shows 1.00.
- fio runs on the same 2 cores as the server, so every number includes the competition with the client (alike for every server).

## Results

{table}

### sspd against the best peer

{summary}
"""
if notes:
    doc_text += "\n## Failures\n\n" + "\n".join(notes) + "\n"
with open(doc, "w") as f:
    f.write(doc_text)
print(f"\nwrote {doc}")
PY

CLK_TCK=$(getconf CLK_TCK)
RESULTS=$LOGS/results.jsonl
: >"$RESULTS"

# ---------------------------------------------------------------------------------------------
# Servers.
# ---------------------------------------------------------------------------------------------

# backing_create SERVER DIR: create the server's 4 GiB file or pool+LU under DIR.
backing_create() {
    local server=$1 dir=$2
    case $server in
    sspd*)
        rm -rf "$dir/$server-pool" "$dir/$server-pv0.img"
        "$SSPCTL" --pool "$dir/$server-pool" pool create --pv "$dir/$server-pv0.img:${PV_GIB}G" >&2 &&
            "$SSPCTL" --pool "$dir/$server-pool" lu create "$EXPORT" --size "${SIZE_GIB}G" >&2
        ;;
    *)
        rm -f "$dir/$server.img"
        truncate -s "${SIZE_GIB}G" "$dir/$server.img"
        ;;
    esac
}
backing_remove() {
    local server=$1 dir=$2
    rm -rf "$dir/$server-pool" "$dir/$server-pv0.img" "$dir/$server.img"
}

RUN_SEQ=0
# start_server SERVER DIR TRANSPORT LOG: start it, wait until it answers; sets SRV_PID, SRV_URI.
start_server() {
    local server=$1 dir=$2 transport=$3 srvlog=$4 port="" sock="" listen=() i
    RUN_SEQ=$((RUN_SEQ + 1))
    if [[ $transport == unix ]]; then
        sock=$RUN/sock/$RUN_SEQ.sock
        SRV_URI="nbd+unix:///$EXPORT?socket=$sock"
    else
        port=$(free_port)
        SRV_URI="nbd://127.0.0.1:$port/$EXPORT"
    fi
    SRV_PID=""
    SRV_CHILD=""
    case $server in
    sspd*)
        if [[ $transport == unix ]]; then listen=(--unix "$sock"); else listen=(--listen "127.0.0.1:$port"); fi
        local io=()   # sspd-ENGINE-CACHE: that engine and cache mode
        if [[ $server == sspd-*-* ]]; then
            local ec=${server#sspd-}
            io=(--io-engine "${ec%-*}" --cache "${ec##*-}")
        fi
        "$SSPD" --pool "$dir/$server-pool" "${listen[@]}" "${io[@]}" >"$srvlog" 2>&1 &
        SRV_CHILD=$!
        SRV_PID=$SRV_CHILD
        ;;
    qemu-nbd)
        if [[ $transport == unix ]]; then listen=(-k "$sock"); else listen=(-b 127.0.0.1 -p "$port"); fi
        qemu-nbd -f raw -t --shared=4 -x "$EXPORT" "${listen[@]}" "$dir/qemu-nbd.img" >"$srvlog" 2>&1 &
        SRV_CHILD=$!
        SRV_PID=$SRV_CHILD
        ;;
    nbdkit)
        if [[ $transport == unix ]]; then listen=(-U "$sock"); else listen=(-i 127.0.0.1 -p "$port"); fi
        nbdkit -f "${listen[@]}" -e "$EXPORT" file "$dir/nbdkit.img" >"$srvlog" 2>&1 &
        SRV_CHILD=$!
        SRV_PID=$SRV_CHILD
        ;;
    nbd-server)
        # nbd-server -d serves one connection and exits, and fio's nbd engine connects twice
        # (once to read the size, then for the I/O): run it as a daemon with a pid file.
        local conf=$RUN/nbd-server.$RUN_SEQ.conf pidf=$RUN/nbd-server.$RUN_SEQ.pid
        {
            echo "[generic]"
            echo "    allowlist = true"
            if [[ $transport == unix ]]; then
                echo "    unixsock = $sock"
            else
                echo "    listenaddr = 127.0.0.1"
                echo "    port = $port"
            fi
            echo "[$EXPORT]"
            echo "    exportname = $dir/nbd-server.img"
        } >"$conf"
        if nbd-server -C "$conf" -p "$pidf" >"$srvlog" 2>&1; then
            for ((i = 0; i < 100; i++)); do
                [[ -s $pidf ]] && break
                sleep 0.1
            done
            SRV_PID=$(cat "$pidf" 2>/dev/null || true)
        fi
        if [[ -z $SRV_PID ]]; then
            log "nbd-server did not start (no pid file); see $srvlog and syslog"
            return 1
        fi
        ;;
    *)
        log "unknown server $server (sspd, qemu-nbd, nbdkit, nbd-server)"
        return 1
        ;;
    esac
    for ((i = 0; i < START_TIMEOUT_TENTHS; i++)); do
        if nbdinfo --size "$SRV_URI" >/dev/null 2>&1; then return 0; fi
        if [[ ! -e /proc/$SRV_PID ]] ||
            [[ $(awk '{sub(/.*\) /, ""); print $1}' "/proc/$SRV_PID/stat" 2>/dev/null) == Z ]]; then
            log "$server exited before serving; its output:"
            tail -n 20 "$srvlog" >&2 || true
            stop_server
            return 1
        fi
        sleep 0.1
    done
    log "$server did not answer on $SRV_URI within $((START_TIMEOUT_TENTHS / 10)) s"
    tail -n 20 "$srvlog" >&2 || true
    stop_server
    return 1
}

# run_fio OUTJSON OUTLOG TIMEOUT FIO_ARGS...: run fio under timeout in the background, sampling
# the server's CPU; sets FIO_RC and SAMPLES.
run_fio() {
    local json=$1 flog=$2 tmo=$3 samples=${1%.json}.cpu tree=0 fpid spid
    shift 3
    [[ $SRV_PID != "$SRV_CHILD" ]] && tree=1   # nbd-server: count its per-connection children
    timeout --kill-after=5 "$tmo" fio --output-format=json --output="$json" "$@" >"$flog" 2>&1 &
    fpid=$!
    BG_PIDS=("$fpid")
    "$PYTHON" "$RUN/sampler.py" "$SRV_PID" "$fpid" "$samples" "$((tmo + 10))" "$tree" &
    spid=$!
    BG_PIDS+=("$spid")
    FIO_RC=0
    wait "$fpid" || FIO_RC=$?
    wait "$spid" || true
    BG_PIDS=()
    SAMPLES=$samples
}

prefill() { # NAME: one sequential 1 MiB write pass over the whole export
    local name=$1
    run_fio "$LOGS/$name.prefill.json" "$LOGS/$name.prefill.log" "$PREFILL_TIMEOUT" \
        --name=prefill --ioengine=nbd --uri="$SRV_URI" --rw=write --bs=1M --iodepth=8 \
        --size="${SIZE_GIB}G"
    if [[ $FIO_RC != 0 ]]; then
        log "prefill through $name failed (fio exit $FIO_RC):"
        tail -n 8 "$LOGS/$name.prefill.log" >&2 || true
        return 1
    fi
}

declare -A WL_ARGS=(
    [randread]="--rw=randread --bs=4k --iodepth=32 --norandommap --randrepeat=0"
    [randwrite]="--rw=randwrite --bs=4k --iodepth=32 --norandommap --randrepeat=0"
    [seqread]="--rw=read --bs=1M --iodepth=8"
    [seqwrite]="--rw=write --bs=1M --iodepth=8"
)

record_failure() { # STORAGE TRANSPORT WORKLOAD SERVER MESSAGE [LOGFILE]
    local tail_text=""
    if [[ -n ${6:-} && -f ${6:-} ]]; then tail_text=$(tail -n 40 "$6" 2>/dev/null || true); fi
    "$PYTHON" -c 'import json, re, sys
seen, out = set(), []
for l in sys.argv[6].splitlines():
    k = re.sub(r"\d+", "N", l)
    if l.strip() and "connected to NBD server" not in l and k not in seen:
        seen.add(k)
        out.append(l.rstrip())
print(json.dumps(dict(storage=sys.argv[1], transport=sys.argv[2], workload=sys.argv[3],
                      server=sys.argv[4], ok=False, error=sys.argv[5], fio_output=out[-5:])))' \
        "$1" "$2" "$3" "$4" "$5" "$tail_text" >>"$RESULTS"
}

# measure STORAGE DIR TRANSPORT WORKLOAD SERVER: one measured run (server started and stopped).
measure() {
    local storage=$1 dir=$2 transport=$3 wl=$4 server=$5
    local tag="$storage.$transport.$wl.$server" line
    local srvlog=$LOGS/$tag.server.log
    if [[ $storage == tmpfs ]]; then
        if ! backing_create "$server" "$dir" >>"$srvlog" 2>&1; then
            record_failure "$storage" "$transport" "$wl" "$server" "could not create the export" "$srvlog"
            backing_remove "$server" "$dir"
            return 0
        fi
    fi
    if ! start_server "$server" "$dir" "$transport" "$srvlog"; then
        record_failure "$storage" "$transport" "$wl" "$server" "server did not start" "$srvlog"
        [[ $storage == tmpfs ]] && backing_remove "$server" "$dir"
        return 0
    fi
    if [[ $storage == tmpfs ]] && ! prefill "$tag"; then
        record_failure "$storage" "$transport" "$wl" "$server" "prefill failed" "$LOGS/$tag.prefill.log"
        stop_server
        backing_remove "$server" "$dir"
        return 0
    fi
    [[ $storage == tmpfs ]] || sync
    # shellcheck disable=SC2086
    run_fio "$LOGS/$tag.json" "$LOGS/$tag.fio.log" "$FIO_TIMEOUT" \
        --name="$wl" --ioengine=nbd --uri="$SRV_URI" ${WL_ARGS[$wl]} \
        --time_based --runtime="$RUNTIME" --ramp_time="$RAMP"
    # Did the server survive the run?
    local srv_alive=1
    if [[ ! -e /proc/$SRV_PID ]] ||
        [[ $(awk '{sub(/.*\) /, ""); print $1}' "/proc/$SRV_PID/stat" 2>/dev/null) == Z ]]; then
        srv_alive=0
    fi
    stop_server
    [[ $storage == tmpfs ]] && backing_remove "$server" "$dir"
    if ! line=$("$PYTHON" "$RUN/analyze.py" "$LOGS/$tag.json" "$SAMPLES" "$CLK_TCK" "$FIO_RC" \
        "$storage" "$transport" "$wl" "$server" "$LOGS/$tag.fio.log" "$srv_alive" "$srvlog"); then
        record_failure "$storage" "$transport" "$wl" "$server" "could not read fio's output" "$LOGS/$tag.fio.log"
        return 0
    fi
    echo "$line" >>"$RESULTS"
}

# ---------------------------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------------------------
T0=$SECONDS
log "servers: ${SERVERS[*]}; transports: ${TRANSPORTS[*]}; storages: ${STORAGES[*]};" \
    "workloads: ${WORKLOADS[*]}; ${SIZE_GIB} GiB exports; fio ${RUNTIME}+${RAMP} s per run"
group=0
for storage in "${STORAGES[@]}"; do
    case $storage in
    disk)
        dir=$DISK_DATA
        label=$DISK_FS
        declare -A PREFILLED=()
        for server in "${SERVERS[@]}"; do
            log "[$label] creating and prefilling the ${SIZE_GIB} GiB export of $server"
            srvlog=$LOGS/$label.prefill.$server.server.log
            if backing_create "$server" "$dir" >>"$srvlog" 2>&1 &&
                start_server "$server" "$dir" unix "$srvlog"; then
                if prefill "$label.$server"; then PREFILLED[$server]=1; fi
                stop_server
            else
                log "could not set up $server on $label; see $srvlog"
            fi
        done
        log "[$label] sync"
        sync
        ;;
    tmpfs)
        if ! setup_tmpfs; then
            log "no tmpfs: cannot mount one and /dev/shm is smaller than ${TMPFS_GIB} GiB; skipping tmpfs"
            continue
        fi
        dir=$TMPFS_DIR
        label=tmpfs
        ;;
    *)
        log "unknown storage $storage (disk, tmpfs)"
        continue
        ;;
    esac
    for wl in "${WORKLOADS[@]}"; do
        [[ -n ${WL_ARGS[$wl]:-} ]] || { log "unknown workload $wl"; continue; }
        # Reads run on the disk storage only (prefilled; tmpfs is for the write workloads).
        [[ $storage == tmpfs && $wl == *read ]] && continue
        for transport in "${TRANSPORTS[@]}"; do
            n=${#SERVERS[@]}
            for ((k = 0; k < n; k++)); do
                server=${SERVERS[$(((group + k) % n))]}
                if [[ $storage == tmpfs && $server == sspd-*-none ]]; then
                    log "[$label $transport $wl] $server: skipped (tmpfs has no O_DIRECT)"
                    continue
                fi
                if [[ $storage == disk && -z ${PREFILLED[$server]:-} ]]; then
                    log "[$label $transport $wl] $server: skipped (its export could not be prefilled)"
                    record_failure "$label" "$transport" "$wl" "$server" "export setup or prefill failed" \
                        "$LOGS/$label.$server.prefill.log"
                    continue
                fi
                log "[$label $transport $wl] $server"
                measure "$label" "$dir" "$transport" "$wl" "$server"
            done
            group=$((group + 1))
        done
    done
    if [[ $storage == disk && ${BENCH_KEEP_DATA:-0} != 1 ]]; then rm -rf "$DISK_DATA"; fi
done
log "all runs done in $((SECONDS - T0)) s"

# ---------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------
if [[ -n $TMPFS_DIR ]]; then
    if ((TMPFS_MOUNTED)); then tmpfs_desc="a ${TMPFS_GIB} GiB tmpfs mounted for the run"
    else tmpfs_desc="a directory in /dev/shm"; fi
else
    tmpfs_desc="not run"
fi
git_rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || git_rev="$git_rev + local changes"
storages_shown=()
for s in "${STORAGES[@]}"; do
    case $s in disk) storages_shown+=("$DISK_FS") ;; *) storages_shown+=("$s") ;; esac
done
"$PYTHON" - "$LOGS/meta.json" <<PY
import json, sys
meta = dict(
    date="$(date -u '+%Y-%m-%d %H:%M UTC')",
    nproc=$(nproc),
    cpu="""$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)""",
    mem_gib=$(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1048576,
    kernel="$(uname -r)",
    fio="$(fio --version)",
    sspd="$("$SSPD" --version 2>/dev/null | awk '{print $NF}')",
    git="$git_rev",
    qemu_nbd="$(qemu-nbd --version | head -1)",
    nbdkit="$(nbdkit --version | head -1)",
    nbd_server="$(nbd-server -V 2>&1 | head -1 | sed 's/This is //; s/ version / /')",
    libnbd="$(nbdinfo --version | grep -m1 libnbd || echo libnbd)",
    disk_fs="$DISK_FS", bench_dir="$BENCH_DIR", tmpfs="$tmpfs_desc",
    runtime=$RUNTIME, ramp=$RAMP, size_gib=$SIZE_GIB, pv_gib=$PV_GIB,
    servers="${SERVERS[*]}".split(), transports="${TRANSPORTS[*]}".split(),
    storages="${storages_shown[*]}".split(), workloads="${WORKLOADS[*]}".split(),
)
json.dump(meta, open(sys.argv[1], "w"))
PY
"$PYTHON" "$RUN/report.py" "$RESULTS" "$LOGS/meta.json" "$DOC"
