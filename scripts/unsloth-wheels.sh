#!/usr/bin/env bash
# Wheels for bench/sft.py's `unsloth` configuration on the GPU machine (Python 3.12, manylinux x86_64, torch 2.11+cu130,
# transformers 5.17, no network), small enough to travel beside tunesmith's own wheels (a call carries 64 MiB in all).
#   scripts/unsloth-wheels.sh [DEST]        # default .whlu (add /.whlu/ to .git/info/exclude)
# DEST/unsloth: Unsloth and the pins it wants beside the machine's transformers 5.17 (trl 1.15, datasets < 5); installed
#   there into its own --target folder, apart from ours (trl 1.16, datasets 5.2, transformers 5.23 from .whl).
# DEST/common: bitsandbytes (QLoRA, both sides).
# What never loads on that machine is left out of the wheels (their RECORD is rewritten to match):
#   unsloth: studio/ (the web UI: 82 MB of JavaScript and its backend) and unsloth_cli/;
#   bitsandbytes: the libraries for CUDA other than 13.0, ROCm and XPU (the machine's torch is built for CUDA 13.0).
# Not carried: xformers (optional in unsloth: a missing module means PyTorch's SDPA; PyPI's wheels are built for CUDA
# 12.8 and would not load beside torch+cu130 anyway), hf_transfer and diffusers (downloads and image models only).
set -euo pipefail
dest=${1:-.whlu}
mkdir -p "$dest/unsloth" "$dest/common" "$dest/raw"
plats=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 any; do
  plats+=(--platform "$p")
done
get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plats[@]}" "$@" 2>&1 | grep -v "is ignored" || true; }
get -d "$dest/raw" unsloth==2026.10.9 bitsandbytes==0.50.2
get -d "$dest/unsloth" unsloth_zoo==2026.10.9 trl==1.15.0 datasets==4.8.5 tyro==1.0.17 docstring_parser==0.18.0 \
  typeguard==4.6.1 cut_cross_entropy==25.1.1 torchao==0.18.0 msgspec==0.23.0 structlog==26.1.0 json5==0.17.3 \
  nest_asyncio==1.6.0
python3 - "$dest" <<'EOF'
import sys, zipfile
from pathlib import Path

dest = Path(sys.argv[1])

def repack(src: Path, out: Path, drop) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        for info in zin.infolist():
            if drop(info.filename):
                continue
            data = zin.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = "".join(line + "\n" for line in data.decode().splitlines()
                               if line and not drop(line.split(",")[0])).encode()
            zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    print(f"{out.name}: {src.stat().st_size / 2**20:.1f} -> {out.stat().st_size / 2**20:.1f} MiB")

uns = next((dest / "raw").glob("unsloth-*.whl"))
repack(uns, dest / "unsloth" / uns.name, lambda n: n.startswith(("studio/", "unsloth_cli/")))
bnb = next((dest / "raw").glob("bitsandbytes-*.whl"))
repack(bnb, dest / "common" / bnb.name,
       lambda n: n.startswith("bitsandbytes/libbitsandbytes_") and not n.endswith(("_cuda130.so", "_cpu.so")))
EOF
rm -rf "$dest/raw"
du -sh "$dest"/*
