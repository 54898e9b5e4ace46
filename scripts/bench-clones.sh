#!/usr/bin/env bash
# Linked clones end to end through NBD: does reading a clone at depth 16 cost more than reading
# a flat disk, in sspd and in QEMU's qcow2 backing chains? fio's libnbd-based `nbd` ioengine
# runs 4 KiB random reads at queue depth 32 over a unix socket against one 1 GiB prefilled disk
# served five ways:
#
#   sspd-flat      an sspd LU holding the data
#   sspd-clone16   an sspd linked clone at depth 16 of a copy of it: base@s -> c1, c1@s -> c2,
#                  ..., c16, each level writing 8 random 4 KiB blocks of its own
#   qemu-raw       qemu-nbd serving a raw file of the data
#   qemu-qcow2-16  qemu-nbd serving the top qcow2 overlay of a 16-deep backing chain over a
#                  qcow2 copy of the data (`qemu-img create -f qcow2 -b prev -F qcow2 next`),
#                  each overlay holding the same 8 blocks per level as the sspd clones
#   qemu-qcow2     qemu-nbd serving that qcow2 base alone (a flat qcow2)
#
# The flat disks get the same 128 level writes, so all five hold the same data. Every file is
# in the page cache (written just before, then read once); servers use their default caching.
# Each run starts its server, runs fio (`--time_based`, ramp then measure), stops the server;
# runs are interleaved over BENCH_ROUNDS rounds (the starting configuration rotates) and the
# table shows medians over the rounds, with the IOPS range. Server CPU per request: utime+stime
# of the server over fio's measured window (sampled every 0.1 s) / I/Os completed in it.
#
# Also timed (wall clock of the command, process start included, one sample per chain level):
# `sspctl snapshot create` and `sspctl clone` against the running sspd (online, through its
# admin socket), `sspctl lu list` as the cost of an sspctl round trip alone, and for reference
# `qemu-img create -f qcow2 -b prev -F qcow2 next` (offline: QEMU's online equivalent is QMP
# blockdev-snapshot-sync).
#
# The Markdown table is printed and written, with the date, machine and versions, into
# docs/bench-clones.md between the markers `<!-- bench-clones.sh: begin -->` and
# `<!-- bench-clones.sh: end -->` (the rest of the file is kept; a file without them is
# rewritten whole). Logs and fio's JSON of the last run stay in $BENCH_DIR/logs.
#
# Needs fio with the nbd engine, qemu-utils and libnbd-bin (installed with apt-get when
# missing; exit 77 when that is impossible). About 6 minutes on 2 cores with the defaults
# (plus the build).
#
# Usage: scripts/bench-clones.sh
# Environment (defaults in brackets):
#   BENCH_DIR       data and logs [${CARGO_TARGET_DIR:-target}/bench-clones]
#   BENCH_RUNTIME   measured seconds per fio run [8]
#   BENCH_RAMP      fio ramp seconds before measuring [2]
#   BENCH_ROUNDS    rounds over the five configurations [5]
#   BENCH_DEPTH     clone / backing-chain depth [16]
#   BENCH_SIZE_GIB  disk size in GiB [1]
#   BENCH_CONFIGS   ["sspd-flat sspd-clone16 qemu-raw qemu-qcow2-16 qemu-qcow2"]
#   BENCH_DOC       the Markdown report [docs/bench-clones.md]
#   SSPD, SSPCTL    use these binaries instead of building them (cargo build --release,
#                   honouring CARGO_TARGET_DIR)
#   BENCH_KEEP_DATA=1 keep the data after the run
#   BENCH_GIT_REV   the revision to name in the report (default: git rev-parse HEAD, marked
#                   "+ local changes" when src/ or Cargo.* differ from it)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BENCH_NAME=bench-clones
# shellcheck source=scripts/lib/bench-common.sh
source "$ROOT/scripts/lib/bench-common.sh"

RUNTIME=${BENCH_RUNTIME:-8}
RAMP=${BENCH_RAMP:-2}
ROUNDS=${BENCH_ROUNDS:-5}
DEPTH=${BENCH_DEPTH:-16}
SIZE_GIB=${BENCH_SIZE_GIB:-1}
PV_GIB=$((2 * SIZE_GIB + 2))
LEVEL_WRITES=8
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH_DIR=${BENCH_DIR:-$TARGET_DIR/bench-clones}
read -r -a CONFIGS <<<"${BENCH_CONFIGS:-sspd-flat sspd-clone16 qemu-raw qemu-qcow2-16 qemu-qcow2}"
DOC=${BENCH_DOC:-$ROOT/docs/bench-clones.md}
FIO_TIMEOUT=$((RUNTIME + RAMP + 60))
START_TIMEOUT_TENTHS=600
BLOCKS=$((SIZE_GIB * 262144))

ensure_tools fio=fio qemu-nbd=qemu-utils qemu-img=qemu-utils qemu-io=qemu-utils nbdinfo=libnbd-bin
fio --enghelp=nbd 2>/dev/null | grep -q uri || die77 "this fio has no nbd ioengine (libnbd)"

if [[ -n ${SSPD:-} && -n ${SSPCTL:-} ]]; then
    [[ -x $SSPD && -x $SSPCTL ]] || { echo "SSPD=$SSPD / SSPCTL=$SSPCTL are not executables" >&2; exit 1; }
else
    log "building sspd and sspctl (release, target dir $TARGET_DIR)"
    cargo build --release --locked --bin sspd --bin sspctl >&2
    SSPD=$TARGET_DIR/release/sspd
    SSPCTL=$TARGET_DIR/release/sspctl
fi

RUN=$(mktemp -d /tmp/ssp-bcl.XXXXXX)   # sockets (short paths), sampler
LOGS=$BENCH_DIR/logs
DATA=$BENCH_DIR/data
POOL=$DATA/pool
SOCK=$RUN/nbd.sock
SRV_PID=""
BG_PIDS=()

stop_server() {
    if [[ -n $SRV_PID ]]; then
        stop_pid "$SRV_PID"
        wait "$SRV_PID" 2>/dev/null || true
    fi
    SRV_PID=""
}

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${BG_PIDS[@]}"; do stop_pid "$p"; done
    stop_server
    rm -rf "$RUN"
    if [[ ${BENCH_KEEP_DATA:-0} != 1 ]]; then rm -rf "$DATA"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

rm -rf "$LOGS" "$DATA"
mkdir -p "$LOGS" "$DATA" "$(dirname "$DOC")"
write_cpu_sampler "$RUN/sampler.py"
CLK_TCK=$(getconf CLK_TCK)
RESULTS=$LOGS/results.jsonl
TIMES=$LOGS/times.jsonl
: >"$RESULTS"
: >"$TIMES"

now_ns() { date +%s%N; }

# timed NAME CMD...: run CMD (output to the log), record its wall time in ms under NAME.
timed() {
    local name=$1 t0 t1
    shift
    t0=$(now_ns)
    "$@" >>"$LOGS/commands.log" 2>&1 || { log "failed: $*"; tail -n 5 "$LOGS/commands.log" >&2; return 1; }
    t1=$(now_ns)
    printf '{"op": "%s", "ms": %s}\n' "$name" "$(((t1 - t0) / 1000))e-3" >>"$TIMES"
}

# start_server CONFIG: serve CONFIG's disk as export `bench` (sspd: every LU) on $SOCK.
start_server() {
    local cfg=$1 srvlog=$LOGS/server.$1.log
    rm -f "$SOCK"
    case $cfg in
    sspd-*)
        "$SSPD" --pool "$POOL" --unix "$SOCK" >>"$srvlog" 2>&1 &
        ;;
    qemu-raw)
        qemu-nbd -f raw -t --shared=4 -x bench -k "$SOCK" "$DATA/disk.raw" >>"$srvlog" 2>&1 &
        ;;
    qemu-qcow2-16)
        qemu-nbd -f qcow2 -t --shared=4 -x bench -k "$SOCK" "$DATA/ov$DEPTH.qcow2" >>"$srvlog" 2>&1 &
        ;;
    qemu-qcow2)
        qemu-nbd -f qcow2 -t --shared=4 -x bench -k "$SOCK" "$DATA/base.qcow2" >>"$srvlog" 2>&1 &
        ;;
    *)
        log "unknown configuration $cfg"
        return 1
        ;;
    esac
    SRV_PID=$!
    local name=bench rc=0
    [[ $cfg == sspd-flat ]] && name=flat
    [[ $cfg == sspd-clone16 ]] && name=c$DEPTH
    SRV_URI="nbd+unix:///$name?socket=$SOCK"
    wait_nbd "$SRV_URI" "$SRV_PID" "$START_TIMEOUT_TENTHS" || rc=$?
    if ((rc != 0)); then
        log "$cfg did not start serving (wait_nbd $rc); its log:"
        tail -n 20 "$srvlog" >&2 || true
        stop_server
        return 1
    fi
}

# qio FORMAT FILE_OR_URI LEVEL: the level's LEVEL_WRITES 4 KiB writes (pattern byte = LEVEL).
qio() {
    local fmt=$1 target=$2 level=$3 cmds=() off
    for off in ${LEVEL_OFFS[$level]}; do cmds+=(-c "write -P $level $off 4k"); done
    qemu-io -f "$fmt" "${cmds[@]}" "$target" >>"$LOGS/commands.log" 2>&1
}

# ---------------------------------------------------------------------------------------------
# Data: one raw file, written once; the other disks are copies of it.
# ---------------------------------------------------------------------------------------------
T0=$SECONDS
declare -A LEVEL_OFFS=()
RANDOM=4242
for ((d = 1; d <= DEPTH; d++)); do
    offs=""
    for ((w = 0; w < LEVEL_WRITES; w++)); do
        offs+=" $((((RANDOM << 15 | RANDOM) % BLOCKS) * 4096))"
    done
    LEVEL_OFFS[$d]=$offs
done

log "writing the ${SIZE_GIB} GiB data file"
fio --name=prefill --ioengine=psync --rw=write --bs=1M --size="${SIZE_GIB}G" \
    --filename="$DATA/disk.raw" --output="$LOGS/prefill.log" >/dev/null
log "qcow2 copy (base of the backing chain, and the flat qcow2)"
qemu-img convert -f raw -O qcow2 "$DATA/disk.raw" "$DATA/base.qcow2"
log "sspd pool: LUs flat and base, imported from the data file"
"$SSPCTL" --pool "$POOL" pool create --pv "$DATA/pv0.img:${PV_GIB}G" >>"$LOGS/commands.log" 2>&1
for lu in flat base; do
    "$SSPCTL" --pool "$POOL" lu create "$lu" --size "${SIZE_GIB}G" >>"$LOGS/commands.log" 2>&1
    "$SSPCTL" --pool "$POOL" lu import "$lu" "$DATA/disk.raw" >>"$LOGS/commands.log" 2>&1
done

log "qcow2 backing chain of depth $DEPTH"
prev=base.qcow2
for ((d = 1; d <= DEPTH; d++)); do
    (cd "$DATA" && timed qemu-img-create-b qemu-img create -q -f qcow2 -b "$prev" -F qcow2 "ov$d.qcow2")
    qio qcow2 "$DATA/ov$d.qcow2" "$d"
    qio raw "$DATA/disk.raw" "$d"
    # The flat qcow2 gets them too; in the chain the overlay's copies hide these blocks.
    qio qcow2 "$DATA/base.qcow2" "$d"
    prev=ov$d.qcow2
done

log "sspd linked clones of depth $DEPTH, made online"
start_server sspd-flat || exit 1
sspctl_() { "$SSPCTL" --pool "$POOL" "$@"; }
timed sspctl-snapshot-create sspctl_ snapshot create base@s
src=base@s
for ((d = 1; d <= DEPTH; d++)); do
    timed sspctl-lu-list sspctl_ lu list
    timed sspctl-clone sspctl_ clone "$src" "c$d"
    qio raw "nbd+unix:///c$d?socket=$SOCK" "$d"
    qio raw "nbd+unix:///flat?socket=$SOCK" "$d"
    timed sspctl-snapshot-create sspctl_ snapshot create "c$d@s"
    src=c$d@s
done
sspctl_ --json file stat "c$DEPTH" >"$LOGS/c$DEPTH.stat.json" 2>>"$LOGS/commands.log" || true
stop_server

log "checking that the five disks hold the same data"
for q in "ov$DEPTH.qcow2" base.qcow2; do
    qemu-img compare -q -f qcow2 -F raw "$DATA/$q" "$DATA/disk.raw" ||
        { log "$q and the raw file differ"; exit 1; }
done
"$SSPCTL" --pool "$POOL" lu export "c$DEPTH" "$DATA/c$DEPTH.raw" >>"$LOGS/commands.log" 2>&1
"$SSPCTL" --pool "$POOL" lu export flat "$DATA/flat.raw" >>"$LOGS/commands.log" 2>&1
{ cmp "$DATA/disk.raw" "$DATA/c$DEPTH.raw" && cmp "$DATA/disk.raw" "$DATA/flat.raw"; } ||
    { log "sspd LUs and raw file differ"; exit 1; }
rm -f "$DATA/c$DEPTH.raw" "$DATA/flat.raw"
sync
# Warm the page cache with every file the servers read.
cat "$DATA"/*.raw "$DATA"/*.qcow2 "$DATA/pv0.img" >/dev/null
log "setup done in $((SECONDS - T0)) s"

# ---------------------------------------------------------------------------------------------
# Reads.
# ---------------------------------------------------------------------------------------------
run_one() { # CONFIG ROUND
    local cfg=$1 round=$2 tag="$1.r$2" fpid spid rc=0
    start_server "$cfg" || { echo "{\"config\": \"$cfg\", \"round\": $round, \"ok\": false}" >>"$RESULTS"; return 0; }
    timeout --kill-after=5 "$FIO_TIMEOUT" fio --output-format=json --output="$LOGS/$tag.json" \
        --name=randread --ioengine=nbd --uri="$SRV_URI" --rw=randread --bs=4k --iodepth=32 \
        --norandommap --randrepeat=0 --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
        >"$LOGS/$tag.fio.log" 2>&1 &
    fpid=$!
    BG_PIDS=("$fpid")
    "$PYTHON" "$RUN/sampler.py" "$SRV_PID" "$fpid" "$LOGS/$tag.cpu" "$((FIO_TIMEOUT + 10))" 0 &
    spid=$!
    BG_PIDS+=("$spid")
    wait "$fpid" || rc=$?
    wait "$spid" || true
    BG_PIDS=()
    stop_server
    "$PYTHON" - "$LOGS/$tag.json" "$LOGS/$tag.cpu" "$CLK_TCK" "$rc" "$cfg" "$round" >>"$RESULTS" <<'PY'
import json, sys
js, samples, hz, rc, cfg, rnd = sys.argv[1:7]
row = dict(config=cfg, round=int(rnd), ok=False)
try:
    text = open(js, errors="replace").read()
    j = json.loads(text[text.index("{"):])
    job = j["jobs"][0]
    d = job["read"]
    row.update(iops=d["iops"], mibs=d["bw_bytes"] / 2**20, ios=d["total_ios"],
               p99_ms=(d["clat_ns"].get("percentile") or {}).get("99.000000", 0) / 1e6,
               ok=int(rc) == 0 and not job.get("error") and d["total_ios"] > 0)
    pts = []
    for l in open(samples):
        t, v = l.split()
        if v != "gone":
            pts.append((float(t), int(v)))
    end = j["timestamp_ms"] / 1000.0
    start = end - job["job_runtime"] / 1000.0
    def at(t):
        if not pts or t < pts[0][0] - 0.25 or t > pts[-1][0] + 0.25:
            return None
        for (t0, v0), (t1, v1) in zip(pts, pts[1:]):
            if t0 <= t <= t1:
                return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1
        return pts[0][1] if t < pts[0][0] else pts[-1][1]
    a, b = at(start), at(end)
    if a is not None and b is not None and d["total_ios"]:
        row["cpu_us_req"] = (b - a) / int(hz) * 1e6 / d["total_ios"]
except (OSError, ValueError, KeyError, IndexError) as e:
    row["error"] = str(e)
print(json.dumps(row))
print(f"      {row.get('iops', 0):>10,.0f} IOPS  p99 {row.get('p99_ms', 0):.3f} ms  "
      f"server CPU {row.get('cpu_us_req', 0):.1f} us/req" + ("" if row["ok"] else "  FAILED"),
      file=sys.stderr)
PY
}

T1=$SECONDS
n=${#CONFIGS[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    for ((k = 0; k < n; k++)); do
        cfg=${CONFIGS[$(((r - 1 + k) % n))]}
        log "[round $r/$ROUNDS] $cfg: 4k randread qd32"
        run_one "$cfg" "$r"
    done
done
log "reads done in $((SECONDS - T1)) s"

# ---------------------------------------------------------------------------------------------
# Report.
# ---------------------------------------------------------------------------------------------
if [[ -n ${BENCH_GIT_REV:-} ]]; then
    git_rev=$BENCH_GIT_REV
else
    git_rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || git_rev="$git_rev + local changes"
fi
"$PYTHON" -c 'import json, sys; k = sys.argv[1::2]; v = sys.argv[2::2]; print(json.dumps(dict(zip(k, v))))' \
    date "$(date -u '+%Y-%m-%d %H:%M UTC')" machine "$(machine_desc)" fio "$(fio --version)" \
    sspd "$("$SSPD" --version 2>/dev/null | awk '{print $NF}')" git "$git_rev" \
    qemu "$(qemu-nbd --version | head -1)" \
    libnbd "$(nbdinfo --version | grep -m1 libnbd || echo libnbd)" \
    fs "$(findmnt -n -o FSTYPE -T "$BENCH_DIR" 2>/dev/null || echo unknown)" \
    depth "$DEPTH" runtime "$RUNTIME" ramp "$RAMP" rounds "$ROUNDS" size_gib "$SIZE_GIB" \
    pv_gib "$PV_GIB" level_writes "$LEVEL_WRITES" configs "${CONFIGS[*]}" >"$LOGS/meta.json"
"$PYTHON" - "$RESULTS" "$TIMES" "$DOC" "$LOGS/c$DEPTH.stat.json" "$LOGS/meta.json" <<'PY'
import json, re, statistics as st, sys
res_path, times_path, doc, stat_path, meta_path = sys.argv[1:6]
rows = [json.loads(l) for l in open(res_path) if l.strip()]
times = [json.loads(l) for l in open(times_path) if l.strip()]
meta = json.load(open(meta_path))
depth = int(meta["depth"])
configs = meta["configs"].split()
desc = {
    "sspd-flat": "sspd, flat LU",
    "sspd-clone16": f"sspd, linked clone at depth {depth}",
    "qemu-raw": "qemu-nbd, raw file",
    "qemu-qcow2-16": f"qemu-nbd, qcow2 overlay on a {depth}-deep backing chain",
    "qemu-qcow2": "qemu-nbd, flat qcow2",
}
base_of = {"sspd-clone16": "sspd-flat", "qemu-qcow2-16": "qemu-qcow2", "qemu-qcow2": "qemu-raw"}
med = {}
for c in configs:
    ok = [r for r in rows if r["config"] == c and r.get("ok")]
    if ok:
        cpus = [r["cpu_us_req"] for r in ok if r.get("cpu_us_req") is not None]
        med[c] = dict(n=len(ok), iops=st.median(r["iops"] for r in ok),
                      lo=min(r["iops"] for r in ok), hi=max(r["iops"] for r in ok),
                      mibs=st.median(r["mibs"] for r in ok),
                      p99=st.median(r["p99_ms"] for r in ok),
                      cpu=st.median(cpus) if cpus else None)
lines = ["| configuration | IOPS | IOPS range | MiB/s | p99 ms | server CPU µs/req | IOPS vs flat | CPU/req vs flat |",
         "|---|--:|--:|--:|--:|--:|--:|--:|"]
for c in configs:
    name = f"**{desc.get(c, c)}**" if c.startswith("sspd") else desc.get(c, c)
    m = med.get(c)
    if not m:
        lines.append(f"| {name} | FAILED | | | | | | |")
        continue
    cpu = f"{m['cpu']:.1f}" if m["cpu"] is not None else "–"
    r_iops = r_cpu = "–"
    b = med.get(base_of.get(c, c))
    if b:
        r_iops = f"{m['iops'] / b['iops']:.2f}"
        if m["cpu"] is not None and b["cpu"]:
            r_cpu = f"{m['cpu'] / b['cpu']:.2f}"
        if c in base_of:
            r_iops += f" (of {base_of[c]})"
    lines.append(f"| {name} | {m['iops']:,.0f} | {m['lo']:,.0f}–{m['hi']:,.0f} | {m['mibs']:,.1f} | "
                 f"{m['p99']:.3f} | {cpu} | {r_iops} | {r_cpu} |")
table = "\n".join(lines)
ops = [("sspctl-snapshot-create", "`sspctl snapshot create LU@SNAP` (online, sspd running)"),
       ("sspctl-clone", "`sspctl clone LU@SNAP NEW` (online, sspd running)"),
       ("sspctl-lu-list", "`sspctl lu list` (online): the round trip alone"),
       ("qemu-img-create-b", "`qemu-img create -f qcow2 -b PREV -F qcow2 NEXT` (offline)")]
tl = ["| operation | samples | median ms | min ms | max ms |", "|---|--:|--:|--:|--:|"]
for k, label in ops:
    v = [t["ms"] for t in times if t["op"] == k]
    if v:
        tl.append(f"| {label} | {len(v)} | {st.median(v):.1f} | {min(v):.1f} | {max(v):.1f} |")
ttable = "\n".join(tl)
try:
    s = json.load(open(stat_path))
    stat = (f"c{depth} after the chain was built: {s.get('data_blocks')} data blocks, "
            f"{s.get('owned_blocks')} owned, {s.get('shared_blocks')} shared.")
except (OSError, ValueError):
    stat = ""
section = f"""<!-- bench-clones.sh: begin -->
## Through NBD: `scripts/bench-clones.sh`

Generated by `scripts/bench-clones.sh` on {meta['date']}.

- Machine: {meta['machine']}; shared with other builds and tests, so compare within one run.
- Versions: {meta['fio']}; sspd {meta['sspd']} (git {meta['git']}); {meta['qemu']}; {meta['libnbd']}. Data on {meta['fs']}, in the page cache.
- Workload: fio `ioengine=nbd` over a unix socket, 4 KiB random read, queue depth 32, `--norandommap --randrepeat=0 --time_based --runtime={meta["runtime"]} --ramp_time={meta["ramp"]}`, one connection; {meta["rounds"]} interleaved rounds, each run with a freshly started server. Every column is the median over the rounds (IOPS also with its range); "vs flat" divides by the same server's flat disk: sspd's clone by its flat LU, the qcow2 chain by the flat qcow2, the flat qcow2 by the raw file. With 2 busy cores IOPS swing from run to run; the server's CPU time per request is the steadier measure of what a request costs.
- Disks: one {meta["size_gib"]} GiB data file written once by fio; sspd's `flat` and `base` LUs imported from it (`sspctl lu import`, one pool on a {meta["pv_gib"]} GiB sparse PV file); `qemu-img convert` made the qcow2 base (64 KiB clusters, all allocated). Each of the {depth} levels (sspd: `sspctl clone` of the previous `@s` snapshot, made online; QEMU: `qemu-img create -b`) writes {meta["level_writes"]} random 4 KiB blocks of its own (qemu-io), and the flat disks get the same writes: all five disks hold the same bytes (checked with `cmp` and `qemu-img compare`). {stat}
- fio, the server and the clients share 2 cores: every figure includes the competition with fio.

### 4 KiB random read, queue depth 32

{table}

### Creating a snapshot or clone (wall time of the command, process start included)

{ttable}
<!-- bench-clones.sh: end -->"""
print()
print(table)
print()
print(ttable)
try:
    old = open(doc).read()
except OSError:
    old = ""
pat = re.compile(r"<!-- bench-clones.sh: begin -->.*?<!-- bench-clones.sh: end -->", re.S)
if pat.search(old):
    new = pat.sub(lambda _: section, old)
else:
    new = "# Snapshots, images and linked clones: benchmarks\n\n" + section + "\n"
open(doc, "w").write(new)
print(f"\nwrote {doc}")
PY
