#!/usr/bin/env bash
# make fuzz: each cargo-fuzz target for FUZZ_SECONDS (300) on nightly, starting
# from the committed seeds (fuzz/seeds/<target>); fuzz/regressions/<target> holds
# inputs that once failed, replayed first. A crash stops the run (exit 1) and
# leaves its input under fuzz/artifacts/<target>/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${FUZZ_SECONDS:-300}
targets=${FUZZ_TARGETS:-token request}

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
[ -x .tools/bin/cargo-fuzz ] || cargo install cargo-fuzz --locked --version 0.13.2 --root .tools
export PATH=$root/.tools/bin:$PATH

cd fuzz
for target in $targets; do
  mkdir -p "corpus/$target" "regressions/$target"
  if [ -n "$(ls -A "regressions/$target")" ]; then
    cargo +nightly fuzz run "$target" "regressions/$target" -- -runs=0
  fi
  echo "fuzzing $target for ${seconds}s" >&2
  cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -timeout=20 -print_final_stats=1 2>&1 |
    tee "corpus/$target.log" | grep -E '^(#[0-9]+.*(DONE|pulse)|stat::|==|SUMMARY|Done)' || true
  grep -q 'Done [0-9]* runs' "corpus/$target.log" || { echo "$target failed; see fuzz/corpus/$target.log" >&2; exit 1; }
done
