#!/usr/bin/env bash
# The EvalScope backend's test: builds .venv-evalscope (scripts/evalscope-env.sh) if needed, then runs it from the main
# .venv (tunesmith serves the tiny model and calls EvalScope in its venv; the test compares with EvalScope called
# directly). About a minute on 2 cores, so `make test` leaves it out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/evalscope-env.sh
TUNESMITH_TEST_EVALSCOPE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} .venv/bin/python -m pytest -q -p no:cacheprovider \
    tests/eval/test_benchmarks.py -k evalscope "$@"
