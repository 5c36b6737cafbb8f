#!/usr/bin/env bash
# The whole test suite: fetch the model the tests run on, install the PyPI
# packages they use into one virtual environment (scripts/pyenv.sh) and
# generate the media fixtures (once each), then every unit and integration
# test of the workspace, in release mode (llama.cpp is slow unoptimised, and
# the binaries are shared with the demo and benchmark). Every test binary
# runs even when an earlier one fails (--no-fail-fast).
# As root it also runs the tests marked #[ignore] because they need root
# (mounting a full or read-only tmpfs; members in their own pid and UTS
# namespaces; a single-node Slurm cluster, installed from Debian when
# missing); elsewhere it says that they did not run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests
scripts/fetch-model.sh
# The many-models tests (crates/nrvnad/tests/models.rs) serve Gemma 3 270M too.
scripts/fetch-model.sh gemma
# The tests look for the environment there (see scripts/pyenv.sh).
NRVNA_TEST_PYENV=$(scripts/pyenv.sh)
export NRVNA_TEST_PYENV
scripts/fixtures.sh
# The 300-job many-models benchmark (#[ignore]d, minutes long) runs only
# by hand: cargo test --release -p nrvnad --test models -- --ignored --nocapture
extra=(--skip three_hundred_jobs)
if [ "$(id -u)" = 0 ]; then
    extra+=(--include-ignored)
else
    echo "note: not root: the tests that need root (marked #[ignore]: tmpfs mounts, unshare, Slurm) do not run; run this as root to include them" >&2
fi
cargo test --release --workspace --no-fail-fast "$@" -- "${extra[@]}"
