#!/bin/bash
# GPU job: bench/sft.py's unsloth configuration beside tunesmith's default, L8 (Unsloth's published setting), W3, W2.
# Fill .whl/.whls (../shared/gpu-wheels.sh) and .whlu (scripts/unsloth-wheels.sh) first; run from the repo root on the
# GPU machine: bash scripts/unsloth-bench-job.sh  (ONLY="W2 unsloth tunesmith" runs one workload; LIMIT=seconds)
# carry: .whl .whls .whlu. Ours: /tmp/site (.whl: transformers 5.23, trl 1.16, ...); Unsloth's: /tmp/usite (trl 1.15,
# datasets 4.8.5, the machine's transformers 5.17); both: /tmp/common (bitsandbytes, pydantic, peft 0.21.2).
set -o pipefail
R=$OUT/job.txt
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $R; }
PIP="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target"
$PIP /tmp/site .whl/*.whl .whls/*.whl || exit 1
$PIP /tmp/common .whlu/common/*.whl .whl/pydantic-*.whl .whl/pydantic_core-*.whl .whl/annotated_types-*.whl \
  .whl/typing_inspection-*.whl .whl/peft-*.whl .whl/dill-*.whl .whl/multiprocess-*.whl || exit 1
$PIP /tmp/usite .whlu/unsloth/*.whl || exit 1
el "installed"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 UNSLOTH_DISABLE_STATISTICS=1 UNSLOTH_DISABLE_CPU_FALLBACK=1
export BENCH_UNSLOTH_PYTHONPATH=/tmp/usite:/tmp/common:$PWD BENCH_LOG_DIR=/tmp/logs
export PYTHONPATH=/tmp/site:/tmp/common:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a $R
df -h /tmp /dev/shm | tee -a $R
CACHE=/tmp/tsbench
[ "$(df --output=avail -B1G /dev/shm | tail -1)" -gt 45 ] && CACHE=/dev/shm/tsbench
PEAK=$(python3 bench/gpu/peak_tflops.py)
el "bf16 8192^3 matmul: $PEAK TFLOP/s; cache $CACHE"
[ -n "$ONLY" ] || PYTHONPATH=$BENCH_UNSLOTH_PYTHONPATH timeout 150 python3 -c "
import unsloth, transformers, trl, peft, bitsandbytes, datasets, torch
from unsloth import FastLanguageModel
print('unsloth', unsloth.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'peft',
      peft.__version__, 'bitsandbytes', bitsandbytes.__version__, 'datasets', datasets.__version__, 'torch', torch.__version__)
" > $OUT/unsloth-import.txt 2>&1
rc=$?; tail -4 $OUT/unsloth-import.txt | tee -a $R; el "unsloth import rc=$rc"
U=unsloth; [ $rc -eq 0 ] || U=
B="python3 bench/sft.py --peak-tflops $PEAK --cache $CACHE"
LIMIT=${LIMIT:-470}  # seconds for the whole job (the call's device time)
wl() {  # NAME CONFIGS...: one invocation, in the time left
  local name=$1; shift; local left=$(( LIMIT - $(date +%s) + T0 ))
  [ $left -gt 70 ] || { el "$name skipped: ${left} s left"; return; }
  local each=$(( ${SHARE:-$#} )); each=$(( left / each )); [ $each -lt 200 ] || each=200  # a child ends in its share
  timeout $(( left + 20 )) $B --workload $name --configs "$@" --child-timeout $each --out /tmp/res/ > /tmp/$name.txt 2>&1
  el "$name rc=$?"; grep -E "^\||x tokens" /tmp/$name.txt | tee -a $R
}
[ -n "$ONLY" ] || wl L8 tunesmith:gradient_checkpointing=true $U tunesmith
if [ -n "$ONLY" ]; then wl $ONLY; elif [ -n "$U" ]; then wl W3 $U tunesmith; wl W2 $U tunesmith; fi
cp /tmp/*.txt /tmp/logs/ 2>/dev/null; cp -r /tmp/res /tmp/logs/ 2>/dev/null
tar czf $OUT/results.tgz -C /tmp logs
el "done"
