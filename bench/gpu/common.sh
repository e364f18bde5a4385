# Sourced by the GPU jobs (bench/gpu/job_p18v.sh): install the carried wheels (.whl, .whls) into /tmp/site, put
# `tunesmith` and `transformers` shims on PATH, print the machine, and define step(). $R is the job's summary file.
: "${OUT:?set OUT to the results folder}" "${R:?set R to the summary file}"
step() {  # NAME SECONDS COMMAND...: run with a time limit, output to $OUT/NAME.txt, rc and key lines to the summary
  local name=$1 limit=$2 rc=0; shift 2
  local started=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1 || rc=$?
  echo "== $name rc=$rc ($((SECONDS - started)) s)" | tee -a "$R"
  grep -E "c= |c=64|passed|failed|Error|kernels" "$OUT/$name.txt" | grep -v "^WARNING" | tail -12 | tee -a "$R" || true
}
pack_out() {  # a call brings back 8 files at most: everything but the summary goes into $OUT/all.tgz
  (cd "$OUT" && tar czf /tmp/all.tgz --exclude "$(basename "$R")" . && find . -type f ! -name "$(basename "$R")" -delete \
    && mv /tmp/all.tgz .)
}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/*.whl .whls/*.whl 2>&1 | tail -3 | tee -a "$R"
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false \
  TUNESMITH_TEST_TOKENIZER=$PWD/.gputok
mkdir -p /tmp/bin
printf '#!/bin/sh\nexec python3 -m tunesmith.cli.main "$@"\n' > /tmp/bin/tunesmith
printf '#!/bin/sh\nexec python3 -m transformers.cli.transformers "$@"\n' > /tmp/bin/transformers
chmod +x /tmp/bin/tunesmith /tmp/bin/transformers
export PATH=/tmp/bin:$PATH
{ nvidia-smi --query-gpu=name,memory.total,driver_version,uuid --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  git log --oneline -1 2>/dev/null | cut -c1-100 || true; } 2>&1 | tee -a "$R"
