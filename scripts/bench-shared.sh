#!/usr/bin/env bash
# Scaling of a shared workspace (issue #12) with the echo engine: queue
# throughput with 1, 2 and 4 members (nrvnad --shared --drain) draining the
# same backlog on this machine, and the claim races they lose per job.
#
#   scripts/bench-shared.sh [JOBS] [REPEATS]     # defaults: 2000 jobs, 3 runs
#
# Prints a Markdown table (medians of the runs) on stdout. Uses the release
# binaries (built first); fsync stays on (NRVNA_FSYNC=1), 2 workers a member.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${1:-2000}"
repeats="${2:-3}"
cargo build --release -q -p nrvnad -p wrk -p flw
bin="${CARGO_TARGET_DIR:-target}/release"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# One OpenAI batch file publishes the whole backlog at once.
for i in $(seq 1 "$jobs"); do
    printf '{"custom_id":"r%s","method":"POST","url":"/v1/chat/completions","body":{"messages":[{"role":"user","content":"job %s"}]}}\n' "$i" "$i"
done >"$tmp/batch.jsonl"

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "| members | jobs | s to the last job done (median of $repeats) | jobs/s | lost claim races per job |"
echo "| --- | --- | --- | --- | --- |"
for members in 1 2 4; do
    : >"$tmp/secs"
    : >"$tmp/races"
    for run in $(seq 1 "$repeats"); do
        ws="$tmp/ws-$members-$run"
        "$bin/wrk" "$ws" --batch "$tmp/batch.jsonl" >/dev/null
        start=$(date +%s.%N)
        pids=()
        for m in $(seq 1 "$members"); do
            NRVNA_LOG_LEVEL=info "$bin/nrvnad" echo.gguf "$ws" --engine echo --shared --drain --workers 2 \
                2>"$tmp/m-$members-$run-$m.log" &
            pids+=($!)
        done
        # Timed to the last job done (a draining member then waits a few
        # heartbeats to be sure no other member's job needs taking back).
        until [[ "$(ls -f "$ws/output" 2>/dev/null | wc -l)" -ge $((jobs + 2)) ]]; do
            if ! kill -0 "${pids[@]}" 2>/dev/null; then break; fi
            sleep 0.01
        done
        end=$(date +%s.%N)
        for p in "${pids[@]}"; do wait "$p"; done
        done_n=$(find "$ws/output" -mindepth 1 -maxdepth 1 | wc -l)
        if [[ "$done_n" != "$jobs" ]]; then
            echo "bench-shared: only $done_n of $jobs jobs done with $members members (logs in $tmp)" >&2
            trap - EXIT
            exit 1
        fi
        echo "$end - $start" | bc -l >>"$tmp/secs"
        lost=$(cat "$tmp"/m-"$members"-"$run"-*.log | sed -n 's/.*lost \([0-9]*\) claim races.*/\1/p' | paste -sd+ | bc)
        echo "$lost / $jobs" | bc -l >>"$tmp/races"
        rm -rf "$ws"
    done
    s=$(median <"$tmp/secs")
    r=$(median <"$tmp/races")
    printf '| %s | %s | %.2f | %.0f | %.2f |\n' "$members" "$jobs" "$s" "$(echo "$jobs / $s" | bc -l)" "$r"
done
