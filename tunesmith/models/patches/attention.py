"""Switch a loaded model to an attention function registered with transformers' AttentionInterface (transformers 5.23).

Upstream: `PreTrainedModel.set_attn_implementation(name)` treats any name containing "flash" as a flash-attn kernel
to fetch from the hub (the `kernels` package), and refuses or downloads instead of using the function registered
under that name. Our varlen kernel must carry "flash" in its name (transformers keys its mask-free paths on that
word; infer/attention.py), so the config's private `_attn_implementation` is set directly, the attribute every
attention call reads. tests/models/test_patches.py checks both that the public call still refuses the name and that
the private attribute still decides the attention.
"""

from __future__ import annotations

from typing import Any


def set_attention(model: Any, name: str) -> None:
    """Make `model` call the attention registered as `name` (register it first)."""
    from tunesmith.models.patches import check_upstream

    check_upstream("transformers")
    model.config._attn_implementation = name
