# shellcheck shell=bash
# Helpers shared by the NBD benchmark scripts (scripts/bench-vs-peers.sh,
# scripts/bench-clones.sh). Source it from bash with `set -euo pipefail`; it defines functions
# and PYTHON only, and runs nothing. Set BENCH_NAME (used in messages) before sourcing.

PYTHON=/usr/bin/python3
[[ -x $PYTHON ]] || PYTHON=python3

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die77() { echo "${BENCH_NAME:-bench}: $*" >&2; exit 77; }

# ensure_tools TOOL=PACKAGE...: install the Debian packages of missing tools with apt-get
# (update first; sudo -n when not root); exit 77 when that is impossible or fails.
ensure_tools() {
    local spec tool pkg missing=() SUDO=""
    for spec in "$@"; do
        tool=${spec%%=*}
        pkg=${spec#*=}
        if ! command -v "$tool" >/dev/null 2>&1 ||
            ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]})); then
        if [[ $(id -u) != 0 ]]; then
            command -v sudo >/dev/null 2>&1 || die77 "missing ${missing[*]} and not root (no sudo)"
            SUDO="sudo -n"
        fi
        command -v apt-get >/dev/null 2>&1 || die77 "missing ${missing[*]} and no apt-get"
        log "installing Debian packages: ${missing[*]}"
        $SUDO apt-get update -qq || die77 "apt-get update failed; cannot install ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >&2 ||
            die77 "apt-get install ${missing[*]} failed"
    fi
    for spec in "$@"; do
        tool=${spec%%=*}
        command -v "$tool" >/dev/null 2>&1 || die77 "$tool is still missing after apt-get install"
    done
}

pid_state() { # PID: its state letter (R, S, Z, ...), nothing when gone
    awk '{sub(/.*\) /, ""); print $1}' "/proc/$1/stat" 2>/dev/null || true
}

pid_alive() { # PID: running (a zombie counts as gone)
    [[ -e /proc/$1 ]] && [[ $(pid_state "$1") != Z ]]
}

stop_pid() { # PID: SIGTERM, up to 10 s, then SIGKILL; a zombie counts as gone.
    local pid=$1 i state
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        state=$(awk '{sub(/.*\) /, ""); print $1}' "/proc/$pid/stat" 2>/dev/null) || break
        [[ $state == Z ]] && break
        sleep 0.1
    done
    if [[ -e /proc/$pid && ${state:-} != Z ]]; then
        log "pid $pid ignored SIGTERM for 10 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

children_of() { # PID: direct children (nbd-server forks one per connection)
    local p stat ppid
    for p in /proc/[0-9]*; do
        { read -r stat <"$p/stat"; } 2>/dev/null || continue
        stat=${stat##*) }
        read -r _ ppid _ <<<"$stat"
        [[ $ppid == "$1" ]] && echo "${p#/proc/}"
    done
}

free_port() {
    "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_nbd URI PID TENTHS: until nbdinfo answers on URI (0), PID exits (1) or TENTHS tenths of
# a second pass (2).
wait_nbd() {
    local uri=$1 pid=$2 tenths=$3 i
    for ((i = 0; i < tenths; i++)); do
        if nbdinfo --size "$uri" >/dev/null 2>&1; then return 0; fi
        pid_alive "$pid" || return 1
        sleep 0.1
    done
    return 2
}

# write_cpu_sampler FILE: write the CPU sampler (Python) to FILE. Usage of the sampler:
#   python3 FILE SERVER_PID WATCH_PID OUT MAX_SECONDS TREE(0|1)
# Every 0.1 s, until WATCH_PID exits (bounded by MAX_SECONDS), it appends "unix_time ticks" to
# OUT, ticks = utime+stime+cutime+cstime of SERVER_PID (+ the same of its children when TREE=1).
write_cpu_sampler() {
    cat >"$1" <<'PY'
import os, sys, time
srv, watch, out, maxsec, tree = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                 float(sys.argv[4]), sys.argv[5] == "1")
def fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    return s[s.rindex(")") + 2:].split()   # [0] = state (field 3)
def ticks(f):
    return int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])   # fields 14..17
def alive(pid):
    try:
        return fields(pid)[0] != "Z"
    except OSError:
        return False
def sample():
    total = ticks(fields(srv))
    if tree:
        for p in os.listdir("/proc"):
            if p.isdigit():
                try:
                    f = fields(p)
                    if int(f[1]) == srv:
                        total += ticks(f)
                except (OSError, ValueError, IndexError):
                    pass
    return total
deadline = time.time() + maxsec
with open(out, "w") as o:
    while True:
        done = not alive(watch) or time.time() > deadline
        try:
            o.write(f"{time.time():.4f} {sample()}\n")
        except (OSError, ValueError, IndexError):
            o.write(f"{time.time():.4f} gone\n")
            break
        if done:
            break
        time.sleep(0.1)
PY
}

# machine_desc: "N CPUs (model), X GiB memory, Linux K" for the reports.
machine_desc() {
    local cpu mem
    cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)
    mem=$(awk '/MemTotal/ {printf "%.1f", $2 / 1048576}' /proc/meminfo)
    echo "$(nproc) CPUs ($cpu), $mem GiB memory, Linux $(uname -r)"
}
