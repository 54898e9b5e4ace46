"""Hostile NBD clients against one server at a time (driven by scripts/bench-hostile.sh).

Usage: python3 hostile.py CONFIG.json OUT.json
CONFIG: {"servers": [...], "cases": [...], "dir": RUN_DIR, "sspd": PATH, "sspctl": PATH}.
For each case and server, in that order: start the server fresh, measure its RSS (the sum of
VmRSS over the server and its child processes, sampled every 50 ms) before, at its peak and
after the client left, run the case, then check that it is alive and serves a fresh client.
Every loop is bounded in count and time; servers listen on 127.0.0.1 only.
"""
import json, os, resource, select, socket, struct, subprocess, sys, threading, time

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
OPT_ABORT, OPT_GO, OPT_EXTENDED_HEADERS = 2, 7, 11
REQ_MAGIC, EXT_REQ_MAGIC = 0x25609513, 0x21E41C71
SIMPLE_MAGIC, STRUCT_MAGIC, EXT_MAGIC = 0x67446698, 0x668E33EF, 0x6E8A278C
CMD_READ, CMD_DISC, CMD_TRIM, CMD_WRITE_ZEROES = 0, 2, 4, 6
FLAG_NO_HOLE = 2
EXPORT = "hostile"
TIB, GIB, MIB = 1 << 40, 1 << 30, 1 << 20

CFG = json.load(open(sys.argv[1]))
RUN = CFG["dir"]
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# ---- raw NBD client --------------------------------------------------------------------------

def recv_exact(s, n):
    b = bytearray()
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise ConnectionError("server closed the connection")
        b += c
    return bytes(b)


def option(s, code, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, code, len(data)) + data)


def option_replies(s, code):
    """Replies to one option until ACK or an error: [(type, data)]."""
    out = []
    while True:
        magic, opt, typ, ln = struct.unpack(">QIII", recv_exact(s, 20))
        if magic != REPLY_MAGIC or opt != code:
            raise ConnectionError("bad option reply")
        out.append((typ, recv_exact(s, ln)))
        if typ == 1 or typ & 0x80000000:
            return out


def handshake(port, extended=False, timeout=10.0):
    """Connect and negotiate (fixed newstyle, NBD_OPT_GO); returns (sock, size, extended)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    magic, ihave, hflags = struct.unpack(">QQH", recv_exact(s, 18))
    if magic != NBDMAGIC or ihave != IHAVEOPT:
        raise ConnectionError("not a newstyle NBD server")
    cflags = 1 | (2 if hflags & 2 else 0)
    s.sendall(struct.pack(">I", cflags))
    ext = False
    if extended:
        option(s, OPT_EXTENDED_HEADERS)
        ext = option_replies(s, OPT_EXTENDED_HEADERS)[-1][0] == 1
    name = EXPORT.encode()
    option(s, OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
    size = None
    for typ, data in option_replies(s, OPT_GO):
        if typ & 0x80000000:
            raise ConnectionError(f"NBD_OPT_GO refused ({typ:#x}): {data[4:]!r}")
        if typ == 3 and len(data) >= 12 and struct.unpack(">H", data[:2])[0] == 0:
            size = struct.unpack(">Q", data[2:10])[0]
    return s, size, ext


def request(s, ext, typ, offset, length, flags=0, cookie=1):
    if ext:
        return struct.pack(">IHHQQQ", EXT_REQ_MAGIC, flags, typ, cookie, offset, length)
    return struct.pack(">IHHQQI", REQ_MAGIC, flags, typ, cookie, offset, length)


def reply(s, ext):
    """Error code of the reply to a request without read payload."""
    if not ext:
        magic, err, _ = struct.unpack(">IIQ", recv_exact(s, 16))
        if magic == SIMPLE_MAGIC:
            return err
        raise ConnectionError(f"unexpected reply magic {magic:#x}")
    err = 0
    while True:
        magic, flags, typ, _cookie, _off, ln = struct.unpack(">IHHQQQ", recv_exact(s, 32))
        if magic != EXT_MAGIC:
            raise ConnectionError(f"unexpected reply magic {magic:#x}")
        data = recv_exact(s, ln)
        if typ & 0x8000 and len(data) >= 4:
            err = struct.unpack(">I", data[:4])[0]
        if flags & 1:
            return err


def fresh_client(port):
    """A new client connects, negotiates and reads 4 KiB within 10 s."""
    try:
        s, _, _ = handshake(port, timeout=10)
        s.sendall(request(s, False, CMD_READ, 0, 4096, cookie=7))
        magic, err, _ = struct.unpack(">IIQ", recv_exact(s, 16))
        ok = magic == SIMPLE_MAGIC and err == 0 and len(recv_exact(s, 4096)) == 4096
        s.sendall(request(s, False, CMD_DISC, 0, 0))
        s.close()
        return ok
    except (OSError, ConnectionError) as e:
        log("fresh client failed:", e)
        return False


# ---- processes -------------------------------------------------------------------------------

def children(pid):
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                st = open(f"/proc/{p}/stat").read()
                if int(st[st.rindex(")") + 2:].split()[1]) == pid:
                    out.append(int(p))
            except (OSError, ValueError):
                pass
    return out


def alive(pid):
    try:
        st = open(f"/proc/{pid}/stat").read()
        return st[st.rindex(")") + 2] != "Z"
    except OSError:
        return False


def rss_kib(pid, tree):
    total = 0
    for p in [pid] + (children(pid) if tree else []):
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


class Sampler(threading.Thread):
    def __init__(self, pid, tree):
        super().__init__(daemon=True)
        self.pid, self.tree, self.peak, self.stop = pid, tree, 0, False

    def run(self):
        while not self.stop:
            self.peak = max(self.peak, rss_kib(self.pid, self.tree))
            time.sleep(0.05)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc_pid, secs=30):
    end = time.time() + secs
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            if proc_pid and not alive(proc_pid):
                return False
            time.sleep(0.1)
    return False


class Server:
    """One fresh server with a 1 TiB export on RUN/NAME-N (its data on the script's tmpfs)."""
    seq = 0

    def __init__(self, name, nofile=None):
        Server.seq += 1
        self.name, self.port = name, free_port()
        self.dir = os.path.join(RUN, f"{name}-{Server.seq}")
        os.makedirs(self.dir)
        self.log = open(os.path.join(self.dir, "server.log"), "w")
        pre = ["prlimit", f"--nofile={nofile}:{nofile}"] if nofile else []
        self.tree = False
        img = os.path.join(self.dir, "export.img")
        if name != "sspd":
            with open(img, "wb") as f:
                f.truncate(TIB)
        if name == "sspd":
            self.pool = os.path.join(self.dir, "pool")
            pv = os.path.join(self.dir, "pv0.img")
            subprocess.run([CFG["sspctl"], "--pool", self.pool, "pool", "create", "--pv",
                            f"{pv}:{CFG['pv_gib']}G"], check=True, stdout=self.log, stderr=self.log)
            subprocess.run([CFG["sspctl"], "--pool", self.pool, "lu", "create", EXPORT, "--size",
                            "1T"], check=True, stdout=self.log, stderr=self.log)
            cmd = pre + [CFG["sspd"], "--pool", self.pool, "--listen", f"127.0.0.1:{self.port}"]
        elif name == "qemu-nbd":
            cmd = pre + ["qemu-nbd", "-f", "raw", "-t", "--shared=0", "-x", EXPORT, "-b",
                         "127.0.0.1", "-p", str(self.port), img]
        elif name == "nbdkit":
            cmd = pre + ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(self.port), "-e", EXPORT,
                         "file", img]
        elif name == "nbd-server":
            conf = os.path.join(self.dir, "nbd-server.conf")
            with open(conf, "w") as f:
                f.write(f"[generic]\n    allowlist = true\n    listenaddr = 127.0.0.1\n"
                        f"    port = {self.port}\n[{EXPORT}]\n    exportname = {img}\n")
            # Daemon mode (with -d it serves one connection and exits): the pid file names
            # the daemon, which forks one child per connection.
            cmd = pre + ["nbd-server", "-C", conf, "-p", os.path.join(self.dir, "pid")]
            self.tree = True
        else:
            raise SystemExit(f"unknown server {name}")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        if name == "nbd-server":
            pidf = os.path.join(self.dir, "pid")
            for _ in range(100):
                if os.path.exists(pidf) and open(pidf).read().strip():
                    break
                time.sleep(0.1)
            self.pid = int(open(pidf).read().strip())
        if not wait_port(self.port, self.pid):
            raise RuntimeError(f"{name} did not start; see {self.dir}/server.log")
        time.sleep(0.5)

    def rss(self):
        return rss_kib(self.pid, self.tree)

    def stop(self):
        for p in children(self.pid):
            try:
                os.kill(p, 15)
            except OSError:
                pass
        if self.pid != self.proc.pid and alive(self.pid):
            os.kill(self.pid, 15)
            for _ in range(100):
                if not alive(self.pid):
                    break
                time.sleep(0.1)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for p in children(self.pid):
            try:
                os.kill(p, 9)
            except OSError:
                pass
        self.log.close()
        subprocess.run(["rm", "-rf", self.dir])


# ---- cases -----------------------------------------------------------------------------------

def wait_reply(s, ext, secs):
    s.settimeout(secs)
    t0 = time.time()
    try:
        err = reply(s, ext)
        return f"{'ok' if err == 0 else f'error {err}'} in {time.time() - t0:.1f} s"
    except socket.timeout:
        return f"no reply in {secs} s"
    except (OSError, ConnectionError) as e:
        return f"connection lost after {time.time() - t0:.1f} s ({e})"


def zeroes(srv, want_extended):
    """WRITE_ZEROES with NO_HOLE at offset 0, then TRIM of the next range: 512 GiB each with
    extended headers (when asked for and negotiated), else 0xFFFFF000 bytes."""
    s, size, ext = handshake(srv.port, extended=want_extended)
    ln = 512 * GIB if ext else 0xFFFFF000
    notes = [f"{'extended headers' if ext else 'compact headers'}, length {ln:#x}"]
    s.sendall(request(s, ext, CMD_WRITE_ZEROES, 0, ln, FLAG_NO_HOLE, cookie=1))
    outcome = wait_reply(s, ext, CFG["op_seconds"])
    notes.append("WRITE_ZEROES NO_HOLE: " + outcome)
    if not outcome.startswith(("connection lost", "no reply")):
        s.sendall(request(s, ext, CMD_TRIM, ln, ln, 0, cookie=2))
        notes.append("TRIM: " + wait_reply(s, ext, CFG["op_seconds"]))
    s.close()
    return "; ".join(notes)


def case_zeroes(srv):
    return zeroes(srv, True)


def case_zeroes32(srv):
    return zeroes(srv, False)


def case_hoard(srv):
    """2000 READs of 32 MiB, replies never read; stop sending when the socket blocks for 5 s,
    wait 5 s, close."""
    s, size, _ = handshake(srv.port)
    s.setblocking(False)
    sent, n = 0, 2000
    buf = b"".join(request(s, False, CMD_READ, (i % 32) * 32 * MIB, 32 * MIB, cookie=i)
                   for i in range(n))
    blocked = False
    end = time.time() + 60
    while sent < len(buf) and time.time() < end:
        try:
            sent += s.send(buf[sent:])
        except BlockingIOError:
            _, w, _ = select.select([], [s], [], 5)
            if not w:
                blocked = True
                break
        except OSError as e:
            return f"sent {sent // 28} requests, then {e}"
    time.sleep(5)
    s.close()
    return f"sent {sent // 28} of {n} requests" + (" (socket blocked)" if blocked else "")


def case_churn(srv):
    """20,000 x connect, handshake (NBD_OPT_GO), close without NBD_CMD_DISC; at most 240 s."""
    n, done, fails = CFG["churn"], 0, 0
    end = time.time() + 240
    while done + fails < n and time.time() < end:
        try:
            s, _, _ = handshake(srv.port, timeout=5)
            s.close()
            done += 1
        except (OSError, ConnectionError):
            fails += 1
            if fails > 200:
                break
    return f"{done} handshakes, {fails} failed, in {240 - max(0, end - time.time()):.0f} s"


def case_flood(srv):
    """400 idle connections to a server with RLIMIT_NOFILE 256: is a fresh client served
    meanwhile (and for sspd, `sspctl lu list`)?"""
    socks, connected = [], 0
    for _ in range(400):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", srv.port))
        socks.append(s)
    end = time.time() + 10
    pending = list(socks)
    while pending and time.time() < end:
        _, w, _ = select.select([], pending, [], 1)
        for s in w:
            pending.remove(s)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                connected += 1
    time.sleep(2)
    served = fresh_client(srv.port)
    notes = [f"{connected}/400 connected"]
    if srv.name == "sspd":
        try:
            r = subprocess.run([CFG["sspctl"], "--pool", srv.pool, "lu", "list"],
                               capture_output=True, text=True, timeout=15)
            lines = [l for l in r.stdout.splitlines() if l.strip()]
            ok = r.returncode == 0 and any(EXPORT in l for l in lines)
            notes.append(f"sspctl lu list during the flood: exit {r.returncode}, "
                         f"{len(lines)} lines" + ("" if ok else " (NOT served)"))
        except subprocess.TimeoutExpired:
            notes.append("sspctl lu list: hung 15 s (NOT served)")
    for s in socks:
        s.close()
    return "; ".join(notes), served


def case_slow(srv):
    """Connect, read the greeting, send nothing for 30 s: does the server close it, and when?"""
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    t0 = time.time()
    try:
        recv_exact(s, 18)
    except (OSError, ConnectionError) as e:
        return f"no greeting ({e})"
    served = fresh_client(srv.port)
    s.settimeout(1)
    closed = None
    while time.time() - t0 < CFG["slow_seconds"]:
        try:
            if not s.recv(4096):
                closed = time.time() - t0
                break
        except socket.timeout:
            continue
        except OSError:
            closed = time.time() - t0
            break
    s.close()
    when = f"closed by the server after {closed:.1f} s" if closed is not None else \
        f"still open after {CFG['slow_seconds']} s"
    return when, served


CASES = {
    "zeroes": ("huge WRITE_ZEROES/TRIM (extended headers if supported)", case_zeroes, None),
    "zeroes32": ("WRITE_ZEROES/TRIM 0xFFFFF000 (compact headers)", case_zeroes32, None),
    "hoard": ("reply hoarding", case_hoard, None),
    "churn": (f"connection churn", case_churn, None),
    "flood": ("flood at nofile=256", case_flood, 256),
    "slow": ("slow handshake", case_slow, None),
}


def main():
    rows = []
    for case in CFG["cases"]:
        title, fn, nofile = CASES[case]
        for name in CFG["servers"]:
            log(f"{case} / {name}")
            row = {"case": title, "server": name}
            try:
                srv = Server(name, nofile)
            except Exception as e:  # noqa: BLE001 -- reported in the table
                row.update(notes=f"did not start: {e}", alive=False, served=False)
                rows.append(row)
                continue
            try:
                row["before"] = srv.rss()
                smp = Sampler(srv.pid, srv.tree)
                smp.start()
                try:
                    out = fn(srv)
                    row["notes"], row["during"] = out if isinstance(out, tuple) else (out, None)
                except Exception as e:  # noqa: BLE001
                    row["notes"] = f"client error: {e}"
                time.sleep(3)
                smp.stop = True
                smp.join()
                row["peak"] = max(smp.peak, row["before"])
                row["alive"] = alive(srv.pid)
                row["served"] = row["alive"] and fresh_client(srv.port)
                time.sleep(1)
                row["after"] = srv.rss() if row["alive"] else None
                if not row["alive"]:
                    lines = open(os.path.join(srv.dir, "server.log"), errors="replace") \
                        .read().splitlines()
                    why = [l for w in ("memory allocation", "panicked", "Assertion", "Aborted",
                                       "ERROR", "error:") for l in lines if w in l]
                    row["notes"] += f"; server died: {(why or lines[-1:] or ['(no log)'])[0][:200]}"
            finally:
                srv.stop()
            log(json.dumps(row))
            rows.append(row)
    json.dump(rows, open(sys.argv[2], "w"), indent=1)


main()
