#!/usr/bin/env bash
# Generates the media test fixtures (scripts/make-fixtures.py) into
# models/fixtures/, once: PyPI's gguf package goes into a virtual
# environment under target/, and the files are rebuilt only when the
# generator changed (its sha256 is kept beside them).
set -euo pipefail
cd "$(dirname "$0")/.."
out=models/fixtures
stamp=$out/.generator.sha256
want=$(sha256sum scripts/make-fixtures.py | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "$out: present" >&2
    exit 0
fi
venv=target/fixture-venv
if ! "$venv/bin/python" -c 'import gguf' >/dev/null 2>&1; then
    echo "installing gguf==0.19.0 from PyPI into $venv..." >&2
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check gguf==0.19.0
fi
"$venv/bin/python" scripts/make-fixtures.py "$out"
echo "$want" >"$stamp"
