#!/usr/bin/env bash
# Benchmarks 1, 2 and 4 on an NVIDIA GPU, resnet34 at 224 and 299, plus absolute images/s and peak GPU memory.
# Usage (from the repository root, with the environment installed): bash bench/gpu.sh [n_images]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
N=${1:-1024}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for size in 224 299; do
  "$PY" bench/models.py --arch resnet34 --size "$size" --n "$N" --batch-size 64 --workers 8 --device cuda --amp auto
done
