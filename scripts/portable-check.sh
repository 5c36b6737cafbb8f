#!/usr/bin/env bash
# Checks the portable build (scripts/portable.sh) against the native one:
#
#   scripts/portable-check.sh speed [ROUNDS]   # tokens/s on the same backlog, native vs
#                                              # portable, alternating, medians (default 3 rounds)
#   scripts/portable-check.sh old-cpu [CPU]    # one real job under qemu-user emulating an
#                                              # older CPU (default Nehalem: SSE4.2, no AVX),
#                                              # portable (must run) and native (dies: SIGILL)
#
# Both use the default model (scripts/fetch-model.sh). `old-cpu` needs
# Debian's qemu-user and takes minutes: emulated, loading the model is slow.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dist=${NRVNA_PORTABLE_DIST:-$root/dist/nrvna-x86_64-linux}
native=$root/target/release
model=$root/models/SmolLM2-135M-Instruct.Q4_1.gguf
[ -x "$dist/nrvnad" ] || { echo "error: no portable build in $dist: run scripts/portable.sh first" >&2; exit 1; }
[ -x "$native/nrvnad" ] || { echo "error: no native build in $native: run cargo build --release first" >&2; exit 1; }
scripts/fetch-model.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# drain BIN_DIR JOBS: generated tokens per second over JOBS chat jobs of at
# most 64 greedy tokens, submitted first, then drained by one daemon (model
# load excluded: timed from the daemon's ready line to its exit). Tokens,
# not time: the two builds' kernels round differently, so greedy answers
# (and their lengths) differ.
drain() {
    local bin=$1 jobs=$2 ws=$tmp/ws-$RANDOM
    for i in $(seq 1 "$jobs"); do
        "$bin/wrk" "$ws" --max-tokens 64 --temp 0 "Write one sentence about the number $i." >/dev/null
    done
    "$bin/nrvnad" "$model" "$ws" --drain --workers 16 >"$tmp/log" 2>&1
    python3 - "$tmp/log" "$ws" <<'PY'
import datetime, glob, json, re, sys
t = []
for line in open(sys.argv[1]):
    m = re.match(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\]", line)
    if m:
        t.append((datetime.datetime.fromisoformat(m.group(1)), line))
ready = next(ts for ts, l in t if "nrvnad ready" in l)
tokens = sum(json.load(open(m)).get("generated_tokens", 0) for m in glob.glob(sys.argv[2] + "/output/*/meta.json"))
print(f"{tokens / (t[-1][0] - ready).total_seconds():.1f}")
PY
    grep -h "CPU backend" "$tmp/log" >&2 || true
    rm -rf "$ws"
}

case "${1:-speed}" in
    speed)
        rounds=${2:-3}
        nat=() por=()
        for r in $(seq 1 "$rounds"); do
            if [ $((r % 2)) = 1 ]; then
                nat+=("$(drain "$native" 64)"); por+=("$(drain "$dist" 64)")
            else
                por+=("$(drain "$dist" 64)"); nat+=("$(drain "$native" 64)")
            fi
            echo "round $r: native ${nat[-1]} tok/s, portable ${por[-1]} tok/s" >&2
        done
        python3 - "${nat[*]}" "${por[*]}" <<'PY'
import statistics, sys
n = statistics.median(map(float, sys.argv[1].split()))
p = statistics.median(map(float, sys.argv[2].split()))
print(f"64 jobs of at most 64 greedy tokens, 16 workers, median tokens/s: native {n:.1f}, portable {p:.1f}, portable/native {p / n:.3f}")
PY
        ;;
    old-cpu)
        cpu=${2:-Nehalem}
        command -v qemu-x86_64 >/dev/null || { echo "error: qemu-x86_64 missing: apt-get install qemu-user" >&2; exit 1; }
        for build in portable native; do
            bin=$dist; [ $build = native ] && bin=$native
            ws=$tmp/ws-$build
            id=$("$dist/wrk" "$ws" --max-tokens 8 --temp 0 "What is the capital of France? Answer in one word.")
            set +e
            qemu-x86_64 -cpu "$cpu" "$bin/nrvnad" "$model" "$ws" --drain --workers 1 --threads 1 >"$tmp/log-$build" 2>&1
            rc=$?
            set -e
            echo "$build build under qemu -cpu $cpu: exit $rc" >&2
            grep -h "CPU backend" "$tmp/log-$build" >&2 || true
            if [ $build = portable ]; then
                [ $rc = 0 ] || { tail -5 "$tmp/log-$build" >&2; echo "error: the portable build failed on $cpu" >&2; exit 1; }
                echo "result: $("$dist/flw" "$ws" "$id")"
            elif [ $rc = 0 ]; then
                echo "note: the native build ran on $cpu too (this machine has no instructions beyond it)" >&2
            fi
        done
        ;;
    *) echo "usage: $0 speed [ROUNDS] | old-cpu [CPU]" >&2; exit 2 ;;
esac
