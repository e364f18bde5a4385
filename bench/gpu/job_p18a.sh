#!/bin/bash
# GPU job P18a: does HTTP's spread of arrivals explain deploy's overhead over the engine alone, and does deploy
# --admit-window-ms (infer/admission.py) win it back? 0.5B shape (bench/make_shape_model.py), ~212 prompt / 256 output
# tokens, greedy, 64 streams x 3 requests each (deploy's load in job_p18v.sh):
#   1. the engine alone with arrivals together and spread over 0..20 ms (--arrival-spread-ms), without and with the
#      window (ms/step and steps: --host-timing);
#   2. deploy with each --admit-window-ms of WINDOWS (default "0 4 12 0"), one server at a time, in that order.
# REPEAT=1: instead of 1., the engine alone three times over, then in its own process without HTTP (--engine-process).
# ROUNDS=N: requests per stream (default 3) for the engine and deploy alike. Carry .whl .whls .gputok. Everything under $OUT (packed into all.tgz), summary p18a.txt.
set -euo pipefail
: "${OUT:?set OUT to the results folder}"
R=$OUT/p18a.txt
source bench/gpu/common.sh
python3 bench/make_shape_model.py --shape qwen2.5-0.5b-instruct --tokenizer .gputok --out /tmp/m05 \
  > "$OUT/shape05.txt" 2>&1 || { tail -5 "$OUT/shape05.txt" | tee -a "$R"; exit 1; }
ENGINE=(python3 bench/engine_decode.py --model /tmp/m05 --concurrency 64 --max-tokens 256 --rounds "${ROUNDS:-3}" --host-timing)
if [ "${REPEAT:-0}" = 1 ]; then  # the engine alone three times over (its spread), then across the pipe without HTTP
  step engine-thrice 150 "${ENGINE[@]}" --variant first '{}' --variant second '{}' --variant third '{}'
  step engine-process 120 python3 bench/engine_decode.py --model /tmp/m05 --concurrency 64 --max-tokens 256 \
    --rounds "${ROUNDS:-3}" --engine-process
else
  step engine-together 120 "${ENGINE[@]}" --variant default '{}' --variant admit8 '{"_admit_ms": 8}'
  step engine-spread20 150 "${ENGINE[@]}" --arrival-spread-ms 20 --variant default '{}' \
    --variant admit4 '{"_admit_ms": 4}' --variant admit12 '{"_admit_ms": 12}'
fi
served() {  # NAME DEPLOY-FLAGS...: one deploy at deploy's load, measured by bench/serve.py against its URL
  local name=$1; shift
  tunesmith deploy --model /tmp/m05 --port 8200 --max-concurrent 256 "$@" > "$OUT/$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 120); do curl -sf http://127.0.0.1:8200/health > /dev/null && break; sleep 1; done
  step "$name" 100 python3 bench/serve.py --url http://127.0.0.1:8200 --model /tmp/m05 --concurrency 64 --rounds "${ROUNDS:-3}" \
    --max-tokens 256 --prompt-tokens 212 --client-procs 4
  kill -TERM "$pid"; wait "$pid" || true
}
# WINDOWS="0 4 2 8 4 0": one deploy per entry, with that --admit-window-ms, in that order
i=0
for w in ${WINDOWS:-0 4 12 0}; do
  served "deploy$((i += 1))-admit$w" --admit-window-ms "$w"
done
echo "== done in $SECONDS s" | tee -a "$R"
pack_out
