"""Merge a LoRA/DoRA adapter into its base and write a plain HF folder that loads without peft.

    tunesmith export --adapters runs/prd/final --output models/prd-merged

Before writing, the merged model's logits are compared with the adapter model's on a probe conversation rendered
by the run's own template; export refuses to write a merge that changes the outputs.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from tunesmith.config import ExportConfig
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.models import load as models
from tunesmith.models.runs import read_run_output
from tunesmith.templates import Template

PROBE = [{"role": "user", "content": "Write the requirements for a password reset feature."},
         {"role": "assistant", "content": "## Overview\nUsers can reset a forgotten password by email."}]
TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}


class MergeMismatch(TunesmithError):
    pass


def export(cfg: ExportConfig) -> Path:
    import torch

    run = read_run_output(cfg.adapters)
    if not run.is_adapter:
        raise ConfigError(f"adapters: {run.folder} is a full model, not an adapter; it needs no merge")
    out = Path(cfg.output) if cfg.output else run.folder.parent / "merged"
    dtype = getattr(torch, cfg.dtype)
    base_folder = models.resolve(cfg.model or run.base_model)
    template = Template.load(run.folder)

    # Merge in float32 (exact), verify, then cast to the requested dtype for writing.
    model = models.attach_adapters(models.load_model(base_folder, torch.float32, "cpu"), run.folder, trainable=False)
    model.eval()
    ids = torch.tensor([template.render(PROBE)[0]])
    with torch.inference_mode():
        adapter_logits = model(ids).logits
        merged = model.merge_and_unload()
        merged_logits = merged(ids).logits
    diff = (adapter_logits - merged_logits).abs().max().item()
    if cfg.verify and diff > TOLERANCE["float32"]:
        raise MergeMismatch(f"merged logits differ from the adapter model's by {diff:.2e} (> 1e-4); nothing written")

    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent if out.parent.exists() else None))
    merged.to(dtype).save_pretrained(staging, safe_serialization=True)
    template.save(staging)
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), out)
    before = _size(base_folder) + _size(run.folder)
    print(f"merged {run.folder} into {base_folder.name}: max |logit difference| = {diff:.2e} (float32)\n"
          f"wrote {out} ({_size(out) / 2**20:.1f} MiB; base + adapter were {before / 2**20:.1f} MiB)", file=sys.stderr)
    return out


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith("optimizer"))

