#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a bounded time (FUZZ_SECONDS each, 30 by default), two
# at a time, starting from its committed seeds (fuzz/seeds/<target>, which also keep every
# input that once crashed as a regression case). New inputs go to fuzz/target/corpus, never
# into the seeds. Fails if any target crashes, leaks past libFuzzer's limits or hangs on one
# input for 10 s; libFuzzer then leaves the input in fuzz/artifacts/<target>/. Prints how many
# executions each target ran.
set -euo pipefail
cd "$(dirname "$0")/../../fuzz"
seconds=${FUZZ_SECONDS:-30}
triple=$(rustc -vV | awk '/^host:/ {print $2}')
# No sanitizer: the code under test is safe Rust, and the debug build's assertions and
# overflow checks are what turn a wrong sum into a crash. A debug build, because it takes a
# fraction of an optimised one's time, and the targets run for seconds.
cargo fuzz build --dev --sanitizer none
bin="target/$triple/debug"
logs=target/fuzz-logs
mkdir -p "$logs"
run_one() {
    local target=$1 corpus="target/corpus/$1"
    mkdir -p "$corpus" "artifacts/$target"
    if "$bin/$target" "$corpus" "seeds/$target" -max_total_time="$seconds" -timeout=10 \
        -artifact_prefix="artifacts/$target/" -print_final_stats=1 > "$logs/$target.log" 2>&1; then
        local runs
        runs=$(awk '/stat::number_of_executed_units:/ {print $2}' "$logs/$target.log")
        echo "fuzz $target: ${runs:-?} executions in ${seconds} s, no crash"
    else
        echo "fuzz $target: FAILED; the input is in fuzz/artifacts/$target/" >&2
        tail -n 30 "$logs/$target.log" >&2
        return 1
    fi
}
export -f run_one
export bin logs seconds
cargo fuzz list | xargs -P 2 -I{} bash -c 'run_one {}'
