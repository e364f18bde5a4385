#!/bin/bash
# GPU job: --speculative ngram inside the continuous batch, end to end through tunesmith deploy (bench/serve.py
# tunesmith vs tunesmith-spec, one invocation, 1 and 8 streams) on the 7B-shape echo target of job_spec.sh (every
# layer's o_proj/down_proj zeroed, head = embeddings: the answer repeats the prompt's last token, proposals accepted).
set -o pipefail
R=$OUT/spec-serve.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl .whls/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p /tmp/bin && printf '#!/bin/sh\nexec python3 -m tunesmith.cli.main "$@"\n' > /tmp/bin/tunesmith && chmod +x /tmp/bin/tunesmith
export PATH=/tmp/bin:$PATH
python3 bench/make_shape_model.py --shape qwen2.5-7b-instruct --tokenizer .gputok --out /tmp/m7 > /tmp/shape7.log 2>&1 \
  || { tail /tmp/shape7.log | tee -a $R; exit 1; }
python3 bench/make_echo_target.py --model /tmp/m7 --out /tmp/e7 2>&1 | tail -1 | tee -a $R
rm -rf /tmp/m7
timeout 300 python3 bench/serve.py --model /tmp/e7 --servers tunesmith tunesmith-spec --speculative ngram \
  --concurrency 1 8 --rounds 2 --max-tokens 256 > $OUT/spec-serve-e7.txt 2>&1
echo "== serve e7 rc=$?" | tee -a $R; tail -12 $OUT/spec-serve-e7.txt | tee -a $R
grep -iE "error|Traceback" /tmp/bench-tunesmith-spec.log | tail -5 | tee -a $R
