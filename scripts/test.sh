#!/usr/bin/env bash
# Installs everything the tests need (Debian packages for Docker, sshd and SLURM, a venv with the
# test extra), type-checks the package (mypy) and runs the whole suite, service-backed and slow
# tests included. The tests start and stop the services themselves. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-services.sh
bash scripts/venv.sh --test
# The venv's programs (jupyter-nbconvert for notebook: rules) are on PATH, as in an activated venv.
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/python -m mypy  # files and settings: setup.cfg [mypy]
exec .venv/bin/python -m pytest -m "slow or not slow" "$@"
