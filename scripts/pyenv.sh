#!/usr/bin/env bash
# The Python environment of the tests: every PyPI package they (and the
# fixture generator) use, pinned in scripts/pyenv-requirements.txt, in one
# virtual environment at $NRVNA_TEST_PYENV, by default test-pyenv in the
# cargo target directory (target/, or $CARGO_TARGET_DIR). Made once: the
# sha256 of the requirement list is kept inside it, and the environment is
# rebuilt from scratch only when the list changes (or the environment no
# longer runs). Prints the environment's absolute path on stdout.
#
# scripts/test.sh runs it before `cargo test`, so that the tests themselves
# install nothing (tests run in parallel, and two of them creating one venv
# at once fail); a test that finds no environment says to run this.
set -euo pipefail
cd "$(dirname "$0")/.."
# A relative path in either variable is from the repository root.
venv=$(realpath -m "${NRVNA_TEST_PYENV:-${CARGO_TARGET_DIR:-target}/test-pyenv}")
reqs=scripts/pyenv-requirements.txt
stamp=$venv/requirements.sha256
want=$(sha256sum "$reqs" | cut -d' ' -f1)

ready() {
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c '' >/dev/null 2>&1
}

if ! ready; then
    mkdir -p "$(dirname "$venv")"
    # Two runs at once (two test.sh, say) take turns; the second finds it made.
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$venv.lock"
        flock 9
    fi
    if ! ready; then
        echo "installing the pinned PyPI packages of $reqs into $venv..." >&2
        python3 -m venv --clear "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$reqs"
        echo "$want" >"$stamp"
    fi
fi
echo "$venv"
