#!/usr/bin/env bash
# Installs flowmake into .venv and runs Flowfile.example end to end on the local backend.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
.venv/bin/flowmake -s Flowfile.example "$@"
echo
echo "Done. The report is in results/report.txt; run the same command again and nothing reruns."
