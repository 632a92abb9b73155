#!/usr/bin/env bash
# Create .venv and install SiteNet-DIM with everything (CPU ONNX Runtime, training, serving, tests).
# torch==2.13.0 goes in first: a bare torch requirement with no torch installed pulls a multi-GB CUDA build.
# Idempotent: a second run only checks. Set SITENET_EXTRAS to install less (e.g. "cpu,serve").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[${SITENET_EXTRAS:-cpu,train,serve,test}]"
