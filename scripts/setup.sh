#!/usr/bin/env bash
# Create .venv (if needed) and install qflgym with every extra. torch goes in FIRST and is pinned as a
# constraint: anything that pulls torch before it would bring a multi-GB CUDA build (see docs/install.md).
# Idempotent: a second run with an up-to-date .venv only checks and returns.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${QFLGYM_TORCH_VERSION:-2.13.0}"
stamp=.venv/.qflgym-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==${TORCH_VERSION}"
echo "torch==${TORCH_VERSION}" > .venv/torch-constraint.txt
python -m pip install --quiet -c .venv/torch-constraint.txt -e ".[all]"
python -m pip check
touch "$stamp"
