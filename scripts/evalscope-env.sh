#!/usr/bin/env bash
# Set up .venv-evalscope: EvalScope, for `tunesmith eval --benchmark ... --benchmark-backend evalscope`, which runs
# EvalScope in this venv as a subprocess (eval/benchmarks.py).
#   bash scripts/evalscope-env.sh        # idempotent: a second run checks and returns in a few seconds
#
# A venv of its own because evalscope 1.14.1 pulls datasets 4.8 (and modelscope), where the main .venv pins
# datasets 5.2.0. The main .venv is never touched. torch stays the CPU 2.13.0 (constraints.txt): a bare `torch`
# requirement could pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${EVALSCOPE_VENV:-.venv-evalscope}
PY=$VENV/bin/python
pip_install() { $PY -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
EVALSCOPE_VERSION=1.14.1
TORCH_VERSION=2.13.0
TRANSFORMERS_VERSION=5.23.0
ACCELERATE_VERSION=1.15.0  # its checkpoint model loads with device_map
STAMP=$VENV/.tunesmith-evalscope
WANT=$(cat scripts/evalscope-env.sh | sha256sum | cut -c1-16)

dist_version() { $PY -I -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ "$(dist_version evalscope)" = "$EVALSCOPE_VERSION" ]; then
    echo "$VENV: ready (evalscope $(dist_version evalscope), datasets $(dist_version datasets))"
    exit 0
fi

test -x "$PY" || python3 -m venv "$VENV"
CONSTRAINTS=$VENV/constraints.txt
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"
echo "$VENV: installing evalscope==$EVALSCOPE_VERSION with torch==$TORCH_VERSION (a few minutes)..."
pip_install -c "$CONSTRAINTS" "torch==$TORCH_VERSION" "transformers==$TRANSFORMERS_VERSION" \
    "accelerate==$ACCELERATE_VERSION" "evalscope==$EVALSCOPE_VERSION"

problems=$($PY -m pip check 2>&1 | grep -v -E "^No broken requirements" || true)
if [ -n "$problems" ]; then
    echo "$VENV: pip check reports:" >&2
    echo "$problems" >&2
    exit 1
fi
$PY -I -c "import evalscope, transformers" 2>/dev/null || { echo "$VENV: imports fail" >&2; exit 1; }
echo "$WANT" > "$STAMP"
echo "$VENV: ready (evalscope $(dist_version evalscope), datasets $(dist_version datasets), torch $(dist_version torch))"
