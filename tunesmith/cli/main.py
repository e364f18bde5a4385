"""`tunesmith <command>`: parse flags and -c file into the command's config, call one api function.

Parsing happens once, in this process (no re-exec), so `--help` and every typo answer fast."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

from tunesmith import api
from tunesmith.config import PlanConfig
from tunesmith.config import DataCheckConfig, DeployConfig, DownloadConfig, ExportConfig, InferConfig, PTConfig, SFTConfig, help_text, load
from tunesmith.config.bench import BenchServeConfig
from tunesmith.config.data import DataCleanConfig, DataInspectConfig
from tunesmith.config.doctor import CheckConfig, DoctorConfig
from tunesmith.config.eval import EvalConfig
from tunesmith.config.models import ModelsConfig
from tunesmith.config.webui import WebUIConfig
from tunesmith.config.rlhf import RLHFConfig
from tunesmith.errors import TunesmithError
from tunesmith.models.load import classifier_architecture

STOPPED_EXIT = 143  # 128 + SIGTERM, the status a process killed by SIGTERM reports


def infer(cfg: InferConfig):
    """`tunesmith infer`: answers a dataset with --dataset (api.infer), else a chat in the terminal."""
    if cfg.dataset:
        return api.infer(cfg)
    from tunesmith.ui.chat import chat

    return chat(cfg)


COMMANDS = {
    "sft": (SFTConfig, api.sft, "supervised fine-tuning (lora, qlora, dora, full)"),
    "pt": (PTConfig, api.pt, "continued pretraining on raw text"),
    "rlhf": (RLHFConfig, api.rlhf, "alignment and RL: --method dpo|kto|orpo|simpo|cpo|rm|ppo|grpo"),
    "infer": (InferConfig, infer, "chat in the terminal, or answer a dataset into JSONL"),
    "eval": (EvalConfig, api.evaluate, "score models side by side: BLEU, ROUGE, BERTScore, accuracy, LLM judge, review, benchmarks"),
    "deploy": (DeployConfig, api.deploy, "serve models and adapters over an OpenAI-compatible API"),
    "export": (ExportConfig, api.export, "merge an adapter, quantize (bnb, GPTQ, AWQ, FP8), GGUF/Ollama, with a report"),
    "data": (DataCheckConfig, api.data_check, "data check|inspect|clean: validate, show trained tokens, dedupe and redact"),
    "plan": (PlanConfig, api.plan, "memory plan: will it fit, and with which settings"),
    "models": (ModelsConfig, lambda cfg: (api.model_families(cfg), 0)[1],
               "the registered model families and what is proven for each"),
    "download": (DownloadConfig, api.download, "fetch a model or dataset from the Hugging Face hub or ModelScope"),
    "doctor": (DoctorConfig, lambda cfg: 1 if api.doctor(cfg).broken else 0,
               "this environment against the tested versions, each problem with its fix"),
    "web-ui": (WebUIConfig, api.web_ui, "the whole lifecycle in a browser; jobs outlive the page"),
    "check": (CheckConfig, lambda cfg: 0 if all(r.ok for r in api.check(cfg)) else 1,
              "self-checks of training on this machine: batch x accumulation, packing, resume, merge, bf16, template"),
    "bench": (BenchServeConfig, api.bench_serve, "bench serve: load-test OpenAI-compatible endpoints side by side"),
}


# `tunesmith data ACTION` and `tunesmith bench ACTION`: one config per action (the action is the first positional)
ACTIONS = {
    "data": {
        "check": (DataCheckConfig, api.data_check, "validate every row and summarise the data"),
        "inspect": (DataInspectConfig, api.data_inspect, "rows as training sees them: loss weights, cut, end of turn"),
        "clean": (DataCleanConfig, api.data_clean,
                  "IN OUT: remove duplicates, empty and garbage rows; mask personal data"),
    },
    "bench": {
        "serve": (BenchServeConfig, api.bench_serve, "load-test OpenAI-compatible endpoints: tokens/s, latency, TTFT"),
    },
}


def usage() -> str:
    rows = ["usage: tunesmith <command> [-c config.yaml] [--option value ...]", "", "commands:"]
    rows += [f"  {name:8} {about}" for name, (_, _, about) in COMMANDS.items()]
    rows += ["", "options:", f"  {'--version':12} print tunesmith's version and exit", f"  {'-h, --help':12} this list",
             "", "`tunesmith <command> --help` lists every option with its default."]
    return "\n".join(rows)


def version() -> str:
    """`tunesmith X.Y.Z`: the installed distribution's version (what pip and bug reports name)."""
    from importlib import metadata

    try:
        return f"tunesmith {metadata.version('tunesmith')}"
    except metadata.PackageNotFoundError:  # a source tree run without installing
        from tunesmith import __version__

        return f"tunesmith {__version__}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("tunesmith").setLevel(logging.INFO)
    quiet_known_noise()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv:
        from tunesmith.ui.wizard import wizard

        return wizard()
    if argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(version())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        near = difflib.get_close_matches(name, COMMANDS, n=1)
        print(f"error: unknown command {name!r}" + (f"; did you mean {near[0]}?" if near else "") + "\n\n" + usage(),
              file=sys.stderr)
        return 2
    cfg_cls, run, _ = COMMANDS[name]
    if name in ACTIONS:
        if rest[:1] in ([], ["-h"], ["--help"]) or rest[0] not in ACTIONS[name]:
            return _actions_usage(name, rest)
        cfg_cls, run, _ = ACTIONS[name][rest[0]]
        name = f"{name} {rest[0]}"
    if "-h" in rest or "--help" in rest:
        print(help_text(cfg_cls, f"tunesmith {name}"))
        return 0
    try:
        cfg = load(cfg_cls, rest)
        status = run(cfg)
    except TunesmithError as err:  # exit code 0: nothing to do, said why (a resume of a finished run)
        print(f"error: {err}" if err.exit_code else str(err), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:  # Ctrl-C; in training, the message names the checkpoint (train/callbacks.py)
        print(f"\n{str(err) or 'interrupted'}", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - turn known library failures into advice, re-raise the rest
        advice = _advice(err)
        if advice is None:
            raise
        print(f"error: {advice}", file=sys.stderr)
        return 1
    if hasattr(status, "final_dir"):  # a training command's RunResult: the run folder may be a generated name
        print(finished(status))
        if status.stopped:
            return STOPPED_EXIT  # saved, but not the run asked for: a pipeline or scheduler must not take it as done
    return status if isinstance(status, int) else 0  # a command may answer with its exit code (doctor, check)


def finished(result) -> str:
    """The last line of a training command: where the model is, how the loss went, and how to use it."""
    loss = ""
    if result.first_loss is not None and result.last_loss is not None:
        loss = f", loss {result.first_loss:.4f} -> {result.last_loss:.4f}"
    skipped = f", {result.skipped_rows} bad row(s) skipped" if result.skipped_rows else ""
    if result.stopped:
        return (f"stopped by SIGTERM after {result.steps} steps{loss}{skipped}: saved {result.final_dir} and a "
                f"checkpoint; run the same command with --resume to continue")
    final = shlex.quote(str(result.final_dir))  # pasted into a shell: a run folder may hold spaces
    if classifier_architecture(result.final_dir):  # rm: it scores answers, it does not write them
        return (f"saved {result.final_dir} ({result.steps} steps{loss}{skipped}); use it as --rewards.model "
                f"{final} in tunesmith rlhf --method grpo or ppo")
    whole = (Path(result.final_dir) / "config.json").is_file() and not (
        Path(result.final_dir) / "adapter_config.json").is_file()  # full weights (and merged runs): a model itself
    return (f"saved {result.final_dir} ({result.steps} steps{loss}{skipped}); use it with "
            f"{'--model' if whole else '--adapters'} {final} in tunesmith infer, eval, export or deploy")


def _actions_usage(command: str, rest: list[str]) -> int:
    rows = [f"usage: tunesmith {command} <action> {'FILE ' if command == 'data' else ''}[--option value ...]", "",
            "actions:"]
    rows += [f"  {name:8} {about}" for name, (_, _, about) in ACTIONS[command].items()]
    rows += ["", f"`tunesmith {command} <action> --help` lists every option with its default."]
    if rest and rest[0] not in ("-h", "--help"):
        print(f"error: unknown {command} action {rest[0]!r}\n\n" + "\n".join(rows), file=sys.stderr)
        return 2
    print("\n".join(rows), file=sys.stderr if not rest else sys.stdout)
    return 2 if not rest else 0


def quiet_known_noise() -> None:
    """Messages every run on a CPU printed that no user can act on; exactly these, never all warnings: bitsandbytes'
    CPU backend looks for an optional hub kernel (the `kernels` package) on AVX-512 machines and says it failed (its
    own fallback runs, as intended); TRL 1.16 reads transformers' deprecated `is_gradient_checkpointing` in its
    trainers (trl/models/utils.py), which transformers 5 answers with a FutureWarning; DeepSpeed, when installed,
    announces on stdout that a machine without a GPU is a CPU (and would spoil --json output)."""
    import warnings

    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        lambda record: not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward from kernels-community"))
    logging.getLogger("DeepSpeed").addFilter(
        lambda record: not record.getMessage().startswith("Setting accelerator to CPU."))


def _advice(err: Exception) -> str | None:
    text = f"{type(err).__name__}: {err}"
    if "out of memory" in text.lower() or type(err).__name__ == "OutOfMemoryError":
        return (f"out of memory ({text.splitlines()[0][:200]}). Lower --batch-size (raise --grad-accum to keep the "
                "same effective batch), lower --max-length, turn on --gradient-checkpointing, or use --tuner qlora.")
    return None


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
