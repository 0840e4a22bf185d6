#!/usr/bin/env bash
# The main job: bootstrap .venv if needed, then run `qflgym demo` (extra args go to the demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
qflgym demo "$@"
