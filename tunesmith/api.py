"""The Python API: one function per command, each taking that command's config.

    from tunesmith import SFTConfig, sft
    result = sft(SFTConfig(model="smollm2-135m-instruct", dataset=["prd-assistant"]))

The CLI and the web UI call exactly these functions. Heavy libraries load inside them, not at import.
"""

from __future__ import annotations

from typing import Any

from tunesmith.config.eval import EvalConfig
from tunesmith.config.rlhf import RLHFConfig
from tunesmith.config import PlanConfig
from tunesmith.config import DataCheckConfig, DeployConfig, DownloadConfig, ExportConfig, InferConfig, PTConfig, SFTConfig


def sft(cfg: SFTConfig, callbacks: list[Any] | None = None):
    """Supervised fine-tuning. Returns a RunResult (run_dir, final_dir, losses)."""
    from tunesmith.plan.speed import resolve_speed
    from tunesmith.train.sft import sft as run

    resolve_speed(cfg)  # packing and gradient checkpointing left unset: chosen for this machine and the memory plan
    check_memory(cfg)
    return run(cfg, callbacks=callbacks)


def pt(cfg: PTConfig, callbacks: list[Any] | None = None):
    """Continued pretraining on raw text."""
    from tunesmith.plan.speed import resolve_speed
    from tunesmith.train.pt import pt as run

    resolve_speed(cfg)
    check_memory(cfg)
    return run(cfg, callbacks=callbacks)


def check_memory(cfg: Any) -> None:
    """Before a training run: the plan's estimate for exactly these settings against this machine's memory. Warns
    when it will not fit; refuses with --strict-memory. Never blocks a run the estimator cannot judge."""
    import logging

    from tunesmith.errors import HardwareError
    from tunesmith.plan.estimate import GIB, estimate_training
    from tunesmith.plan.hardware import probe
    from tunesmith.plan.model_shape import load_shape
    from tunesmith.plan.speed import partial_checkpointing_bytes, training_setup

    log = logging.getLogger("tunesmith")
    hw = probe()
    device = "cuda" if hw.gpus else "mps" if hw.mps else "cpu"
    try:
        from tunesmith.models.load import pick_dtype
        from tunesmith.train.speed import liger_applies, varlen_runs

        shape = load_shape(cfg.model)
        # packed batches on CUDA run the varlen flash kernel (no mask); elsewhere sdpa with a block mask
        varlen = device == "cuda" and varlen_runs(device, pick_dtype(cfg.dtype, device))
        setup = training_setup(cfg, device, bool(hw.gpus) and all(g.bf16 for g in hw.gpus), varlen,
                               liger_applies(getattr(cfg, "kernels", "none"), device, shape.model_type))
        every = getattr(cfg, "checkpoint_every", None) or 1
        needed = (partial_checkpointing_bytes(shape, setup, every) if setup.checkpointing and every > 1
                  else estimate_training(shape, setup).total) / GIB
    except Exception as err:  # noqa: BLE001 - an unknown architecture must not stop training
        log.info("memory plan skipped (%s)", err)
        return
    have = hw.memory_gib()
    if needed <= have:
        log.info("memory plan: about %.1f of %.1f GiB at the peak", needed, have)
        return
    advice = (f"memory plan: this run needs about {needed:.1f} GiB at the peak but {have:.1f} GiB is available. "
              f"See `tunesmith plan --model {cfg.model} --tuner {cfg.tuner} --max-length {cfg.max_length}` for "
              "settings that fit (smaller --batch-size with more --grad-accum, --gradient-checkpointing, qlora).")
    if cfg.strict_memory:
        raise HardwareError(advice + " Refusing to start (--strict-memory).")
    log.warning("%s Starting anyway; pass --strict-memory to refuse.", advice)


def rlhf(cfg: RLHFConfig, callbacks: list[Any] | None = None):
    """Preference alignment and RL (--method dpo, kto, orpo, simpo, cpo, rm, ppo, grpo) on a base model or an SFT run."""
    from tunesmith.train.rlhf import rlhf as run

    check_memory(cfg)
    return run(cfg, callbacks=callbacks)


def infer(cfg: InferConfig):
    """Batch answers to a JSONL when cfg.dataset is set (returns the output path), else a terminal chat."""
    from tunesmith.infer.cli_chat import infer as run

    return run(cfg)


def evaluate(cfg: EvalConfig):
    """`tunesmith eval`: answer a dataset with one or several models (base, adapters, endpoints) and score the answers
    (exact match, BLEU, ROUGE, multiple-choice accuracy). Returns an EvalResult (output_dir, scores per model).
    Named evaluate, not eval, so that `from tunesmith import *` leaves Python's eval alone."""
    from tunesmith.eval.run import evaluate as run

    return run(cfg)


def deploy(cfg: DeployConfig) -> None:
    """Serve the model and adapters over an OpenAI-compatible HTTP API until SIGTERM or Ctrl-C."""
    from tunesmith.serve.app import run

    run(cfg)


def export(cfg: ExportConfig):
    """Merge an adapter into its base and write a plain HF folder. Returns the folder."""
    from tunesmith.export.merge import export as run

    return run(cfg)


def data_check(cfg: DataCheckConfig):
    """Validate datasets and print a summary. Returns the report."""
    from tunesmith.train.check import check as run

    return run(cfg)


def plan(cfg: PlanConfig) -> dict:
    """Estimate peak memory from the model's config.json (never its weights), pick settings that fit, print the plan.
    Returns it as a dict (fits, recommended settings, breakdown in GiB)."""
    from tunesmith.plan.run import plan as run

    return run(cfg)


def download(cfg: DownloadConfig) -> str:
    """Fetch a hub model or dataset (or find it in the cache). Returns the local folder."""
    from tunesmith.data.registry import REGISTRY
    from tunesmith.hub import download as fetch
    from tunesmith.hub import download_modelscope
    from tunesmith.models.registry import MODELS

    repo, kind = cfg.repo, cfg.kind
    if repo in MODELS and MODELS[repo].hub_id:
        repo = MODELS[repo].hub_id
    elif repo in REGISTRY and REGISTRY[repo].hub_id:
        repo, kind = REGISTRY[repo].hub_id, "dataset"
    if cfg.hub == "modelscope":
        folder = download_modelscope(repo, kind=kind)
    else:
        folder = fetch(repo, kind=kind)
    print(folder)
    return folder
