#!/usr/bin/env bash
# Installs flowmake into .venv and runs Flowfile.example end to end on the local backend.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
.venv/bin/flowmake -s Flowfile.example "$@"
echo
echo "Done: results are in example/out/ (summary.tsv and one report per day). Run it again: nothing reruns."
