#!/usr/bin/env bash
# GPU smoke test (a CUDA machine; never run by CI): one short full-method fold on the synthetic benchmark
# in bf16, then images/s, peak GPU memory and a model FLOP utilization (MFU) estimate.
#   bash bench/gpu_smoke.sh [DATA_DIR]      (default data/synth; written by `mammopath synth` when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA=${1:-data/synth}
[ -f "$DATA/manifest.csv" ] || "$PY" -m mammopath synth --out "$DATA" --seed 0
exec "$PY" -m bench.gpu_smoke --data "$DATA"
