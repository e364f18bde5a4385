#!/bin/bash
# GPU job P18u: what the event loop and HTTP parser cost tunesmith deploy, in one call on one H200. Random-weight
# Qwen2.5-0.5B shape (SmolLM2's tokenizer, bench/make_shape_model.py), ~212 prompt tokens, 256 output tokens, greedy:
#   1. the engine in process at 64 streams (bench/engine_decode.py);
#   2. deploy at 64 streams x 3 rounds, client split over 4 processes (bench/serve.py --client-procs 4), as variants:
#      asyncio+h11 (uvloop and httptools hidden from uvicorn by a sitecustomize), uvloop+httptools (uvicorn's choice
#      once the serve extra installs them), the same with the GIL's switch interval at 1 ms instead of 5, and the
#      uvloop build measured by a single client process (did one Python client limit earlier runs?);
#   3. deploy against `transformers serve`, 64 streams x 1 round (all arrive at once): TTFT side by side.
# Needs the carried .whl, .whls and .gputok (bench/gpu/stage.sh). About 6 minutes of GPU time. Results under $OUT.
set -euo pipefail
R=$OUT/p18u.txt
exec > >(tee -a "$OUT/job.log") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl .whls/*.whl
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p /tmp/bin /tmp/plain /tmp/switch
printf '#!/bin/sh\nexec python3 -m tunesmith.cli.main "$@"\n' > /tmp/bin/tunesmith
printf '#!/bin/sh\nexec python3 -m transformers.cli.transformers "$@"\n' > /tmp/bin/transformers
chmod +x /tmp/bin/tunesmith /tmp/bin/transformers
export PATH=/tmp/bin:$PATH
printf 'import sys\nsys.modules["uvloop"] = None\nsys.modules["httptools"] = None\n' > /tmp/plain/sitecustomize.py
printf 'import sys\nsys.setswitchinterval(0.001)\n' > /tmp/switch/sitecustomize.py
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$R"
python3 -c "import torch, transformers, uvloop, httptools; print('torch', torch.__version__, 'transformers', transformers.__version__, 'uvloop', uvloop.__version__, 'httptools', httptools.__version__)" | tee -a "$R"
timeout 120 python3 bench/make_shape_model.py --shape qwen2.5-0.5b-instruct --tokenizer .gputok --out /tmp/m05 \
  > "$OUT/shape.log" 2>&1 || { tail "$OUT/shape.log"; exit 1; }

rc=0
timeout 150 python3 bench/engine_decode.py --model /tmp/m05 --concurrency 64 --max-tokens 256 \
  --out "$OUT/engine.json" > "$OUT/engine.txt" 2>&1 || rc=$?
echo "== engine alone rc=$rc" | tee -a "$R"
grep -E "c= " "$OUT/engine.txt" | tee -a "$R" || tail -5 "$OUT/engine.txt" | tee -a "$R"

variant() {  # NAME EXTRA_PYTHONPATH CLIENT_PROCS
  local rc=0
  PYTHONPATH=$2$PYTHONPATH timeout 150 python3 bench/serve.py --model /tmp/m05 --servers tunesmith --concurrency 64 \
    --rounds 3 --max-tokens 256 --prompt-tokens 212 --client-procs "$3" > "$OUT/serve-$1.txt" 2>&1 || rc=$?
  echo "== deploy $1 rc=$rc: $(grep -E '^tunesmith +c=64' "$OUT/serve-$1.txt" | tail -1)" | tee -a "$R"
}
variant asyncio-h11 /tmp/plain: 4
variant uvloop-httptools "" 4
variant uvloop-switch1ms /tmp/switch: 4
variant uvloop-1client "" 1
variant uvloop-httptools-again "" 4

rc=0
timeout 200 python3 bench/serve.py --model /tmp/m05 --servers tunesmith transformers --concurrency 64 --rounds 1 \
  --max-tokens 256 --prompt-tokens 212 --client-procs 4 --out "$OUT/serve.md" > "$OUT/serve-ttft.txt" 2>&1 || rc=$?
echo "== deploy vs transformers serve, 64 streams at once rc=$rc" | tee -a "$R"
grep -E "c=64" "$OUT/serve-ttft.txt" | tee -a "$R" || tail -5 "$OUT/serve-ttft.txt" | tee -a "$R"
cp /tmp/bench-*.log "$OUT/" 2>/dev/null || true
