"""The Python API: one function per command, each taking that command's config.

    from tunesmith import SFTConfig, sft
    result = sft(SFTConfig(model="smollm2-135m-instruct", dataset=["prd-assistant"]))

The CLI and the web UI call exactly these functions. Heavy libraries load inside them, not at import.
"""

from __future__ import annotations

import logging
from typing import Any

from tunesmith.config.eval import EvalConfig
from tunesmith.config.rlhf import RLHFConfig
from tunesmith.config import PlanConfig
from tunesmith.config import DataCheckConfig, DeployConfig, DownloadConfig, ExportConfig, InferConfig, PTConfig, SFTConfig

log = logging.getLogger("tunesmith")


def sft(cfg: SFTConfig, callbacks: list[Any] | None = None):
    """Supervised fine-tuning. Returns a RunResult (run_dir, final_dir, losses). With --nproc-per-node > 1 (or
    --nnodes > 1) it starts the ranks through torchrun (train/launch.py); `callbacks` then stay in this process.
    --task embedding, reranker or classification trains that kind of model instead (train/embedding.py, ...)."""
    from tunesmith.train import launch
    from tunesmith.train.sft import sft as run

    if cfg.task != "causal-lm":  # --task embedding | reranker | classification: sentence-transformers / transformers
        return _encoder_recipe(cfg.task)(cfg, callbacks=callbacks)
    return launch.launch(cfg) if launch.needs_launch(cfg) else run(cfg, callbacks=callbacks)


def _encoder_recipe(task: str):
    if task == "embedding":
        from tunesmith.train.embedding import train_embedding as recipe
    elif task == "reranker":
        from tunesmith.train.reranker import train_reranker as recipe
    else:
        from tunesmith.train.classifier import train_classifier as recipe
    return recipe


def pt(cfg: PTConfig, callbacks: list[Any] | None = None):
    """Continued pretraining on raw text."""
    from tunesmith.train import launch
    from tunesmith.train.pt import pt as run

    return launch.launch(cfg) if launch.needs_launch(cfg) else run(cfg, callbacks=callbacks)


def rlhf(cfg: RLHFConfig, callbacks: list[Any] | None = None):
    """Preference alignment and RL (--method dpo, kto, orpo, simpo, cpo, rm, ppo, grpo) on a base model or an SFT run."""
    from tunesmith.train import launch
    from tunesmith.train.rlhf import rlhf as run

    return launch.launch(cfg) if launch.needs_launch(cfg) else run(cfg, callbacks=callbacks)


def infer(cfg: InferConfig):
    """Answer cfg.dataset into a JSONL (cfg.output, default <dataset>.answers.jsonl); returns its path. The terminal
    chat of `tunesmith infer` without --dataset is the CLI's (ui/chat.py), on engine() below."""
    from tunesmith.infer.batch import infer as run

    return run(cfg)


def engine(cfg: InferConfig):
    """The Engine an infer config names (base, adapter, saved template), for chats and scripts:
    `engine(cfg).chat([messages], sampling_params(cfg))`. Call .shutdown() when done."""
    from tunesmith.infer.batch import engine_for

    return engine_for(cfg)


def sampling_params(cfg: InferConfig):
    """The generation settings of an infer config as the engines take them (OpenAI's names)."""
    from tunesmith.infer.batch import sampling_params as params

    return params(cfg)


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
    """Merge an adapter into its base, quantize, or write GGUF/Ollama; every export writes lineage.json and export_report.json
    (perplexity and greedy agreement before/after, sizes). Returns the exported folder (with --inspect: that folder,
    after printing its lineage)."""
    from tunesmith.export.run import export as run

    return run(cfg)


def data_check(cfg: DataCheckConfig):
    """Validate datasets and print a summary. Returns the report."""
    from tunesmith.train.check import check as run

    return run(cfg)


def data_inspect(cfg):
    """`tunesmith data inspect`: rows as sft trains on them (each token's loss weight, the cut at max_length, the
    end-of-turn token), in the terminal and as inspect.html. Returns the report; refuses (DataError) a dataset in
    which no answer trains an end-of-turn token."""
    from tunesmith.train.inspect_rows import inspect as run

    return run(cfg)


def data_clean(cfg):
    """`tunesmith data clean IN OUT`: duplicates, empty, garbage and malformed rows removed, personal data masked;
    writes OUT and OUT.report.json. Returns the report (a dict)."""
    from tunesmith.data.clean_file import clean as run

    return run(cfg)


def bench_serve(cfg) -> dict:
    """`tunesmith bench serve`: load-test OpenAI-compatible endpoints side by side (serve/loadtest.py); per endpoint
    and concurrency, its throughput and latencies."""
    from tunesmith.serve.loadtest import run

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
    if repo in MODELS and MODELS[repo].hub_id is None:  # embedded (smollm2-135m-instruct): no hub copy to fetch
        from tunesmith.models.embedded import prepared_folder

        log.info("%s is embedded in tunesmith: nothing to download; every command takes it by name (--model %s). "
                 "Registry: %s Its folder here:", repo, repo, MODELS[repo].description)
        folder = str(prepared_folder(repo))  # converted once into the cache, as its first use would
        print(folder)
        return folder
    if repo in REGISTRY and REGISTRY[repo].path is not None:
        log.info("%s ships with tunesmith: nothing to download; every command takes it by name (--dataset %s). Its "
                 "file here:", repo, repo)
        print(REGISTRY[repo].path)
        return str(REGISTRY[repo].path)
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


# -----------------------------------------------------------------------------
# What the wizard and the web UI ask about before they build a config


def hardware():
    """The accelerators, cores, memory and disk of this machine (plan/hardware.py's Hardware)."""
    from tunesmith.plan.hardware import probe

    return probe()


def models() -> list[str]:
    """The registry's chat model names, the embedded default first."""
    from tunesmith.config import DEFAULT_MODEL
    from tunesmith.models.registry import MODELS

    return [DEFAULT_MODEL, *[name for name, e in MODELS.items() if name != DEFAULT_MODEL and e.task == "causal-lm"]]


def model_families(cfg) -> list[dict]:
    """`tunesmith models`: the registered families and what is proven for each (models/families.py)."""
    from tunesmith.models.table import show

    return show(cfg)


def base_model(run_folder: str) -> str:
    """The base model a run trained from (runs/NAME/final)."""
    from tunesmith.models.runs import read_run_output

    return read_run_output(run_folder).base_model


def answer_budget(dataset: str, limit: int | None, model: str) -> int:
    """max_tokens with room for the longest reference answer of the dataset's rows (see eval/samples.py)."""
    from tunesmith.eval.samples import answer_budget as budget

    return budget(dataset, limit, model)


def doctor(cfg):
    """`tunesmith doctor`: the environment against the tested versions; returns the Report (report.broken)."""
    from tunesmith.doctor import doctor as run

    return run(cfg)


def check(cfg):
    """`tunesmith check`: self-checks of training on this machine (batch x accumulation, packing, resume, merge
    parity, bf16 drift, template parity); returns the results (each .ok)."""
    from tunesmith.selfcheck import check as run

    return run(cfg)


def web_ui(cfg):
    """`tunesmith web-ui`: the Gradio UI until Ctrl-C (ui/web/app.py)."""
    from tunesmith.ui.web.app import run

    run(cfg)
