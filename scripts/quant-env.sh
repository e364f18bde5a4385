#!/usr/bin/env bash
# Set up .venv-quant: llmcompressor (GPTQ, AWQ, FP8 in the compressed-tensors format vLLM and transformers load), for
# `tunesmith export --quant gptq|awq|fp8`, which runs the quantization step in this venv (export/compress.py).
#   bash scripts/quant-env.sh            # idempotent: a second run checks and returns in a few seconds
#
# A venv of its own because llmcompressor 0.14.0.1 pins transformers<=5.17.0 (and compressed-tensors==0.19.0), where
# the main .venv has transformers 5.23.0. The main .venv is never touched. torch stays the CPU 2.13.0 of the main venv
# (constraints.txt): a bare `torch` requirement could pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${QUANT_VENV:-.venv-quant}
PY=$VENV/bin/python
pip_install() { $PY -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
LLMCOMPRESSOR_VERSION=0.14.0.1
TRANSFORMERS_VERSION=5.17.0
TORCH_VERSION=2.13.0
STAMP=$VENV/.tunesmith-quant
WANT=$(cat scripts/quant-env.sh | sha256sum | cut -c1-16)

dist_version() { $PY -I -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ "$(dist_version llmcompressor)" = "$LLMCOMPRESSOR_VERSION" ]; then
    echo "$VENV: ready (llmcompressor $(dist_version llmcompressor), transformers $(dist_version transformers))"
    exit 0
fi

test -x "$PY" || python3 -m venv "$VENV"
CONSTRAINTS=$VENV/constraints.txt
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"
echo "$VENV: installing llmcompressor==$LLMCOMPRESSOR_VERSION with transformers==$TRANSFORMERS_VERSION and" \
     "torch==$TORCH_VERSION (about a minute)..."
pip_install -c "$CONSTRAINTS" "torch==$TORCH_VERSION" "transformers==$TRANSFORMERS_VERSION" \
    "llmcompressor==$LLMCOMPRESSOR_VERSION"

# pip check, minus nothing: this venv holds only llmcompressor's stack
problems=$($PY -m pip check 2>&1 | grep -v -E "^No broken requirements" || true)
if [ -n "$problems" ]; then
    echo "$VENV: pip check reports:" >&2
    echo "$problems" >&2
    exit 1
fi
$PY -I -c "import llmcompressor, compressed_tensors, transformers" 2>/dev/null || { echo "$VENV: imports fail" >&2; exit 1; }
echo "$WANT" > "$STAMP"
echo "$VENV: ready (llmcompressor $(dist_version llmcompressor), transformers $(dist_version transformers)," \
     "torch $(dist_version torch))"
