#!/usr/bin/env bash
# The project's test command (README and CI): install what is needed, then format check,
# clippy with warnings as errors, every test, and a build of the benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export CARGO_TERM_COLOR=never
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked --workspace
echo "== cargo bench --no-run"
cargo bench --locked --no-run
