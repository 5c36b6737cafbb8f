#!/usr/bin/env bash
# The portable release: one build that runs at full speed on any x86-64
# machine, for clusters whose nodes differ (and for the container image).
#
#   scripts/portable.sh [OUT]        # default OUT: dist/nrvna-x86_64-linux
#
# The everyday build (.cargo/config.toml: target-cpu=native) is compiled for
# the machine it is built on and dies with an illegal instruction on an
# older one. Here:
# - the Rust code is compiled for baseline x86-64 (RUSTFLAGS replaces the
#   config's target-cpu=native), which costs nothing measurable: the time
#   is spent in llama.cpp's kernels;
# - llama.cpp is built as shared libraries with every CPU variant of its
#   kernels (nrvnad's feature `portable`: GGML_BACKEND_DL and
#   GGML_CPU_ALL_VARIANTS, libggml-cpu-{x64,sse42,sandybridge,haswell,
#   skylakex,icelake,alderlake,sapphirerapids,...}.so), and at start ggml
#   loads the best one the CPU runs; nrvnad logs which instruction sets it
#   got ("llama.cpp CPU backend: ...");
# - OUT holds the four programs and the libraries side by side (the
#   programs look for them beside themselves: rpath $ORIGIN).
# It builds in target/portable (the native build in target/ is untouched);
# the first build compiles llama.cpp's kernels once per CPU level, about
# 20 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist/nrvna-x86_64-linux}
scripts/setup.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/portable}
export RUSTFLAGS='-C link-arg=-Wl,-rpath,$ORIGIN'
cargo build --release --locked -p nrvnad -p wrk -p flw -p nrvna-api --bins --features nrvnad/portable

rel=$CARGO_TARGET_DIR/release
# The kernels' directory of the llama.cpp build that the binaries link.
backends=$(ls -td "$rel"/build/llama-cpp-sys-2-*/out/backends 2>/dev/null | head -n1)
if [ -z "$backends" ] || ! ls "$backends"/libggml-cpu-*.so >/dev/null 2>&1; then
    echo "error: no libggml-cpu-*.so under $rel/build/llama-cpp-sys-2-*/out/backends; the portable build did not produce llama.cpp's CPU variants" >&2
    exit 1
fi
rm -rf "$out"
mkdir -p "$out"
cp "$rel"/nrvnad "$rel"/wrk "$rel"/flw "$rel"/nrvna-api "$out"/
# libllama, libggml, libggml-base, libmtmd, libllama-common with their
# version links, then the kernels; without debug sections (the release
# profile keeps line tables for backtraces in development builds).
cp -P "$(dirname "$backends")"/lib/lib*.so* "$out"/
cp "$backends"/*.so "$out"/
strip --strip-debug "$out"/nrvnad "$out"/wrk "$out"/flw "$out"/nrvna-api
echo "portable build in $out:" >&2
ls "$out" >&2
echo "$out"
