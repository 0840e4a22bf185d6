#!/usr/bin/env bash
# The test command: bootstrap .venv if needed, lint and check the formatting, then run the test suite (extra args go
# to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
ruff format --check .
python -m pytest -n 2 "$@"
