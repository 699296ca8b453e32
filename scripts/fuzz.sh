#!/bin/sh
# Builds the libFuzzer targets in fuzz/ and runs each for a bounded time on its committed
# seed corpus (fuzz/corpus/<target>, never written to: new inputs go to a scratch corpus).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     default: 20 s per target, every target
#   FUZZ_DOC=docs/reliability.md scripts/fuzz.sh 600    also writes the figures there
#
# Plain cargo with the coverage flags cargo-fuzz passes for `--sanitizer none` (all stable
# `-C` flags, so no nightly toolchain): libFuzzer is guided by sancov counters; what it finds
# are panics, failed assertions, arithmetic overflow (checks on), hangs and runaway memory.
# A crashing input is kept in fuzz/artifacts/<target>/ and the script fails. `cargo fuzz run
# -s none <target> fuzz/corpus/<target>` runs the same targets where cargo-fuzz is installed.
set -eu
cd "$(dirname "$0")/../fuzz"
SECONDS_PER_TARGET=${1:-20}
[ $# -gt 0 ] && shift
TARGETS=${*:-$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^contrast-fuzz$')}
HOST=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=${CONTRAST_FUZZ_TARGET_DIR:-$PWD/target}
# --target keeps the instrumentation off build scripts and proc macros.
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 --cfg fuzzing -Ccodegen-units=1" \
    cargo build --locked --release --target "$HOST" $(for t in $TARGETS; do printf -- '--bin %s ' "$t"; done)

status=0
summary=$(mktemp)
for t in $TARGETS; do
    scratch=$(mktemp -d)
    mkdir -p "artifacts/$t"
    log=$scratch/log
    # -rss_limit_mb: a parser that balloons on small input is a finding too.
    if "$CARGO_TARGET_DIR/$HOST/release/$t" -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=1024 \
        -timeout=10 -max_len=65536 -artifact_prefix="artifacts/$t/" -print_final_stats=1 \
        "$scratch" "corpus/$t" >"$log" 2>&1; then
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
        seeds=$(ls "corpus/$t" | wc -l)
        echo "fuzz: $t: $execs execs in ${SECONDS_PER_TARGET}s, $cov, $seeds seeds, crashes: 0"
        echo "| \`$t\` | $SECONDS_PER_TARGET s | $execs | ${cov#cov: } | $seeds | 0 |" >>"$summary"
    else
        status=1
        echo "fuzz: $t: FAILED; libFuzzer said:" >&2
        tail -40 "$log" >&2
        ls "artifacts/$t" >&2
    fi
    rm -rf "$scratch"
done
if [ -n "${FUZZ_DOC:-}" ] && [ "$status" = 0 ]; then
    doc=$(cd .. && realpath "$FUZZ_DOC")
    rustc_version=$(rustc --version)
    python3 - "$doc" "$summary" "$SECONDS_PER_TARGET" "$rustc_version" <<'PY'
import sys
doc, summary, seconds, rustc = sys.argv[1:]
rows = open(summary).read()
body = (f"Command: `make fuzz FUZZ_SECONDS={seconds}` (runs `FUZZ_DOC=docs/reliability.md scripts/fuzz.sh {seconds}`), "
        f"{rustc}, libFuzzer from libfuzzer-sys, coverage-guided without a sanitizer (`-s none`), one job per target.\n\n"
        "| target | time | executions | coverage (edges) | seeds | crashes |\n|---|---|---|---|---|---|\n" + rows)
text = open(doc).read()
start, end = "<!-- fuzz:start -->", "<!-- fuzz:end -->"
a, b = text.index(start), text.index(end)
open(doc, "w").write(text[:a] + start + "\n" + body + text[b:])
PY
fi
rm -f "$summary"
exit "$status"
