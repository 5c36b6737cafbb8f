#!/usr/bin/env bash
# The 30-second tour, on the default model: build, fetch the model, submit a
# few jobs (text, with a system prompt, JSON-schema output, an embedding),
# process them with `nrvnad --drain`, and print the results.
#
#   scripts/demo.sh [WORKSPACE]      (default: a fresh temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --release --workspace --quiet
scripts/fetch-model.sh
bin=${CARGO_TARGET_DIR:-target}/release
ws=${1:-$(mktemp -d -t nrvna-demo.XXXXXX)}
model=models/SmolLM2-135M-Instruct.Q4_1.gguf

echo "workspace: $ws" >&2
schema=$(mktemp -t nrvna-schema.XXXXXX.json)
cat >"$schema" <<'JSON'
{"type":"object","properties":{"city":{"type":"string"},"country":{"type":"string"}},"required":["city","country"]}
JSON

ids=()
ids+=("$($bin/wrk "$ws" --tag demo --max-tokens 48 "What is the capital of France? Answer in one sentence.")")
ids+=("$($bin/wrk "$ws" --tag demo --max-tokens 64 "Write a haiku about rain.")")
ids+=("$($bin/wrk "$ws" --tag demo --max-tokens 64 --system "You are a pirate. Answer in one short sentence." "How is the weather today?")")
ids+=("$($bin/wrk "$ws" --tag demo --max-tokens 64 --temp 0 --json-schema "$schema" "Name a large city and its country as JSON.")")
ids+=("$($bin/wrk "$ws" --tag demo --embed "nrvna queues inference jobs on the filesystem")")
rm -f "$schema"

echo "submitted ${#ids[@]} jobs; processing them with nrvnad --drain..." >&2
NRVNA_MAX_CTX=2048 $bin/nrvnad "$model" "$ws" --drain --workers 4 2> "$ws/nrvnad.log" || true

for id in "${ids[@]}"; do
    echo "== $id"
    if [ "$(cat "$ws/output/$id/embedding.json" 2>/dev/null | head -c 1)" = "{" ]; then
        # Its size and first values, not hundreds of floats across the screen.
        $bin/flw "$ws" "$id" | python3 -c '
import json, sys
v = json.load(sys.stdin)["vector"]
print("embedding: %d dims [%s, ...]" % (len(v), ", ".join("%.4f" % x for x in v[:4])))'
        echo "(the whole vector: $bin/flw $ws $id)"
    else
        $bin/flw "$ws" "$id" || true
        echo
    fi
done
echo "== status"
$bin/flw "$ws"
echo "(daemon log: $ws/nrvnad.log)" >&2
