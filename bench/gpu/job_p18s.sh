#!/bin/bash
# GPU job P18s: two SFT levers of issue P18, each in one bench/sft.py invocation beside its peer, on one H200:
#   1. W1 (0.5B full, 4,096 x 8): the default against torch.compile of each decoder layer (bench-only
#      `tunesmith:_compile_layers=true`, the lever for W1's launch-bound idle share) and TRL's best;
#   2. L8 (Unsloth's published setting, Llama-3.1-8B shape, QLoRA r32, batch 2 x GA 4): Unsloth against tunesmith at
#      its memory: offloaded checkpointing (`gradient_checkpointing: offload`), with 2 rows per micro-batch and with 1
#      row x GA 8 (the same tokens per optimizer step).
# Carry .whl .whls .whlu (bench/gpu/stage.sh, scripts/unsloth-wheels.sh). Results under $OUT: p18s.txt, logs.tgz.
set -o pipefail
R=$OUT/p18s.txt
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$R"; }
PIP="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target"
$PIP /tmp/site .whl/*.whl .whls/*.whl || exit 1
$PIP /tmp/common .whlu/common/*.whl .whl/pydantic-*.whl .whl/pydantic_core-*.whl .whl/annotated_types-*.whl \
  .whl/typing_inspection-*.whl .whl/peft-*.whl .whl/dill-*.whl .whl/multiprocess-*.whl || exit 1
$PIP /tmp/usite .whlu/unsloth/*.whl || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 UNSLOTH_DISABLE_STATISTICS=1 UNSLOTH_DISABLE_CPU_FALLBACK=1
export BENCH_UNSLOTH_PYTHONPATH=/tmp/usite:/tmp/common:$PWD BENCH_LOG_DIR=/tmp/logs
export PYTHONPATH=/tmp/site:/tmp/common:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$R"
PEAK=$(python3 bench/gpu/peak_tflops.py)
el "bf16 8192^3 matmul: $PEAK TFLOP/s"
B="python3 bench/sft.py --peak-tflops $PEAK --cache /dev/shm/tsbench --out /tmp/res/ ${SFT_FLAGS:-}"  # e.g. --profile
wl() {  # NAME SECONDS-PER-CONFIG CONFIGS...
  local name=$1 each=$2; shift 2
  timeout $(( each * $# + 30 )) $B --workload "$name" --configs "$@" --child-timeout "$each" > "/tmp/$name.txt" 2>&1
  el "$name rc=$?"; grep -E "^\||x tokens" "/tmp/$name.txt" | tee -a "$R"
}
[ "${SKIP_W1:-0}" = 1 ] || wl W1 150 ${W1_CONFIGS:-tunesmith tunesmith:_compile_layers=true trl-best}
# L8_CONFIGS (space-separated) replaces the configurations beside unsloth, e.g. packing=false's same rows per step
[ "${SKIP_L8:-0}" = 1 ] || wl L8 ${L8_SECONDS:-130} unsloth ${L8_CONFIGS:-tunesmith:gradient_checkpointing=offload \
  tunesmith:gradient_checkpointing=offload,batch_size=1,grad_accum=8}
mkdir -p /tmp/logs && cp /tmp/*.txt /tmp/logs/ 2>/dev/null; cp -r /tmp/res /tmp/logs/ 2>/dev/null
tar czf "$OUT/logs.tgz" -C /tmp logs
el "done"
