#!/bin/bash
# GPU job P18h: the HTTP path of tunesmith deploy against the engine alone, in one call on one H200. Random-weight
# Qwen2.5-0.5B shape (SmolLM2's tokenizer, bench/make_shape_model.py), ~212 prompt tokens, 256 output tokens, greedy:
#   1. the engine in process at 64 streams (bench/engine_decode.py): output tok/s and p50/max time to first token;
#   2. bench/serve.py --servers tunesmith transformers --concurrency 1 16 64 --rounds 1 (tunesmith deploy under
#      bench/stack_sampler.py: per-thread stacks in $OUT/stacks-deploy.txt).
# HTTP overhead = 1 - deploy's tok/s at 64 / the engine's at 64. Needs the carried .whl, .whls and .gputok
# (bench/gpu/stage.sh). About 4-5 minutes of GPU time; every step has its own timeout. Results and logs under $OUT.
set -euo pipefail
R=$OUT/p18h.txt
exec > >(tee -a "$OUT/job.log") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl .whls/*.whl
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p /tmp/bin
printf '#!/bin/sh\nexec python3 %s/bench/stack_sampler.py --out %s/stacks-deploy.txt -m tunesmith.cli.main "$@"\n' "$PWD" "$OUT" > /tmp/bin/tunesmith
printf '#!/bin/sh\nexec python3 -m transformers.cli.transformers "$@"\n' > /tmp/bin/transformers
chmod +x /tmp/bin/tunesmith /tmp/bin/transformers
export PATH=/tmp/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$R"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$R"
git log -1 --format='commit %h %s' 2>/dev/null | cut -c1-120 | tee -a "$R" || true
timeout 120 python3 bench/make_shape_model.py --shape qwen2.5-0.5b-instruct --tokenizer .gputok --out /tmp/m05 \
  > "$OUT/shape.log" 2>&1 || { tail "$OUT/shape.log"; exit 1; }

rc=0
timeout 150 python3 bench/engine_decode.py --model /tmp/m05 --concurrency 64 --max-tokens 256 \
  --out "$OUT/engine.json" > "$OUT/engine.txt" 2>&1 || rc=$?
echo "== engine alone rc=$rc" | tee -a "$R"
grep -E "c= " "$OUT/engine.txt" | tee -a "$R" || tail -5 "$OUT/engine.txt" | tee -a "$R"

rc=0
timeout 330 python3 bench/serve.py --model /tmp/m05 --servers tunesmith transformers --concurrency 1 16 64 \
  --rounds 1 --max-tokens 256 --prompt-tokens 212 --out "$OUT/serve.md" > "$OUT/serve.txt" 2>&1 || rc=$?
echo "== serve rc=$rc" | tee -a "$R"
tail -12 "$OUT/serve.txt" | tee -a "$R"
cp /tmp/bench-*.log "$OUT/" 2>/dev/null || true
python3 - "$OUT" <<'PY' | tee -a "$R"
import json, re, sys
out = sys.argv[1]
try:
    engine = json.load(open(f"{out}/engine.json"))["default@64"]["tok_s"]
    rows = [line for line in open(f"{out}/serve.txt") if line.startswith("tunesmith") and "c=64" in line]
    deploy = float(re.search(r"([\d.]+) tok/s", rows[-1]).group(1))
    print(f"HTTP overhead at 64 streams: deploy {deploy:.0f} / engine {engine:.0f} tok/s -> {100 * (1 - deploy / engine):.1f} %")
except (OSError, KeyError, IndexError, AttributeError, ValueError) as err:
    print(f"HTTP overhead: not computed ({err!r})")
PY
