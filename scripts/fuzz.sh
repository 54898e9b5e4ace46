#!/usr/bin/env bash
# Run each coverage-guided fuzz target (tools/fuzz, cargo-fuzz/libFuzzer) for a bounded time.
#
#   scripts/fuzz.sh [TARGET...]        default: nbd_stream pool_image admin_lines
#   FUZZ_SECONDS=60                    seconds per target
#
# Stable Rust: cargo-fuzz's nightly flags are unlocked with RUSTC_BOOTSTRAP=1. Built with
# debug assertions (integer overflow panics) and without a sanitizer (the code is safe Rust).
# Each target starts from its seeds (tools/fuzz/seeds/TARGET; pool_image writes real pools
# made by the current code), the kept findings (tools/fuzz/regressions/TARGET) and the local
# corpus of earlier runs (tools/fuzz/corpus/TARGET, not in git). A crash, a timeout (10 s) or
# more than 2 GiB of memory on one input is a finding: its input is saved under
# tools/fuzz/artifacts/TARGET/, its path printed, and the script exits non-zero. Keep every
# finding as a regression: copy the input to tools/fuzz/regressions/TARGET/NAME (replayed by
# tests/fuzz_regressions.rs) and fix it.
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(nbd_stream pool_image admin_lines)
export RUSTC_BOOTSTRAP=1
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "cargo-fuzz is not installed: run scripts/install-deps.sh" >&2
  exit 1
fi
flags=(--fuzz-dir tools/fuzz -O -a -s none)
echo "== fuzz: building ${targets[*]}"
cargo fuzz build "${flags[@]}"
triple=$(rustc -vV | sed -n 's/^host: //p')
bindir=tools/fuzz/target/$triple/release
failed=()
for t in "${targets[@]}"; do
  corpus=tools/fuzz/corpus/$t
  artifacts=tools/fuzz/artifacts/$t
  mkdir -p "$corpus" "$artifacts" "tools/fuzz/seeds/$t" "tools/fuzz/regressions/$t"
  extra=()
  case "$t" in
    pool_image) extra=(-max_len=1048576) ;; # records of 4098 bytes: the seeds' non-zero blocks
    *) extra=(-max_len=65536) ;;
  esac
  before=$(find "$artifacts" -type f | sort)
  echo "== fuzz: $t for ${FUZZ_SECONDS}s"
  set +e
  SSP_FUZZ_SEED_DIR="$corpus" "$bindir/$t" "$corpus" "tools/fuzz/seeds/$t" \
    "tools/fuzz/regressions/$t" -max_total_time="$FUZZ_SECONDS" -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=2048 -artifact_prefix="$artifacts/" \
    -print_final_stats=1 "${extra[@]}" 2>"$artifacts/../$t.log"
  rc=$?
  set -e
  grep -E '^(#[0-9]+: *DONE|stat::number_of_executed_units|stat::peak_rss_mb)|cov:' \
    "$artifacts/../$t.log" | tail -3 || true
  new=$(comm -13 <(echo "$before") <(find "$artifacts" -type f | sort) | grep . || true)
  if [ "$rc" != 0 ] || [ -n "$new" ]; then
    grep -E 'panicked|ERROR: libFuzzer|SUMMARY' -A3 "$artifacts/../$t.log" | head -20 || true
    echo "FUZZ FINDING in $t (exit $rc); full log: tools/fuzz/artifacts/$t.log" >&2
    for f in $new; do echo "  crashing input: $f" >&2; done
    echo "fuzz target $t: FINDING"
    failed+=("$t")
  else
    echo "fuzz target $t: ok"
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: findings in ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: ${targets[*]}: no findings in ${FUZZ_SECONDS}s each"
