#!/usr/bin/env bash
# The nrvna-api benchmark (issue #13): the latency a 1-token chat completion
# pays for going through the HTTP gateway instead of `wrk | flw -w` (p50,
# p99), and requests/s of 1-token chat completions from 32 concurrent
# clients. Starts nrvnad (4 workers) and nrvna-api on a scratch workspace and
# prints a markdown report. Run it on an otherwise idle machine.
#
#   scripts/bench-api.sh                       # 50 latency samples, 32 clients x 8 requests
#   BENCH_SAMPLES=200 scripts/bench-api.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p nrvnad -p wrk -p flw -p nrvna-api >&2
scripts/fetch-model.sh >&2
bin="${CARGO_TARGET_DIR:-target}/release"
ws=$(mktemp -d)/ws
trap 'kill $api $daemon 2>/dev/null; wait 2>/dev/null; rm -rf "$(dirname "$ws")"' EXIT
NRVNA_LOG_LEVEL=warn "$bin/nrvnad" models/SmolLM2-135M-Instruct.Q4_1.gguf "$ws" --workers 4 & daemon=$!
for _ in $(seq 600); do [ -e "$ws/.nrvnad.ready" ] && break; sleep 0.1; done
coproc API { NRVNA_LOG_LEVEL=warn exec "$bin/nrvna-api" "$ws" --listen 127.0.0.1:0; }
api=$API_PID
read -r url <&"${API[0]}"
echo "machine: $(nproc) CPUs, $(uname -sr), $(date -u +%Y-%m-%d); command: scripts/bench-api.sh" >&2
NRVNA_API_BASE="$url" NRVNA_WS="$ws" NRVNA_WRK="$bin/wrk" NRVNA_FLW="$bin/flw" \
  python3 crates/nrvna-api/bench/bench_api.py
