#!/usr/bin/env bash
# GPTQ / AWQ / FP8 export tests: builds .venv-quant (llmcompressor, scripts/quant-env.sh) if needed, then runs
# tests/export/test_compress.py from the main .venv (the export calls .venv-quant for the quantization step).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/quant-env.sh
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} .venv/bin/python -m pytest -q -p no:cacheprovider tests/export/test_compress.py "$@"
