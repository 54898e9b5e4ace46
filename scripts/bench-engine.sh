#!/usr/bin/env bash
# Engine benchmarks (issue 11), from one run, written to docs/bench-engine.md:
#   a. stalls during maintenance: fio 4 KiB randread QD8 over NBD on a mirrored pool holding
#      DATA_GIB GiB, quiet vs during scrub, online check, a write burst with checkpoints and a
#      resync (fio's max and p99.9 completion latency; goal: max <= 250 ms, p99.9 <= 4x quiet);
#   b. multi-conn: 1 connection QD32 vs 4 connections QD8, sspd vs nbdkit, qemu-nbd, nbd-server;
#   c. flush latency: 1 vs 32 concurrent flushers (goal: 32 within 2x of one);
#   d. parallel writers in process (criterion, benches/engine.rs `parallel_writers`; goal 1.6x).
# The driver is scripts/lib/bench_engine.py (see its docstring for the exact workloads).
#
# Usage: scripts/bench-engine.sh                  the suite above (about 5 min with DATA_GIB=2)
#        scripts/bench-engine.sh criterion [ARGS] every benches/engine.rs benchmark (criterion
#                                                 ARGS, e.g. a filter) and a summary table
# Environment: DATA_GIB [2], PHASE_SECONDS [15], BURST_MIB [256], RESYNC_MIB [256],
#   MC_SECONDS [6], MC_ROUNDS [3], FLUSH_SECONDS [8], BENCH_CRITERION [1] (0 skips d),
#   BENCH_DIR (work dir base; default target/tmp, on disk), BENCH_OUT [docs/bench-engine.md;
#   the results also go to the .json beside it], BENCH_LABEL (column name; default the git
#   commit), BENCH_NOTE (a line about the run), BENCH_BEFORE (a previous run's .json: its
#   columns come first, e.g. "before"), BENCH_KEEP=1 keeps the work dir (logs, fio JSON). Needs root or sudo for apt-get when fio,
#   nbdkit, nbd-server, qemu-utils or libnbd-bin are missing; exits 77 when they cannot be had.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BENCH_NAME=bench-engine
# shellcheck source=scripts/lib/bench-common.sh
source scripts/lib/bench-common.sh

target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null ||
    echo target)
# Criterion writes to $CRITERION_HOME, else $CARGO_TARGET_DIR/criterion, else target/criterion.
crit_dir=${CRITERION_HOME:-${CARGO_TARGET_DIR:-$target_dir}/criterion}

# Only results written by this run count (older ones may linger in the criterion dir).
stamp=$(mktemp)
trap 'rm -f "$stamp"' EXIT

if [[ ${1:-} == criterion ]]; then
    shift
    # --noplot: nothing to plot without plotters/gnuplot; this skips the attempt.
    cargo bench --bench engine -- --noplot "$@"
    exec "$PYTHON" scripts/lib/criterion_summary.py "$crit_dir" "$stamp"
fi

ensure_tools fio=fio nbdkit=nbdkit nbd-server=nbd-server qemu-nbd=qemu-utils nbdinfo=libnbd-bin
fio --enghelp=nbd 2>/dev/null | grep -q uri || die77 "this fio has no nbd ioengine (libnbd)"

log "building release binaries"
cargo build --release --bins
SSPD=$target_dir/release/sspd
SSPCTL=$target_dir/release/sspctl

if [[ ${BENCH_CRITERION:-1} != 0 ]]; then
    log "criterion: parallel_writers"
    cargo bench --bench engine -- --noplot parallel_writers
fi

log "NBD measurements (DATA_GIB=${DATA_GIB:-2})"
# In the background so that a SIGTERM to this script reaches the driver, which stops every
# process it started and removes its work dir.
"$PYTHON" scripts/lib/bench_engine.py "$SSPD" "$SSPCTL" "${BENCH_OUT:-docs/bench-engine.md}" \
    "${BENCH_DIR:-$target_dir/tmp}" "$crit_dir" "$stamp" &
driver=$!
trap 'kill -TERM "$driver" 2>/dev/null || true; wait "$driver" || true; exit 143' TERM INT HUP
wait "$driver"
