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
# float32: the merge reorders the adapter's sums, nothing more. Rounding grows with the logits' size (SmolLM2-135M's
# reach ~40 and its merges differ by ~1e-4 from the adapter model), so the bound is relative to the largest logit; a
# broken merge (scaling lost, adapter not applied) moves logits by the adapter's effect, orders of magnitude more.
RELATIVE_TOLERANCE = 1e-4


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
    bound = tolerance(adapter_logits.abs().max().item())
    if verify and diff > bound:
        raise MergeMismatch(f"merged logits differ from the adapter model's by {diff:.2e} (> {bound:.2e}, "
                            f"{RELATIVE_TOLERANCE:g} x the largest logit); nothing written. --verify false writes "
                            "the merge anyway")
    return merged, diff


def tolerance(largest_logit: float) -> float:
    """The largest |merged - adapter| logit difference float32 rounding explains, for logits up to `largest_logit`."""
    return RELATIVE_TOLERANCE * max(largest_logit, 1.0)
