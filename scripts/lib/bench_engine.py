"""Driver of scripts/bench-engine.sh: the engine measurements of issue 11, from one run.

  a. Stalls during maintenance: fio (nbd engine, 4 KiB randread, QD8, time based) on a mirrored
     pool (two failure groups, one sparse PV file each) holding DATA_GIB GiB, quiet and while
     each of: `sspctl scrub --wait`, online `sspctl check`, a write burst by a second client
     (with `sspctl gc --max-segments 0` forcing a checkpoint every second), and a resync (the
     second group's PV made read-only so the pool degrades, data written, the PV writable
     again). fio's max completion latency and p99.9 per phase.
  b. Multi-conn: 4 KiB randread, 1 connection at QD32 vs 4 connections at QD8 each, sspd vs
     nbdkit (file plugin) vs qemu-nbd vs nbd-server, all serving the same DATA_GIB GiB of data.
  c. Flush latency: fio randwrite with --fsync=1 (an NBD FLUSH after every 4 KiB write), 1 job
     vs 32 jobs (32 connections), mean flush latency and their ratio.
  d. Parallel writers (criterion, benches/engine.rs group `parallel_writers`), when asked.

Every server listens on 127.0.0.1; every wait is bounded;
every process started here is stopped and the work dir removed on exit (also on a signal).
Run by scripts/bench-engine.sh, which builds the binaries; this file needs only the stdlib.
"""

import atexit
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ENV = os.environ


def env_int(name, default):
    v = ENV.get(name, "")
    return int(v) if v.strip() else default


DATA_GIB = env_int("DATA_GIB", 2)
PHASE_SECONDS = env_int("PHASE_SECONDS", 15)  # fio window of each stall phase
DISTURB_AFTER = env_int("DISTURB_AFTER", 2)  # seconds of quiet fio before the disturbance
BURST_MIB = env_int("BURST_MIB", 256)
RESYNC_MIB = env_int("RESYNC_MIB", 256)  # written while degraded: what resync copies
MC_SECONDS = env_int("MC_SECONDS", 6)  # each multi-conn run
MC_ROUNDS = env_int("MC_ROUNDS", 3)  # alternating 1-conn / 4-conn runs per server (median)
FLUSH_SECONDS = env_int("FLUSH_SECONDS", 8)
STALL_MAX_MS = 250
STALL_P999_FACTOR = 4

PROCS = []  # live Popen objects to stop on exit
WORK = None
KEEP = ENV.get("BENCH_KEEP") == "1"


def log(msg):
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def stop(p, grace=10.0):
    if p.poll() is not None:
        return
    try:
        p.terminate()
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log(f"pid {p.pid} ignored SIGTERM for {grace:.0f} s: SIGKILL")
        p.kill()
        p.wait(timeout=10)
    except OSError:
        pass


def forget(p):
    """Drop a stopped process from the cleanup list (cleanup may have emptied it already)."""
    if p in PROCS:
        PROCS.remove(p)


def cleanup():
    for p in reversed(PROCS):
        stop(p)
    PROCS.clear()
    if WORK and os.path.isdir(WORK):
        if KEEP:
            log(f"kept {WORK}")
        else:
            shutil.rmtree(WORK, ignore_errors=True)


def on_signal(sig, _frame):
    log(f"signal {sig}: cleaning up")
    cleanup()
    sys.exit(128 + sig)


def spawn(args, logname, **kw):
    f = open(os.path.join(WORK, "logs", logname), "ab")
    p = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, **kw)
    f.close()
    PROCS.append(p)
    return p


def run(args, timeout=600, check=True, logname=None):
    """Run to completion (bounded); returns (rc, stdout)."""
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"timed out after {timeout} s: {' '.join(args)}")
    if logname:
        with open(os.path.join(WORK, "logs", logname), "a") as f:
            f.write(f"$ {' '.join(args)}\n{r.stdout}{r.stderr}\n")
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return r.returncode, r.stdout


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_nbd(uri, proc, seconds=60):
    end = time.time() + seconds
    while time.time() < end:
        if subprocess.run(["nbdinfo", "--size", uri], capture_output=True).returncode == 0:
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}) before serving {uri}")
        time.sleep(0.1)
    raise RuntimeError(f"nobody answered on {uri} within {seconds} s")


class Ssp:
    def __init__(self, sspd, sspctl, pool):
        self.sspd, self.sspctl, self.pool = sspd, sspctl, pool
        self.proc = None
        self.port = None

    def ctl(self, *args, timeout=900, check=True):
        return run([self.sspctl, "--pool", self.pool, *args], timeout=timeout, check=check,
                   logname="sspctl.log")

    def status(self):
        return json.loads(self.ctl("pool", "status", "--json", timeout=60)[1])

    def start(self):
        self.port = free_port()
        self.proc = spawn([self.sspd, "--pool", self.pool, "--listen", f"127.0.0.1:{self.port}"],
                          "sspd.log")
        wait_nbd(self.uri("data"), self.proc)

    def uri(self, lu):
        return f"nbd://127.0.0.1:{self.port}/{lu}"

    def stop(self):
        if self.proc:
            stop(self.proc, grace=60)
            forget(self.proc)
            self.proc = None

    def wait_state(self, want, seconds):
        end = time.time() + seconds
        st = None
        while time.time() < end:
            st = self.status()
            if st["mirror_state"] == want:
                return st
            time.sleep(0.1)
        raise RuntimeError(f"mirror state {st and st['mirror_state']} after {seconds} s, not {want}")


def fio_args(name, uri, extra):
    return ["fio", f"--name={name}", "--ioengine=nbd", f"--uri={uri}", "--output-format=json",
            *extra]


def run_fio(name, uri, extra, timeout):
    out = os.path.join(WORK, "logs", f"{name}.json")
    args = fio_args(name, uri, extra) + [f"--output={out}"]
    run(["timeout", "--kill-after=5", str(timeout)] + args, timeout=timeout + 30,
        logname=f"{name}.fio.log")
    return load_fio(out)


def start_fio(name, uri, extra):
    out = os.path.join(WORK, "logs", f"{name}.json")
    args = fio_args(name, uri, extra) + [f"--output={out}"]
    return spawn(args, f"{name}.fio.log"), out


def load_fio(path):
    with open(path) as f:
        text = f.read()
    # fio may print warnings before the JSON object.
    res = json.loads(text[text.index("{"):])
    for job in res.get("jobs", []):
        if job.get("error"):
            raise RuntimeError(f"fio job {job.get('jobname')} in {path}: error {job['error']}")
    return res


def randread_args(seconds, qd, jobs, size_bytes):
    return ["--rw=randread", "--bs=4k", f"--iodepth={qd}", f"--numjobs={jobs}",
            "--group_reporting", "--time_based", f"--runtime={seconds}", "--norandommap",
            "--randrepeat=0", f"--size={size_bytes}"]


def clat(job):
    c = job["read"]["clat_ns"]
    pct = c.get("percentile", {})
    p999 = next((v for k, v in pct.items() if abs(float(k) - 99.9) < 1e-6), None)
    return c["max"] / 1e6, (p999 / 1e6 if p999 is not None else None), job["read"]["iops"]


# ---------------------------------------------------------------------------- a. stalls

def phase(ssp, name, disturb):
    """fio randread QD8 for PHASE_SECONDS; `disturb()` starts DISTURB_AFTER s in (None: quiet)
    and returns a note. Returns a result row."""
    size = DATA_GIB << 30
    fproc, out = start_fio(f"stall-{name}", ssp.uri("data"),
                           randread_args(PHASE_SECONDS, 8, 1, size))
    t0 = time.time()
    note, dur = "", None
    try:
        if disturb:
            time.sleep(DISTURB_AFTER)
            d0 = time.time()
            note = disturb() or ""
            dur = time.time() - d0
        fproc.wait(timeout=PHASE_SECONDS + 120)
    finally:
        stop(fproc)
        forget(fproc)
    if fproc.returncode != 0:
        raise RuntimeError(f"fio for phase {name} failed ({fproc.returncode})")
    mx, p999, iops = clat(load_fio(out)["jobs"][0])
    log(f"stall {name}: max {mx:.1f} ms p99.9 {p999:.2f} ms iops {iops:.0f}"
        + (f" (disturbance {dur:.1f} s)" if dur is not None else ""))
    if dur is not None and dur > PHASE_SECONDS - DISTURB_AFTER:
        note += f" (ran {dur:.1f} s: past fio's window of {PHASE_SECONDS} s)"
    return dict(phase=name, max_ms=mx, p999_ms=p999, iops=iops, dur=dur,
                elapsed=time.time() - t0, note=note.strip())


def stalls(ssp):
    rows = []
    rows.append(phase(ssp, "quiet", None))
    rows.append(phase(ssp, "scrub", lambda: scrub(ssp)))
    rows.append(phase(ssp, "check", lambda: check(ssp)))
    rows.append(phase(ssp, "write burst", lambda: burst(ssp)))
    prepare_resync(ssp)
    rows.append(phase(ssp, "resync", lambda: resync(ssp)))
    return rows


def scrub(ssp):
    # Unthrottled where sspctl has a rate (the worst case for clients; the default rate is
    # gentler): a scrub must not stall clients however fast it runs.
    rc, helptext = ssp.ctl("scrub", "--help", check=False)
    rate = ["--rate", "0"] if "--rate" in helptext else []
    _, out = ssp.ctl("scrub", "--wait", "--json", *rate)
    try:
        r = json.loads(out)
        return f"scrub: {r.get('errors_found', '?')} errors found"
    except ValueError:
        return ""


def check(ssp):
    rc, out = ssp.ctl("check", check=False)
    if rc != 0:
        raise RuntimeError(f"online check failed: {out[-500:]}")
    return ""


def burst(ssp):
    gen0 = ssp.status()["checkpoint_generation"]
    args = ["--rw=write", "--bs=1M", "--iodepth=8", f"--size={BURST_MIB}M", "--fsync=32"]
    fproc, out = start_fio("burst-writer", ssp.uri("burst"), args)
    end = time.time() + 300
    while fproc.poll() is None and time.time() < end:
        ssp.ctl("gc", "--max-segments", "0", timeout=120)  # commits: a checkpoint
        time.sleep(1)
    fproc.wait(timeout=max(1, end - time.time()))
    forget(fproc)
    if fproc.returncode != 0:
        raise RuntimeError("burst writer failed")
    bw = load_fio(out)["jobs"][0]["write"]["bw_bytes"] / (1 << 20)
    gens = ssp.status()["checkpoint_generation"] - gen0
    return f"{BURST_MIB} MiB at {bw:.0f} MiB/s, {gens} checkpoints"


def prepare_resync(ssp):
    """Take failure group 2's PV away (read-only file: the pool degrades), write RESYNC_MIB."""
    os.chmod(ssp.pv_b, 0o444)
    ssp.wait_state("DEGRADED", 30)
    run(fio_args("degraded-writer", ssp.uri("burst"),
                 ["--rw=write", "--bs=1M", "--iodepth=8", f"--size={RESYNC_MIB}M",
                  "--offset=0", "--end_fsync=1"]), timeout=600, logname="degraded.fio.log")
    ssp.copied0 = ssp.status()["resync_bytes_copied"]


def resync(ssp):
    os.chmod(ssp.pv_b, 0o644)  # writable again: the PV rejoins and resync starts
    end = time.time() + 600
    st = ssp.status()
    while time.time() < end:
        st = ssp.status()
        if st["mirror_state"] == "SYNCED":
            break
        time.sleep(0.1)
    if st["mirror_state"] != "SYNCED":
        raise RuntimeError(f"resync did not finish in 600 s: {st['mirror_state']}")
    return f"copied {(st['resync_bytes_copied'] - ssp.copied0) >> 20} MiB"


# ---------------------------------------------------------------------------- b. multi-conn

def start_peer(server, img):
    port = free_port()
    if server == "nbdkit":
        p = spawn(["nbdkit", "-f", "-r", "-i", "127.0.0.1", "-p", str(port), "-e", "data",
                   "file", img], "nbdkit.log")
    elif server == "qemu-nbd":
        p = spawn(["qemu-nbd", "-f", "raw", "-r", "-t", "--shared=8", "-x", "data",
                   "-b", "127.0.0.1", "-p", str(port), img], "qemu-nbd.log")
    elif server == "nbd-server":
        conf = os.path.join(WORK, "nbd-server.conf")
        pidf = os.path.join(WORK, "nbd-server.pid")
        with open(conf, "w") as f:
            f.write(f"[generic]\n    allowlist = true\n    listenaddr = 127.0.0.1\n"
                    f"    port = {port}\n[data]\n    exportname = {img}\n    readonly = true\n")
        run(["nbd-server", "-C", conf, "-p", pidf], timeout=30, logname="nbd-server.log")
        end = time.time() + 10
        while not (os.path.exists(pidf) and open(pidf).read().strip()) and time.time() < end:
            time.sleep(0.1)
        pid = int(open(pidf).read().strip())
        p = PidProc(pid)
        PROCS.append(p)
    else:
        raise ValueError(server)
    uri = f"nbd://127.0.0.1:{port}/data"
    wait_nbd(uri, p if not isinstance(p, PidProc) else None)
    return p, uri


class PidProc:
    """A daemon we did not fork (nbd-server): stop by its pid file's pid, and its children."""

    def __init__(self, pid):
        self.pid = pid
        self.returncode = None

    def poll(self):
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            return None if state != "Z" else 0
        except OSError:
            return 0

    def children(self):
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == self.pid:
                            out.append(int(d))
                except (OSError, ValueError, IndexError):
                    pass
        return out

    def terminate(self):
        for c in self.children() + [self.pid]:
            try:
                os.kill(c, signal.SIGTERM)
            except OSError:
                pass

    def kill(self):
        for c in self.children() + [self.pid]:
            try:
                os.kill(c, signal.SIGKILL)
            except OSError:
                pass

    def wait(self, timeout):
        end = time.time() + timeout
        while self.poll() is None:
            if time.time() > end:
                raise subprocess.TimeoutExpired("nbd-server", timeout)
            time.sleep(0.1)


def multiconn_pair(label, uri):
    """Median IOPS of MC_ROUNDS alternating runs of each shape."""
    size = DATA_GIB << 30
    got = {1: [], 4: []}
    for rnd in range(MC_ROUNDS):
        for conns, qd in ((1, 32), (4, 8)):
            j = run_fio(f"mc-{label}-{conns}x{qd}-{rnd}", uri,
                        randread_args(MC_SECONDS, qd, conns, size),
                        timeout=MC_SECONDS + 120)["jobs"][0]
            got[conns].append(j["read"]["iops"])
            log(f"multi-conn {label}: {conns} conn x QD{qd}: {j['read']['iops']:.0f} IOPS")
    return {k: sorted(v)[len(v) // 2] for k, v in got.items()}


def multiconn(ssp):
    rows = {"sspd": multiconn_pair("sspd", ssp.uri("data"))}
    ssp.stop()
    img = os.path.join(WORK, "data.img")
    # The same bytes as the sspd LU, as a raw file for the peers (pool offline meanwhile).
    ssp.ctl("lu", "export", "data", img, timeout=1800)
    for server in ("nbdkit", "qemu-nbd", "nbd-server"):
        try:
            p, uri = start_peer(server, img)
        except (RuntimeError, OSError, ValueError) as e:
            log(f"{server}: not measured: {e}")
            rows[server] = None
            continue
        try:
            rows[server] = multiconn_pair(server, uri)
        finally:
            stop(p)
            forget(p)
    os.unlink(img)
    return rows


# ---------------------------------------------------------------------------- c. flush

def flush_latency(ssp):
    res = {}
    for jobs in (1, 32):
        j = run_fio(f"flush-{jobs}", ssp.uri("flush"),
                    ["--rw=randwrite", "--bs=4k", "--iodepth=1", f"--numjobs={jobs}",
                     "--fsync=1", "--group_reporting", "--time_based",
                     f"--runtime={FLUSH_SECONDS}", "--size=256M", "--randrepeat=0"],
                    timeout=FLUSH_SECONDS + 120)["jobs"][0]
        sync = j.get("sync", {})
        lat = sync.get("lat_ns", {})
        res[jobs] = dict(mean_ms=lat.get("mean", 0) / 1e6, max_ms=lat.get("max", 0) / 1e6,
                         flushes=sync.get("total_ios", 0),
                         write_iops=j["write"]["iops"])
        log(f"flush x{jobs}: mean {res[jobs]['mean_ms']:.2f} ms, {res[jobs]['flushes']} flushes")
    return res


# ---------------------------------------------------------------------------- d. criterion

def criterion(crit_dir, since):
    """Read the parallel_writers group's estimates (ns per iteration) if this run made them."""
    out = {}
    for fn in ("one_thread", "two_threads_two_lus"):
        p = os.path.join(crit_dir, "parallel_writers", fn, "new", "estimates.json")
        b = os.path.join(crit_dir, "parallel_writers", fn, "new", "benchmark.json")
        try:
            if os.path.getmtime(p) < since:
                continue
            est = json.load(open(p))
            meta = json.load(open(b))
        except (OSError, ValueError):
            continue
        tp = meta.get("throughput") or {}
        nbytes = tp.get("Bytes") or tp.get("BytesDecimal") or 0
        t = (est.get("slope") or est["mean"])["point_estimate"]
        out[fn] = nbytes * 1e9 / t / (1 << 20)
    return out


# ---------------------------------------------------------------------------- report

def fmt(v, spec=".1f"):
    return "–" if v is None else format(v, spec)


def stall_verdict(run):
    st = run["stalls"]
    quiet = next(r for r in st if r["phase"] == "quiet")
    worst_max = max(r["max_ms"] for r in st if r["phase"] != "quiet")
    worst_ratio = max(r["p999_ms"] / quiet["p999_ms"] for r in st if r["phase"] != "quiet")
    ok = worst_max <= STALL_MAX_MS and worst_ratio <= STALL_P999_FACTOR
    return (f"worst max {worst_max:.0f} ms, worst p99.9 {worst_ratio:.1f}× quiet: "
            + ("met" if ok else "NOT met"))


def flush_ratio(run):
    f1, f32 = run["flush"]["1"], run["flush"]["32"]
    return f32["mean_ms"] / f1["mean_ms"] if f1["mean_ms"] else None


def par_ratio(run):
    cr = run["criterion"]
    if cr.get("one_thread") and cr.get("two_threads_two_lus"):
        return cr["two_threads_two_lus"] / cr["one_thread"]
    return None


def normalize(run):
    """JSON turns int keys into strings: use strings throughout."""
    run["flush"] = {str(k): v for k, v in run["flush"].items()}
    run["multiconn"] = {srv: ({str(k): v for k, v in r.items()} if r else None)
                        for srv, r in run["multiconn"].items()}
    return run


def report(path, runs):
    """Markdown with one column group per run (an earlier run first: "before")."""
    cur = runs[-1]
    meta = cur["meta"]
    labels = [r["label"] for r in runs]
    head = lambda cols: "| " + " | ".join(cols) + " |"  # noqa: E731
    rule = lambda n: "|---|" + "---:|" * (n - 1)  # noqa: E731

    cols = ["phase"]
    for lb in labels:
        cols += [f"max clat ms ({lb})", f"p99.9 ms ({lb})", f"p99.9 / quiet ({lb})"]
    cols += [f"disturbance ({labels[-1]})"]
    lines = [head(cols), rule(len(cols))]
    for k, row in enumerate(cur["stalls"]):
        cells = [row["phase"]]
        for run in runs:
            st = run["stalls"]
            quiet = next(r for r in st if r["phase"] == "quiet")
            r = next((x for x in st if x["phase"] == row["phase"]), None)
            if r is None:
                cells += ["–", "–", "–"]
                continue
            cells += [f"{r['max_ms']:.1f}", fmt(r["p999_ms"], ".2f"),
                      f"{r['p999_ms'] / quiet['p999_ms']:.1f}×"]
        dur = f"{row['dur']:.1f} s" if row["dur"] is not None else ""
        cells.append(f"{dur} {row['note']}".strip())
        lines.append(head(cells))
    stall_tab = "\n".join(lines)
    stall_goal = "; ".join(f"{r['label']}: {stall_verdict(r)}" for r in runs)

    cols = ["server"]
    for lb in labels:
        cols += [f"1 conn × QD32 IOPS ({lb})", f"4 conns × QD8 IOPS ({lb})", f"4 / 1 ({lb})"]
    lines = [head(cols), rule(len(cols))]
    for srv in cur["multiconn"]:
        cells = [srv]
        for run in runs:
            r = run["multiconn"].get(srv)
            if not r:
                cells += ["–", "–", "–"]
            else:
                cells += [f"{r['1']:.0f}", f"{r['4']:.0f}", f"{r['4'] / r['1']:.2f}"]
        lines.append(head(cells))
    mc_tab = "\n".join(lines)

    cols = ["flushers"]
    for lb in labels:
        cols += [f"mean flush ms ({lb})", f"max ms ({lb})", f"flushes ({lb})"]
    lines = [head(cols), rule(len(cols))]
    for n in ("1", "32"):
        cells = [n]
        for run in runs:
            f = run["flush"][n]
            cells += [f"{f['mean_ms']:.2f}", f"{f['max_ms']:.1f}", str(f["flushes"])]
        lines.append(head(cells))
    cells = ["32 / 1 mean"]
    for run in runs:
        cells += [f"{fmt(flush_ratio(run), '.1f')}×", "", ""]
    lines.append(head(cells))
    fl_tab = "\n".join(lines)
    fl_goal = "; ".join(
        f"{r['label']}: " + ("met" if (flush_ratio(r) or 99) <= 2 else "NOT met") for r in runs)

    lines = []
    for run in runs:
        cr, pr = run["criterion"], par_ratio(run)
        if pr is None:
            lines.append(f"- {run['label']}: not run (BENCH_CRITERION=0)")
        else:
            lines.append(f"- {run['label']}: one thread {cr['one_thread']:.1f} MiB/s, two threads "
                         f"on two LUs {cr['two_threads_two_lus']:.1f} MiB/s: {pr:.2f}× "
                         + ("(met)" if pr >= 1.6 else "(NOT met)"))
    cr_txt = "\n".join(lines)

    runs_txt = "\n".join(f"- **{r['label']}**: {r['meta']['date']}, git {r['meta']['git']}"
                         + (f"; {r['meta']['note']}" if r["meta"].get("note") else "")
                         for r in runs)
    doc = f"""# Engine benchmarks (issue 11): stalls during maintenance, multi-conn, group commit

Made by `scripts/bench-engine.sh` (driver `scripts/lib/bench_engine.py`); every figure of a
column comes from one run. Runs:
{runs_txt}

Machine: {meta['machine']}. {meta['fio']}. Servers listen on 127.0.0.1 and share the 2 cores
with fio (and with whatever else runs on the machine: the dev box is shared, so compare figures
of one run with each other first). To add a column, run the script with
`BENCH_BEFORE=docs/bench-engine.json BENCH_LABEL=after` (the JSON holds the previous run).

## a. Stalls during maintenance

Goal (issue 11): fio's max completion latency ≤ {STALL_MAX_MS} ms and p99.9 ≤
{STALL_P999_FACTOR}× the quiet run's, in every phase. {stall_goal}.

A mirrored pool (two failure groups, one sparse {meta['pv_gib']} GiB PV file each) with a
{meta['data_gib']} GiB LU `data` written in full through sspd. fio (`ioengine=nbd`, 4 KiB
`randread`, QD8, one connection, `--time_based --runtime={meta['phase_seconds']}`) reads `data`;
{meta['disturb_after']} s into each phase the disturbance starts: `sspctl scrub --wait` (`--rate 0`, unthrottled, where sspctl has it); online
`sspctl check`; a second client writing {meta['burst_mib']} MiB (1 MiB writes, QD8, a flush every
32) to another LU while `sspctl gc --max-segments 0` commits a checkpoint every second; a resync
of what {meta['resync_mib']} MiB of writes changed (the second group's PV file made read-only, so
the pool degraded, then {meta['resync_mib']} MiB written, then the file writable again: the PV
rejoins and resync copies what it missed). Max and p99.9 are fio's completion latency
(`clat_ns`); "disturbance" is how long the command ran (from the latest run).

{stall_tab}

## b. Multi-conn

Goal: four connections not slower than one at the same total queue depth (sspd row, 4 / 1 ≥ 1).
4 KiB random reads of the same {meta['data_gib']} GiB of data (`ioengine=nbd`, `--time_based
--runtime={meta['mc_seconds']}`, `--norandommap`; median of {meta['mc_rounds']} alternating
runs of each shape): one connection at QD32 vs four (fio
`--numjobs=4`, one connection each) at QD8. sspd serves the LU `data` of the pool above; nbdkit
(`file`, `-r`), qemu-nbd (`-r -t --shared=8`) and nbd-server (config file, `readonly = true`)
serve a raw file exported from it (`sspctl lu export`), page-cached. With four fio jobs the
client side runs four threads too, so a server that scales shows more than 1.

{mc_tab}

## c. Flush latency (group commit)

Goal: 32 concurrent flushers complete within 2× one flush's time (mean flush latency ratio
≤ 2). {fl_goal}.
fio `--rw=randwrite --bs=4k --iodepth=1 --fsync=1` (an NBD FLUSH after every write) against a
256 MiB LU of the same mirrored pool (both groups synced), 1 job vs 32 jobs (32 connections),
`--runtime={meta['flush_seconds']}`. Flush latency is fio's `sync` latency (the FLUSH alone).

{fl_tab}

## d. Parallel writers (criterion)

Goal: two threads writing 4 KiB blocks to two LUs in process reach ≥ 1.6× one thread's
throughput. `cargo bench --bench engine -- parallel_writers` (file-backed pool on the target
disk, 1 GiB LUs in a 4 GiB pool, no flushes; criterion's slope estimate):
{cr_txt}
"""
    with open(path, "w") as f:
        f.write(doc)
    print(doc)


def main():
    global WORK
    sspd, sspctl, out_md, base, crit_dir, stamp = sys.argv[1:7]
    os.makedirs(base, exist_ok=True)
    WORK = tempfile.mkdtemp(prefix="bench-engine-", dir=base)
    os.makedirs(os.path.join(WORK, "logs"))
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    pv_gib = 2 * DATA_GIB + 2
    pool = os.path.join(WORK, "pool")
    ssp = Ssp(sspd, sspctl, pool)
    ssp.pv_a = os.path.join(WORK, "pv-a.img")
    ssp.pv_b = os.path.join(WORK, "pv-b.img")
    ssp.ctl("pool", "create", "--pv", f"{ssp.pv_a}:{pv_gib}G", "--name", "bench")
    ssp.ctl("failgrp", "create", "fg2", "--pv", f"{ssp.pv_b}:{pv_gib}G")
    ssp.ctl("lu", "create", "data", "--size", f"{DATA_GIB}G")
    ssp.ctl("lu", "create", "burst", "--size", f"{max(BURST_MIB, RESYNC_MIB) * 2}M")
    ssp.ctl("lu", "create", "flush", "--size", "256M")
    ssp.start()
    if ssp.status()["mirror_state"] != "SYNCED":
        ssp.wait_state("SYNCED", 60)
    log(f"writing {DATA_GIB} GiB into the mirrored pool")
    t = time.time()
    run(fio_args("fill", ssp.uri("data"),
                 ["--rw=write", "--bs=1M", "--iodepth=8", f"--size={DATA_GIB}G",
                  "--end_fsync=1", "--refill_buffers"]),
        timeout=3600, logname="fill.fio.log")
    log(f"filled in {time.time() - t:.0f} s")

    st = stalls(ssp)
    fl = flush_latency(ssp)
    mc = multiconn(ssp)  # stops sspd
    cr = criterion(crit_dir, os.path.getmtime(stamp))

    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    cpu = "unknown"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(open("/proc/meminfo").readline().split()[1]) / 1048576
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                git=git + (" + local changes" if dirty else ""),
                machine=f"{os.cpu_count()} CPUs ({cpu}), {mem:.1f} GiB memory, Linux "
                        f"{os.uname().release}",
                fio=subprocess.run(["fio", "--version"], capture_output=True,
                                   text=True).stdout.strip(),
                pv_gib=pv_gib, data_gib=DATA_GIB, phase_seconds=PHASE_SECONDS,
                disturb_after=DISTURB_AFTER, burst_mib=BURST_MIB, resync_mib=RESYNC_MIB,
                mc_seconds=MC_SECONDS, mc_rounds=MC_ROUNDS, flush_seconds=FLUSH_SECONDS,
                note=ENV.get("BENCH_NOTE", ""))
    run_res = normalize(json.loads(json.dumps(dict(
        label=ENV.get("BENCH_LABEL") or f"git {git}", meta=meta, stalls=st, multiconn=mc,
        flush=fl, criterion=cr))))
    runs = []
    before = ENV.get("BENCH_BEFORE")
    if before:
        with open(before) as f:
            prev = json.load(f)
        runs += [normalize(r) for r in (prev["runs"] if "runs" in prev else [prev])]
    runs.append(run_res)
    report(out_md, runs)
    with open(os.path.splitext(out_md)[0] + ".json", "w") as f:
        json.dump(dict(runs=runs), f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
