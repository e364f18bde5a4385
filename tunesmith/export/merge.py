"""Merge a LoRA/DoRA adapter into its base, in float32, and check the merge before anything is written.

The merged model's logits are compared with the adapter model's on a probe conversation rendered by the run's own
template; a merge that changes the outputs (beyond float32 rounding) is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.errors import TunesmithError
from tunesmith.models import load as models

PROBE = [{"role": "user", "content": "Write the requirements for a password reset feature."},
         {"role": "assistant", "content": "## Overview\nUsers can reset a forgotten password by email."}]
TOLERANCE = 1e-4  # float32: the merge reorders the adapter's sums, nothing more


class MergeMismatch(TunesmithError):
    pass


def merge_adapter(base_folder: Path, adapter_folder: Path, template: Any, verify: bool = True) -> tuple[Any, float]:
    """(merged model in float32 on the CPU, max |logit difference| merged vs adapter on the probe)."""
    import torch

    model = models.attach_adapters(models.load_model(base_folder, torch.float32, "cpu"), adapter_folder,
                                   trainable=False)
    model.eval()
    ids = torch.tensor([template.render(PROBE)[0]])
    with torch.inference_mode():
        adapter_logits = model(ids).logits
        merged = model.merge_and_unload()
        merged_logits = merged(ids).logits
    diff = (adapter_logits - merged_logits).abs().max().item()
    if verify and diff > TOLERANCE:
        raise MergeMismatch(f"merged logits differ from the adapter model's by {diff:.2e} (> {TOLERANCE:g}); "
                            "nothing written")
    return merged, diff
