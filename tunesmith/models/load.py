"""Resolve a model name to a folder, pick device and dtype, load weights (4-bit for QLoRA), attach adapters."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError, HardwareError, ModelNotFoundError
from tunesmith.models.registry import MODELS, unknown_model


def resolve(model: str) -> Path:
    """A local folder, a registry name, or a hub id (from the cache, or downloaded when online)."""
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / "reft" / "config.json").exists():
            raise ModelNotFoundError(f"{path}: a ReFT run (interventions over its base, models/reft.py); pass it as "
                                     f"--adapters {path}")
        if not (path / "config.json").exists():
            if (path / "adapter_config.json").exists():
                raise ModelNotFoundError(adapter_hint(path))
            raise ModelNotFoundError(f"{path}: folder has no config.json; is it a Hugging Face model folder?")
        return path
    if model in MODELS:
        entry = MODELS[model]
        if entry.hub_id is None:
            from tunesmith.models.embedded import prepared_folder

            return prepared_folder(model)
        model = entry.hub_id
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelNotFoundError(unknown_model(model))
    from tunesmith.hub import download

    return Path(download(model, kind="model"))


def adapter_hint(folder: Path) -> str:
    """What to type instead of --model FOLDER when FOLDER is a peft adapter (a LoRA run's final/): its base is the
    one the run recorded (models/runs.py), else adapter_config.json's base_model_name_or_path."""
    from tunesmith.models.runs import read_run_output

    kind = json.loads((folder / "adapter_config.json").read_text()).get("peft_type") or "peft"
    kind = {"LORA": "LoRA"}.get(kind, kind)
    try:
        base = read_run_output(folder).base_model
    except ModelNotFoundError:  # neither config.yaml nor adapter_config.json names it
        base = "BASE"
    return f"{folder} holds a {kind} adapter, not a whole model: pass --model {base} --adapters {folder}"


def classifier_architecture(folder: Path) -> str | None:
    """The *ForSequenceClassification architecture a model folder holds (a reward model, a classifier), else None."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return None
    architectures = json.loads(config.read_text()).get("architectures") or []
    return next((a for a in architectures if a.endswith("ForSequenceClassification")), None)


def refuse_scorer(folder: Path) -> None:
    """Refuse a folder that scores text instead of writing it: a reward model (`rlhf --method rm`'s final/) or another
    sequence classifier. Loaded as a causal LM, transformers drops its score head with a warning and generates through
    an LM head that was never trained (the embeddings, or random weights): infer, eval and export ran on to nonsense."""
    arch = classifier_architecture(folder)
    if arch is None:
        return
    record = json.loads((folder / "config.json").read_text())
    labels = len(record.get("id2label") or {}) or record.get("num_labels", 2)
    if labels == 1:  # what rm saves (num_labels=1): one score per sequence
        raise ConfigError(f"{folder}: a reward model ({arch}): it scores answers, one number per conversation, and "
                          f"cannot generate text. Use it as --rewards.model {folder} in tunesmith rlhf --method grpo "
                          "or ppo")
    raise ConfigError(f"{folder}: a sequence classifier ({arch}, {labels} labels): it labels text and cannot generate "
                      f"any. Serve it with tunesmith deploy --encoders {folder} (/v1/classify)")


def pick_device(preference: str = "auto") -> str:
    import torch

    if preference == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if preference == "cuda" and not torch.cuda.is_available():
        raise HardwareError("device: cuda was asked for but no CUDA GPU is visible; use --device auto or cpu")
    if preference == "mps" and not torch.backends.mps.is_available():
        raise HardwareError("device: mps was asked for but Apple MPS is not available; use --device auto or cpu")
    return preference


def pick_dtype(preference: str, device: str) -> Any:
    import torch

    if preference != "auto":
        return getattr(torch, preference)
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32  # CPU and MPS: float32 is the safe choice for training small models


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    if not Path(folder).expanduser().is_dir():  # else transformers takes the path for a hub id: "Repo id must be..."
        raise ModelNotFoundError(f"{folder}: folder not found")
    return AutoTokenizer.from_pretrained(folder)


def load_model(folder: Path, dtype: Any, device: str, quantize_4bit: bool = False, config: Any = None) -> Any:
    """The model in `folder`; `config` replaces its config.json (LongLoRA's scaled RoPE: train/longlora.py). A ReFT
    run's final/ is its base with the interventions hooked on (models/reft.py)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from tunesmith.models import reft

    if reft.is_reft_run(folder):
        return reft.load_run(Path(folder), dtype, device)
    refuse_scorer(Path(folder))

    from tunesmith.models.vision import is_vision_model
    from tunesmith.models.vision import quantize_skip as vision_skip

    kwargs: dict[str, Any] = {"dtype": dtype, **({"config": config} if config is not None else {})}
    if quantize_4bit:
        kwargs["quantization_config"] = _nf4_config(dtype)
        # the current device: each rank's own GPU with several processes (train/preflight.py sets it)
        kwargs["device_map"] = {"": _current_cuda()} if device == "cuda" else {"": device}
        if is_vision_model(folder):  # the vision tower and aligner stay in dtype (4-bit features lose detail)
            kwargs["quantization_config"].llm_int8_skip_modules = vision_skip(folder)
    auto = AutoModelForImageTextToText if is_vision_model(folder) else AutoModelForCausalLM  # VLMs: models/vision.py
    model = auto.from_pretrained(folder, **kwargs)
    return model if quantize_4bit else model.to(device)


def load_tensor_parallel(folder: Path, dtype: Any, tensor_parallel: int) -> Any:
    """The model sharded as it loads, in a rank of several processes: each layer's linears over `tensor_parallel`
    ranks (DTensors, by the family's tp plan), the remaining ranks with FSDP2 (transformers' own); transformers places
    the shards itself."""
    from transformers import AutoModelForCausalLM
    from transformers.distributed import DistributedConfig

    refuse_scorer(Path(folder))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    config = DistributedConfig(tp_size=tensor_parallel, fsdp_size=world // tensor_parallel)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, distributed_config=config)


def _current_cuda() -> int:
    import torch

    return torch.cuda.current_device()


def _nf4_config(dtype: Any) -> Any:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise HardwareError("method: qlora needs bitsandbytes: pip install 'tunesmith[qlora]'") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


# lora.init -> peft's init_lora_weights. PiSSA through 16 subspace iterations of a randomised SVD (peft's fast variant,
# seconds on a 7B model where the exact SVD takes minutes; the residual W - BA is exact either way).
LORA_INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa_niter_16", "olora": "olora", "eva": "eva"}


def lora_config(lora: Any, method: str, model: Any = None) -> Any:
    """peft's LoraConfig. With the model, mixture-of-experts layers are handled (models/moe.py): routers frozen
    unless lora.train_router, the experts' fused weights targeted when lora.experts."""
    from peft import EvaConfig, LoraConfig

    from tunesmith.models import moe

    extra: dict[str, Any] = {}
    if model is not None:
        extra = moe.lora_extras(model, lora.targets, experts=getattr(lora, "experts", False),
                                train_router=getattr(lora, "train_router", False))
    return LoraConfig(**{
        "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "target_modules": lora.targets,
        "use_dora": method == "dora", "use_rslora": lora.rslora, "task_type": "CAUSAL_LM",
        "init_lora_weights": LORA_INIT[getattr(lora, "init", "default")], **extra,
        **({"eva_config": EvaConfig(rho=lora.eva_rho)} if getattr(lora, "init", None) == "eva" else {}),
    })


def attach_adapters(model: Any, folder: str | Path, trainable: bool) -> Any:
    from peft import PeftModel

    check_adapter_folder(folder)
    return PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)


def _run_folder_hint(path: Path) -> str:
    """What to pass for a run's folder given as --adapters: its final/, or, for a run cut off, its newest checkpoint."""
    if (path / "final" / "adapter_config.json").exists():
        return f"the run's adapter is {path / 'final'}"
    steps = sorted((int(p.name.split("-")[1]), p) for p in path.glob("checkpoint-*")
                   if p.name.split("-")[1].isdigit() and (p / "adapter_config.json").exists())
    if steps:
        return (f"the run has no final/ (cut off?): continue it with --resume, or use its newest checkpoint "
                f"{steps[-1][1]}")
    return "expected runs/NAME/final of an adapter run"


def check_adapter_folder(folder: str | Path) -> Path:
    """`folder` as peft will read it, or the error a user can act on: peft takes a missing folder for a hub id, and
    a full model's folder (a `--tuner full` or rm run's final/) fails on its missing adapter_config.json."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ModelNotFoundError(f"adapters: {folder}: folder not found (expected runs/NAME/final of an adapter run)")
    if not (path / "adapter_config.json").exists():
        if (path / "config.json").exists():  # nothing to attach: it is the model itself
            refuse_scorer(path)
            raise ConfigError(f"adapters: {folder} holds a full model (config.json, no adapter_config.json), not an "
                              f"adapter: pass it as --model {folder} instead")
        raise ModelNotFoundError(f"adapters: {folder}: no adapter_config.json; not an adapter folder "
                                 f"({_run_folder_hint(path)})")
    return path
