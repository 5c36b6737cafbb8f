#!/usr/bin/env bash
# The whole test suite: fetch the model the tests run on (once), then every
# unit and integration test of the workspace, in release mode (llama.cpp is
# slow unoptimised, and the binaries are shared with the demo and benchmark).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh
cargo test --release --workspace "$@"
