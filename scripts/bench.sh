#!/usr/bin/env bash
# The benchmark of issue #3 in one command: builds every binary, fetches the
# default model, then runs nrvna-bench, which writes bench-out/results.md
# (a table with the machine and this command) and bench-out/results.json.
# Arguments go to nrvna-bench:
#
#   scripts/bench.sh                      # the full run (a few minutes)
#   scripts/bench.sh --quick              # a smaller smoke run
#   scripts/bench.sh --only w16,latency   # some scenarios (probe, w16, prefix, latency, queue, scale, gemma,
#                                         # peer; w16 and scale bring the probe along; gemma needs
#                                         # scripts/fetch-model.sh gemma; peer needs llama-server from
#                                         # scripts/peer-build.sh and skips, saying so, without it)
#
# Run it on an otherwise idle machine: the figures are CPU timings.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
scripts/fetch-model.sh
# The gemma scenario's model, when the run includes it (all scenarios, or --only ...gemma...).
case " $* " in
    *" --only "*gemma* | *" --only="*gemma*) scripts/fetch-model.sh gemma ;;
    *" --only "* | *" --only="*) ;;
    *) scripts/fetch-model.sh gemma ;;
esac
cmd="scripts/bench.sh"
for a in "$@"; do cmd+=" $(printf '%q' "$a")"; done
NRVNA_BENCH_COMMAND="$cmd" exec "${CARGO_TARGET_DIR:-target}/release/nrvna-bench" --out bench-out "$@"
