#!/usr/bin/python3
"""Hostile NBD clients against sspd and its peers (qemu-nbd, nbdkit, nbd-server): the server's
RSS before, at its peak and after each case, and whether a fresh client was served meanwhile.

Cases (each on a freshly started server, export "big", 512 MiB, sparse):
  hoard  one client queues 2000 READs of 32 MiB and never reads a reply; after 3 s a fresh client
         reads 4 KiB; then the hoarder leaves and the RSS is taken again after 3 s.
  churn  20,000 cycles of connect, NBD_OPT_GO, NBD_CMD_DISC, wait for close.
  flood  the server runs under `prlimit --nofile=256:256`; 400 clients connect and say nothing;
         a fresh client then tries NBD_OPT_GO (served / refused with a message / closed / hung);
         the idle clients leave and a fresh client tries again.

RSS is the sum of VmRSS over the server process and its descendants (nbd-server forks one per
client), polled every 50 ms; the peak is the largest poll. Prints a Markdown table.

Usage: scripts/hostile-vs-peers.py [--sspd PATH] [--servers sspd,qemu-nbd,nbdkit,nbd-server]
       [--cases hoard,churn,flood]
Needs only python3 and the servers; a server that is not installed is skipped. Build sspd first
(`cargo build --release`).
"""
import argparse
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

MIB = 1 << 20
EXPORT = "big"


def tree_rss(pid):
    """Sum of VmRSS (bytes) of pid and its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class Poller:
    """Polls the tree RSS of pid; keeps the peak."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0, False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            self.peak = max(self.peak, tree_rss(self.pid))
            time.sleep(0.05)

    def done(self):
        self.stop = True
        self.t.join()
        return self.peak


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("server exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not listen")


def option(code, data=b""):
    return b"IHAVEOPT" + struct.pack(">II", code, len(data)) + data


def go(port, timeout=10):
    """NBD_OPT_GO on a fresh connection: ('served', sock) / ('refused', msg) / ('closed', None) /
    ('hung', None)."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError as e:
        return ("connect failed: %s" % e.strerror, None)
    s.settimeout(timeout)
    try:
        g = recv_exact(s, 18)
        if g is None:
            return ("closed", None)
        name = EXPORT.encode()
        s.sendall(struct.pack(">I", 3) + option(7, struct.pack(">I", len(name)) + name + b"\0\0"))
        while True:
            h = recv_exact(s, 20)
            if h is None:
                return ("closed", None)
            _, _, typ, ln = struct.unpack(">QIII", h)
            data = recv_exact(s, ln) if ln else b""
            if typ == 1:
                return ("served", s)
            if typ >= 0x80000000:
                return ("refused: %s" % (data or b"").decode(errors="replace"), None)
    except socket.timeout:
        return ("hung", None)
    except OSError:
        return ("closed", None)


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            return None
        b += c
    return b


def request(typ, cookie, off, ln):
    return struct.pack(">IHHQQI", 0x25609513, 0, typ, cookie, off, ln)


def read4k(s):
    s.sendall(request(0, 1, 4096, 4096))
    h = recv_exact(s, 16)
    if h is None or struct.unpack(">I", h[4:8])[0] != 0:
        return False
    return recv_exact(s, 4096) is not None


class Server:
    def __init__(self, kind, sspd, workdir, prefix=()):
        self.kind, self.port, self.dir = kind, free_port(), workdir
        img = os.path.join(workdir, "big.img")
        if kind == "sspd":
            pool = os.path.join(workdir, "pool")
            if not os.path.exists(pool):
                ctl = os.path.join(os.path.dirname(sspd), "sspctl")
                subprocess.run([ctl, "--pool", pool, "pool", "create", "--pv",
                                os.path.join(workdir, "pv0.img") + ":1G"], check=True,
                               stdout=subprocess.DEVNULL)
                subprocess.run([ctl, "--pool", pool, "lu", "create", EXPORT, "--size", "512M"],
                               check=True, stdout=subprocess.DEVNULL)
            cmd = [sspd, "--pool", pool, "--listen", f"127.0.0.1:{self.port}"]
        else:
            with open(img, "wb") as f:
                f.truncate(512 * MIB)
            if kind == "qemu-nbd":
                cmd = ["qemu-nbd", "-f", "raw", "-x", EXPORT, "-t", "--shared=0", "-b", "127.0.0.1",
                       "-p", str(self.port), img]
            elif kind == "nbdkit":
                cmd = ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(self.port), "file", img]
            elif kind == "nbd-server":
                conf = os.path.join(workdir, "nbd.conf")
                with open(conf, "w") as f:
                    f.write(f"[generic]\nlistenaddr = 127.0.0.1\nport = {self.port}\n"
                            f"[{EXPORT}]\nexportname = {img}\n")
                # It daemonizes and forks one process per client: follow its pid file.
                self.pidfile = os.path.join(workdir, "nbd.pid")
                cmd = ["nbd-server", "-C", conf, "-p", self.pidfile]
            else:
                raise ValueError(kind)
        self.proc = subprocess.Popen(list(prefix) + cmd, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(workdir, kind + ".log"), "ab"))
        wait_port(self.port, None if kind == "nbd-server" else self.proc)
        self.pid = self.proc.pid
        if kind == "nbd-server":
            with open(self.pidfile) as f:
                self.pid = int(f.read().strip())

    def stop(self):
        if self.pid != self.proc.pid:
            try:
                os.kill(self.pid, 15)
            except OSError:
                pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def case_hoard(srv):
    pid = srv.pid
    st, s = go(srv.port)
    if s:
        read4k(s)
        s.close()
    before = tree_rss(pid)
    poll = Poller(pid)
    st, h = go(srv.port)
    if not h:
        poll.done()
        return before, 0, 0, "hoarder not served: " + st
    h.sendall(b"".join(request(0, i, (i % 15) * 32 * MIB, 32 * MIB) for i in range(2000)))
    time.sleep(3)
    st, f = go(srv.port)
    fresh = "served" if f and read4k(f) else st
    if st == "served" and not f:
        fresh = "hung"
    h.close()
    if f:
        f.close()
    time.sleep(3)
    peak = poll.done()
    return before, peak, tree_rss(pid), "fresh client: " + fresh


def case_churn(srv):
    pid = srv.pid
    before = tree_rss(pid)
    poll = Poller(pid)
    start = time.time()
    for _ in range(20000):
        st, s = go(srv.port)
        if not s:
            poll.done()
            return before, 0, tree_rss(pid), "cycle failed: " + st
        s.sendall(request(2, 0, 0, 0))
        try:
            s.settimeout(5)
            while s.recv(4096):
                pass
        except OSError:
            pass
        s.close()
    took = time.time() - start
    peak = poll.done()
    return before, peak, tree_rss(pid), "20,000 cycles in %.1f s" % took


def case_flood(srv):
    pid = srv.pid
    before = tree_rss(pid)
    poll = Poller(pid)
    idle = []
    for _ in range(400):
        try:
            idle.append(socket.create_connection(("127.0.0.1", srv.port), timeout=2))
        except OSError:
            break
    time.sleep(1)
    st, s = go(srv.port, timeout=5)
    during = "served" if s and read4k(s) else st
    if s:
        s.close()
    for c in idle:
        c.close()
    time.sleep(2)
    st, s = go(srv.port, timeout=5)
    later = "served" if s and read4k(s) else st
    if s:
        s.close()
    peak = poll.done()
    return before, peak, tree_rss(pid), f"{len(idle)} idle; fresh client: {during}; after: {later}"


CASES = {"hoard": case_hoard, "churn": case_churn, "flood": case_flood}


def main():
    ap = argparse.ArgumentParser()
    default_sspd = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target",
                                "release", "sspd")
    ap.add_argument("--sspd", default=default_sspd)
    ap.add_argument("--servers", default="sspd,qemu-nbd,nbdkit,nbd-server")
    ap.add_argument("--cases", default="hoard,churn,flood")
    a = ap.parse_args()
    rows = []
    for case in a.cases.split(","):
        for kind in a.servers.split(","):
            exe = a.sspd if kind == "sspd" else shutil.which(kind)
            if not exe or not os.path.exists(exe):
                print(f"skipping {kind}: not installed", file=sys.stderr)
                continue
            with tempfile.TemporaryDirectory() as d:
                prefix = ("prlimit", "--nofile=256:256") if case == "flood" else ()
                try:
                    srv = Server(kind, a.sspd, d, prefix)
                except Exception as e:  # noqa: BLE001 -- report and go on with the others
                    rows.append((case, kind, 0, 0, 0, f"did not start: {e}"))
                    continue
                try:
                    before, peak, after, note = CASES[case](srv)
                    if srv.proc.poll() is not None and srv.pid == srv.proc.pid:
                        note += f"; server exited ({srv.proc.returncode})"
                finally:
                    srv.stop()
                rows.append((case, kind, before, peak, after, note))
                print(rows[-1], file=sys.stderr)
    print("| case | server | RSS before | peak | after | notes |")
    print("|---|---|---:|---:|---:|---|")
    for case, kind, b, p, af, note in rows:
        print(f"| {case} | {kind} | {b / MIB:.1f} MiB | {p / MIB:.1f} MiB | {af / MIB:.1f} MiB | {note} |")


if __name__ == "__main__":
    main()
