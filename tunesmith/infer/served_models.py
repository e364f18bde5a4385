"""The transformers engine's served models: what one is (Served), and loading one (a whole model, a VLM with its
processor, or an adapter over a base shared with the other versions)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.models import load as models
from tunesmith.models.runs import read_run_output
from tunesmith.templates import Template


@dataclass
class Served:
    name: str
    model: Any
    template: Template
    manager: Any = None
    processor: Any = None  # a vision-language model's processor (its images and chat template); None: text only
    kernels: str = "none"  # the fused layers it runs (models/kernels.py apply_kernels' answer)


def is_vision(folder: Path) -> bool:
    from tunesmith.models.vision import is_vision_model

    return is_vision_model(folder)


def vision_served(name: str, folder: Path, dtype: Any, device: str) -> Served:
    """A VLM (or a LoRA run over one, attached un-merged by peft) with its processor and the run's template."""
    from tunesmith.models.vision import load_vision_model, template_of

    net, processor = load_vision_model(folder, dtype)
    return Served(name, net.to(device).eval(), template_of(processor), processor=processor)


def load_version(name: str, folder: str, base: str | None, bases: dict[str, Any], dtype: Any,
                 device: str) -> tuple[Served, int]:
    """One version of a served model, and how many models it read from disk (0 or 1). An adapter goes on a view of
    its base: a copy of the module tree whose parameters and buffers are the base's own tensors (deepcopy's memo maps
    each to itself), with peft's LoRA layers injected into the copy only; the base and the other views stay
    untouched. `bases` caches bases by folder. A vision-language model's version is loaded whole, with its processor
    (a LoRA run over one: on its own copy of the base)."""
    run = read_run_output(folder)
    if is_vision(run.folder):
        return vision_served(name, run.folder, dtype, device), 1
    if not run.is_adapter:
        net = models.load_model(run.folder, dtype=dtype, device=device).eval()
        return Served(name, net, Template.load(run.folder)), 1
    key, loads = str(models.resolve(base or run.base_model).resolve()), 0
    if key not in bases:
        bases[key], loads = models.load_model(Path(key), dtype=dtype, device=device).eval(), 1
    shared = bases[key]
    view = copy.deepcopy(shared, {id(t): t for t in [*shared.parameters(), *shared.buffers()]})
    net = models.attach_adapters(view, run.folder, trainable=False).get_base_model()
    return Served(name, net.eval(), Template.load(run.folder)), loads
