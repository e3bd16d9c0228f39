#!/usr/bin/env bash
# One prepared GPU run (about 5-8 minutes on one H100/H200): training MFU of GPT-2 124M and a ~1B
# LLaMA config, zoo (compiled) beside transformers, and decode tokens/s at batch 1 and 16 (eager
# and with compiled decoding steps).
# Writes docs/results/gpu.md. The same code runs on CPU at tiny sizes in tests/test_gpu_benchmark.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv
PYTHONPATH=$PWD timeout 480 "$PY" benchmarks/gpu.py --device cuda --compile "$@"
