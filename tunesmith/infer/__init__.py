"""Inference: one Engine interface (types.py) and its backends, shared by infer, deploy, eval and RL rollouts.

The package is also callable as the API function tunesmith.infer (api_package.py says why)."""

from __future__ import annotations

from typing import Any

from tunesmith.api_package import callable_as_api_function
from tunesmith.errors import TunesmithError
from tunesmith.infer.types import (
    Choice,
    Completion,
    Delta,
    Engine,
    EngineError,
    GenerationRequest,
    SamplingParams,
    TokenLogprob,
    UnknownModelError,
)

BACKENDS = {
    "transformers": ("tunesmith.infer.transformers_engine", "TransformersEngine", None),
    "vllm": ("tunesmith.infer.vllm_engine", "VLLMEngine", "vllm"),
}
# how to get a backend that is not installed: vLLM pins its own torch and transformers, so `pip install vllm` in
# this venv would replace tunesmith's pinned ones; it lives in a venv of its own (scripts/vllm-env.sh)
INSTALL = {"vllm": "build its venv once with `bash scripts/vllm-env.sh` (vLLM pins its own torch and transformers, "
                   "so not `pip install vllm` here), then run `.venv-vllm/bin/tunesmith`"}


class BackendUnavailable(TunesmithError):
    exit_code = 2


def load_engine(backend: str = "transformers", model: str | None = None, adapters: dict[str, str] | None = None,
                device: str = "auto", dtype: str = "auto", system: str | None = None,
                chat_template_kwargs: dict | None = None, **options: Any) -> Engine:
    """Load a model (and named adapters) behind the Engine interface with the chosen backend. `system` and
    `chat_template_kwargs` go over what each run saved with its template."""
    import importlib
    import importlib.util

    if backend not in BACKENDS:
        raise BackendUnavailable(f"backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    module, cls, package = BACKENDS[backend]
    if package and importlib.util.find_spec(package) is None:
        how = INSTALL.get(backend, f"install it (pip install {package})")
        raise BackendUnavailable(f"backend: {backend} is not installed here; {how}, or use --backend transformers")
    engine_cls = getattr(importlib.import_module(module), cls)
    if chat_template_kwargs:
        options["chat_template_kwargs"] = chat_template_kwargs
    return engine_cls.load(model=model, adapters=adapters, device=device, dtype=dtype, system=system, **options)


__all__ = ["BACKENDS", "BackendUnavailable", "Choice", "Completion", "Delta", "Engine", "EngineError",
           "GenerationRequest", "SamplingParams", "TokenLogprob", "UnknownModelError", "load_engine"]


callable_as_api_function(__name__)
