#!/usr/bin/env bash
# llama.cpp itself reads tunesmith's GGUF: builds llama-cpp-python (compiles llama.cpp: ~10 min on 2 cores) in
# .venv-llamacpp, exports the embedded SmolLM2 with `tunesmith export --to gguf`, and checks that llama.cpp's greedy
# answer to a prompt rendered by tunesmith's Template equals transformers' on the source model for the first 16 tokens.
#   bash scripts/test-gguf-llamacpp.sh [GGUF_TYPE]      # default f32; f16 and q8_0 are checked the same way
# Not in CI (the compile); the GGUF files themselves are checked in CI by tests/export/test_gguf.py.
# Built with AVX2 kernels, not -DGGML_NATIVE=ON: on the project's machine (AVX-512 + AMX) the native build segfaults
# in its first quantized matmul, on llama.cpp's own Q4_1 SmolLM2 file too (f32/f16 run). CMAKE_ARGS overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
TYPE=${1:-f32}
VENV=${LLAMACPP_VENV:-.venv-llamacpp}
VERSION=0.3.36
if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    test -x "$VENV/bin/python" || python3 -m venv "$VENV"
    echo "$VENV: building llama-cpp-python==$VERSION (compiles llama.cpp, AVX2 kernels)..."
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_BUILD_TESTS=OFF"} \
        "$VENV/bin/python" -m pip install -q --no-cache-dir "llama-cpp-python==$VERSION" 2> >(grep -v "is ignored" >&2)
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
.venv/bin/tunesmith export --model smollm2-135m-instruct --to gguf --gguf-type "$TYPE" --greedy-prompts 0 \
    --eval-tokens 64 --output "$WORK/gguf"
# tunesmith's side: the prompt ids and transformers' greedy answer on the source model
.venv/bin/python - "$WORK" <<'PY'
import json, sys, torch
from transformers import AutoModelForCausalLM
from tunesmith.models.load import resolve
from tunesmith.templates import Template
work = sys.argv[1]
template = Template.load(f"{work}/gguf")
ids = template.render_prompt([{"role": "user", "content": "What is the capital of France? Answer in one sentence."}])
model = AutoModelForCausalLM.from_pretrained(resolve("smollm2-135m-instruct"), dtype=torch.float32)
out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), do_sample=False,
                     max_new_tokens=16, eos_token_id=None, pad_token_id=template.tokenizer.pad_token_id)
json.dump({"prompt": ids, "ours": out[0, len(ids):].tolist()}, open(f"{work}/ours.json", "w"))
PY
# llama.cpp's side: the same ids, greedy
"$VENV/bin/python" - "$WORK" "$TYPE" <<'PY'
import glob, json, sys
from llama_cpp import Llama
work, kind = sys.argv[1], sys.argv[2]
ours = json.load(open(f"{work}/ours.json"))
llm = Llama(model_path=glob.glob(f"{work}/gguf/*.gguf")[0], n_ctx=512, verbose=False, n_threads=2)
got = []
for token in llm.generate(ours["prompt"], temp=0.0, top_k=1, repeat_penalty=1.0):
    got.append(token)
    if len(got) == 16:
        break
same = next((i for i, (a, b) in enumerate(zip(ours["ours"], got)) if a != b), 16)
print(f"{kind}: llama.cpp {got}\n{kind}: ours      {ours['ours']}\n{kind}: first {same} of 16 greedy tokens equal")
sys.exit(0 if same == 16 else 1)
PY
