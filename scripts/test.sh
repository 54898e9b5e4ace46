#!/usr/bin/env bash
# The project's test command (README and CI): install what is needed, then format check,
# clippy with warnings as errors, every test, a build of the benchmarks, and each fuzz target for
# a bounded time (scripts/fuzz.sh; a target counts as one test). Ends with one summary line:
# "tests: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export CARGO_TERM_COLOR=never
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
cargo clippy --locked --features shuttle --test schedules -- -D warnings
echo "== cargo bench --no-run"
cargo bench --locked --no-run
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The schedule explorer's tests (tests/schedules.rs) need the pool's sync primitives mapped to
# shuttle's, a build of its own that runs only them.
echo "== cargo test --features shuttle --test schedules"
cargo test --locked --features shuttle --test schedules 2>&1 | tee -a "$log"
shuttle_status=${PIPESTATUS[0]}
set -e
[ "$status" != 0 ] || status=$shuttle_status
# The man pages and completions build from the binaries the tests just built (scripts/gen-docs.sh).
echo "== scripts/gen-docs.sh"
set +e
SSPD=target/debug/sspd SSPCTL=target/debug/sspctl scripts/gen-docs.sh target/docs 2>&1 | tee -a "$log"
docs_status=${PIPESTATUS[0]}
set -e
[ "$status" != 0 ] || status=$docs_status
# Each fuzz target for a bounded time (scripts/fuzz.sh; FUZZ_SECONDS each, 45 by default here).
echo "== fuzz"
set +e
FUZZ_SECONDS=${FUZZ_SECONDS:-45} scripts/fuzz.sh 2>&1 | tee -a "$log"
fuzz_status=${PIPESTATUS[0]}
set -e
[ "$status" != 0 ] || status=$fuzz_status
# Sum every "test result: ... N passed; M failed" line (lib, each test file, doc tests).
# scripts/fuzz.sh prints "fuzz target T: ok" or "fuzz target T: FINDING" per target.
awk '/^test result:/ { for (i = 1; i < NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^fuzz target .*: ok$/ { p++ } /^fuzz target .*: FINDING/ { f++ }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
