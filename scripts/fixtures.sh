#!/usr/bin/env bash
# Generates the media test fixtures (scripts/make-fixtures.py) into
# models/fixtures/, once: with PyPI's gguf package from the tests' Python
# environment (scripts/pyenv.sh), and rebuilt only when the generator
# changed (its sha256 is kept beside them).
set -euo pipefail
cd "$(dirname "$0")/.."
out=models/fixtures
stamp=$out/.generator.sha256
want=$(sha256sum scripts/make-fixtures.py | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "$out: present" >&2
    exit 0
fi
venv=$(scripts/pyenv.sh)
"$venv/bin/python" scripts/make-fixtures.py "$out"
echo "$want" >"$stamp"
