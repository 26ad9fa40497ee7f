#!/usr/bin/env bash
# Creates .venv with flowmake installed (editable). With --test, also the test and pep extras and Snakemake
# (the tutorial test compares outputs with it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "flowmake needs Python >= 3.10 ($PY is older or missing)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$PY" -m venv .venv 2>/dev/null; then
        # Debian and Ubuntu ship venv separately.
        rm -rf .venv
        if command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        fi
        "$PY" -m venv .venv
    fi
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ "${1:-}" = "--test" ]; then
    .venv/bin/python -m pip install -q -e '.[test,pep]'
    # notebook: rules run with jupyter-nbconvert and a Python kernel; the notebook tests use them.
    .venv/bin/python -m pip install -q nbconvert ipykernel
    # Snakemake 9 needs Python >= 3.11; without it the comparison half of the tutorial test skips.
    if .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        .venv/bin/python -m pip install -q snakemake || echo "note: snakemake could not be installed" >&2
    fi
else
    .venv/bin/python -m pip install -q -e .
fi
