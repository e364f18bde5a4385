#!/usr/bin/env bash
# Stage what bench/gpu/job_*.sh need on a GPU machine without internet (Python 3.12, torch and CUDA already there):
#   .whl   our wheels (--no-deps, Python 3.12 manylinux), installed there into /tmp/site
#   .whls  the extras of `transformers serve` and the openai client (bench/serve.py's peers)
#   .gputok the embedded SmolLM2's tokenizer (bench/make_shape_model.py --tokenizer .gputok builds shapes around it)
# Run here, from the repository root, with the internet: bash bench/gpu/stage.sh; then carry [".whl", ".whls", ".gputok"]
# and run e.g. `bash bench/gpu/job_spec_serve.sh` there (results under $OUT). Add the three folders to .git/info/exclude.
set -euo pipefail
download() {  # DEST PACKAGE==VERSION...
  local dest=$1; shift; mkdir -p "$dest"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -d "$dest" "$@"
}
download .whl annotated_doc==0.0.7 annotated_types==0.8.0 anyio==4.16.0 click==8.5.1 datasets==5.2.0 \
  dill==0.4.1 fastapi==0.165.0 galore_torch==1.0 h11==0.16.0 hf_xet==1.8.0 hjson==3.1.0 httpcore2==2.16.2 \
  httpx2==2.16.2 huggingface_hub==2.4.0 idna==3.20 jsonschema_rs==0.60.3 liger_kernel==0.8.5 multiprocess==0.70.19 \
  opentelemetry_api==1.45.2 peft==0.21.2 prometheus_client==0.26.0 pydantic==2.14.3 pydantic_core==2.50.4 \
  safetensors==0.8.0 starlette==1.10.0 tokenizers==0.23.3 transformers==5.23.0 trl==1.16.0 truststore==0.10.5 \
  typing_inspection==0.4.5 uvicorn==0.54.0 uvloop==0.23.0 httptools==0.9.0
# deepspeed is published as a source archive only: build its (pure-Python) wheel here
${PYTHON:-.venv/bin/python} -m pip wheel -q --no-deps --no-build-isolation deepspeed==0.19.8 -w .whl
download .whls distro==1.9.0 jiter==0.19.0 markdown_it_py==4.3.0 mdurl==0.1.2 openai==3.60.0 pygments==2.21.0 \
  rich==15.0.0 shellingham==1.5.4 sniffio==1.3.1 typer==0.29.2
${PYTHON:-.venv/bin/python} - <<'PY'
from transformers import AutoTokenizer
from tunesmith.models.load import resolve
AutoTokenizer.from_pretrained(resolve("smollm2-135m-instruct")).save_pretrained(".gputok")
PY
du -sh .whl .whls .gputok
