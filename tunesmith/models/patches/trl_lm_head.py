"""TRL's fused LM head scores only the positions that carry a label, on CPU and MPS too (TRL 1.16).

Upstream: the trainers that compute log-probabilities through `add_fused_lm_head` (SFT, DPO, KTO, GRPO) project the
last hidden states through the LM head in tiles, and on CUDA/XPU only at the positions whose next token has a label.
Elsewhere they project every position and zero the unlabelled ones afterwards, so that a compiler device (XLA/Neuron)
sees one tile shape per batch instead of recompiling for each count of labelled positions. CPU and MPS run eagerly and
pay for it: every prompt and pad position goes through a 49,152-word head forward, again in the backward's recompute
and once more for the hidden states' gradient. In the README demo's rows 22 % of the positions are prompt.

TRL reads the choice at each call from the name `_use_triton` in trl.trainer.utils (the kernels keep their own
binding of it, so which kernel runs is unchanged); `labelled_positions_only(device)` rebinds that name for the length
of a `with` block and puts it back after. The scores of the labelled positions are the same either way, so are the
loss and its gradients; tests/train/test_lm_head_positions.py counts the positions projected, so it fails when the
name no longer decides.
"""

from __future__ import annotations

import contextlib
from typing import Any

EAGER_DEVICES = ("cpu", "mps")  # no compiler re-tracing a new tile shape per batch


@contextlib.contextmanager
def labelled_positions_only(device: str):
    """Within the block, TRL's fused LM head projects only labelled positions on `device` (a no-op on CUDA/XPU, where
    it already does, and on compiler devices, where the fixed shape is the point)."""
    if device not in EAGER_DEVICES:
        yield
        return
    from trl.trainer import utils

    from tunesmith.models.patches import check_upstream

    check_upstream("trl")
    upstream = getattr(utils, "_use_triton", None)
    if upstream is None:  # a TRL without the switch: its own behaviour
        yield
        return

    def compact(where: Any) -> bool:
        return where.type in EAGER_DEVICES or upstream(where)

    utils._use_triton = compact
    try:
        yield
    finally:
        utils._use_triton = upstream
