#!/usr/bin/env bash
# The GPU check, run once by a person on a machine with an NVIDIA GPU: the tests marked `gpu` (the server on
# CUDA, compress on CUDA -> serve on CPU), then benchmarks/gpu.py. Everything goes to one file.
#
#     benchmarks/gpu_check.sh                 # writes gpu-check-<date>.txt in the repository root
#     benchmarks/gpu_check.sh results.txt
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check-$(date +%Y%m%d-%H%M%S).txt}
python=${PYTHON:-.venv/bin/python}
{
    echo "# slimserve GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "nvidia-smi: not found"
    "$python" -m pytest -m gpu -rs -q -p no:cacheprovider tests/serving tests/compression
    echo "gpu tests: exit $?"
    "$python" benchmarks/gpu.py
    echo "benchmarks/gpu.py: exit $?"
} 2>&1 | tee "$out"
echo "written: $out"
