"""Bare `tunesmith`: a menu that asks only for decisions, then runs ordinary commands and shows them.

Everything it does is a `tunesmith ...` command the user could type; it prints that command first and writes it
into the run folder (command.txt beside config.yaml), so the wizard teaches the CLI."""

from __future__ import annotations

import datetime
import shlex
import sys
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from tunesmith import api
from tunesmith.config import DEFAULT_MODEL, DataCheckConfig, ExportConfig, InferConfig, PlanConfig, SFTConfig, load
from tunesmith.errors import TunesmithError
from tunesmith.ui.chat import chat as terminal_chat

console = Console()
DURATIONS = {  # label -> max_steps (None = whole epochs)
    "quick: a few minutes (16 steps)": 16,
    "standard: 1 epoch": None,
    "thorough: 3 epochs": None,
}


def wizard() -> int:
    if not sys.stdin.isatty():
        console.print("The wizard needs a terminal. Without one, use the commands: `tunesmith --help`.")
        return 2
    import questionary

    hw = api.hardware()
    console.print(Panel(describe(hw), title="tunesmith: hardware found"))
    actions = {
        "Fine-tune a model on my data": fine_tune,
        "Align a finished run with preference pairs (DPO)": align,
        "Chat with a model or a finished run": chat,
        "Evaluate a finished run against its base model (BLEU, ROUGE, exact match)": evaluate,
        "Serve a model or a finished run (OpenAI API)": serve,
        "Merge an adapter into its base (export)": merge,
        "Download a model from the hub": download,
        "Open the web UI (everything above in a browser)": web_ui,
        "Quit": None,
    }
    while True:
        choice = questionary.select("What do you want to do?", choices=list(actions)).ask()
        if choice is None or actions[choice] is None:
            return 0
        try:
            actions[choice](hw)
        except TunesmithError as err:
            console.print(f"[red]error:[/red] {err}")
        except KeyboardInterrupt as err:  # Ctrl-C while an action runs (a training run names its checkpoint): say
            console.print(f"\n{str(err) or 'interrupted'}")  # so, no traceback, and back to the menu


def describe(hw) -> str:
    if hw.gpus:
        gpus = ", ".join(f"{g.name} ({g.free_gib:.0f}/{g.total_gib:.0f} GiB free)" for g in hw.gpus)
        where = f"GPU: {gpus}"
    else:
        where = "Apple MPS" if hw.mps else "no GPU: training runs on the CPU with the embedded small model"
    return f"{where}\nCPU cores: {hw.cpu_cores}   RAM: {hw.ram_gib:.0f} GiB   free disk: {hw.disk_free_gib:.0f} GiB"


def settings_for(hw, model: str, max_length: int, processes: int = 1) -> dict:
    """PRODUCT's rule picks the method (>= 24 GiB free -> LoRA, a smaller GPU -> QLoRA, MPS or CPU -> LoRA);
    `tunesmith plan` picks micro-batch, accumulation and checkpointing for a global batch of 8 over `processes` GPUs
    and says if it fits."""
    import contextlib
    import io

    free = max((g.free_gib for g in hw.gpus), default=0.0)
    method = "qlora" if hw.gpus and free < 24 else "lora"
    global_batch = 8 if hw.gpus else 4  # a CPU run stays short
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = api.plan(load(PlanConfig, ["--model", model, "--tuner", method, "--max-length", str(max_length),
                                            "--global-batch", str(max(global_batch, processes)),
                                            "--nproc-per-node", str(processes)]))
    chosen = result["recommended"]["settings"]
    return {"method": chosen["method"], "batch_size": chosen["batch_size"], "grad_accum": chosen["grad_accum"],
            "gradient_checkpointing": chosen["gradient_checkpointing"], "fits": result["fits"],
            "message": result["message"]}


def fine_tune(hw) -> None:
    import questionary

    suggested = api.models() if hw.gpus else [DEFAULT_MODEL]
    model = questionary.select("Which model?", choices=suggested + ["another (hub id or folder)"], default=DEFAULT_MODEL).ask()
    if model is None:
        return
    if model.startswith("another"):
        model = questionary.text("Hub id or local folder:").ask()
    data = questionary.select("Which data?", choices=["prd-assistant (shipped: PRD writer, EN + ZH)",
                                                      "self-cognition (shipped: who-am-I answers)", "my own file"]).ask()
    if data is None:
        return
    dataset = questionary.path("Path to a JSONL/JSON/CSV/Parquet file:").ask() if data == "my own file" else data.split()[0]
    # stops here, naming file:line, when rows are bad; with the chosen model's tokenizer it also shows the rows'
    # token lengths and what share of them trains
    api.data_check(load(DataCheckConfig, ["check", dataset, "--model", model, "--kind", "sft"]))
    duration = questionary.select("How long?", choices=list(DURATIONS)).ask()
    if duration is None:
        return
    max_length = 640 if DURATIONS[duration] is not None else 2048
    processes = 1
    if len(hw.gpus) > 1 and questionary.confirm(f"Train on all {len(hw.gpus)} GPUs (one process each, data parallel)?",
                                                default=True).ask():
        processes = len(hw.gpus)
    settings = settings_for(hw, model, max_length, processes)
    console.print(f"[bold]plan:[/bold] {settings['message']}")
    if not settings["fits"] and not questionary.confirm("The plan says this will not fit. Start anyway?", default=False).ask():
        return
    output_dir = f"runs/wizard-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    args = ["--model", model, "--dataset", dataset, "--tuner", settings["method"], "--batch-size",
            str(settings["batch_size"]), "--grad-accum", str(settings["grad_accum"]), "--max-length", str(max_length),
            "--output-dir", output_dir] + (["--nproc-per-node", str(processes)] if processes > 1 else [])
    if settings["gradient_checkpointing"]:  # true, or offload where only offloaded checkpointing fits
        args += ["--gradient-checkpointing", str(settings["gradient_checkpointing"]).lower()]
    if DURATIONS[duration] is not None:
        args += ["--max-steps", str(DURATIONS[duration]), "--learning-rate", "1e-3"]
    else:
        args += ["--epochs", "1" if duration.startswith("standard") else "3"]
    run_shown(["sft", *args], lambda: api.sft(load(SFTConfig, args)), Path(output_dir))
    final = Path(output_dir) / "final"
    console.print(f"[green]Done.[/green] The tuned adapter is in {final}")
    after_training(final)


def after_training(final: Path) -> None:
    import questionary

    while True:
        nxt = questionary.select("Next?", choices=["Chat with it", "Merge it into the base model", "Done"]).ask()
        if nxt in (None, "Done"):
            return
        if nxt.startswith("Chat"):
            start_chat(["--adapters", str(final)])
        else:
            run_shown(["export", "--adapters", str(final)],
                      lambda: api.export(load(ExportConfig, ["--adapters", str(final)])))


def chat(hw) -> None:
    import questionary

    runs = sorted(str(p) for p in Path("runs").glob("*/final")) if Path("runs").is_dir() else []
    target = questionary.select("Chat with:", choices=runs + [DEFAULT_MODEL]).ask()
    if target:
        start_chat(["--adapters", target] if target.endswith("final") else ["--model", target])


def start_chat(args: list[str]) -> None:
    run_shown(["infer", *args], lambda: terminal_chat(load(InferConfig, args)))


def pick_run(prompt: str, adapters_only: bool = False) -> str | None:
    import questionary

    runs = sorted(str(p) for p in Path("runs").glob("*/final")
                  if not adapters_only or (p / "adapter_config.json").exists()) if Path("runs").is_dir() else []
    if not runs:
        console.print("No finished runs in runs/ yet: fine-tune first.")
        return None
    return questionary.select(prompt, choices=runs).ask()


def align(hw) -> None:
    import questionary

    from tunesmith.config.rlhf import RLHFConfig

    target = pick_run("Which SFT run?", adapters_only=True)
    if not target:
        return
    pairs = questionary.path("Preference pairs (prompt/chosen/rejected JSONL):",
                             default="examples/prd-assistant/dpo_pairs.jsonl").ask()
    if not pairs:
        return
    api.data_check(load(DataCheckConfig, ["check", pairs, "--kind", "preference"]))
    output_dir = f"runs/wizard-dpo-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    args = ["--method", "dpo", "--adapters", target, "--dataset", pairs, "--max-steps", "20", "--output-dir", output_dir]
    run_shown(["rlhf", *args], lambda: api.rlhf(load(RLHFConfig, args)), Path(output_dir))
    after_training(Path(output_dir) / "final")


# The shipped held-out prompts (examples/prd-assistant/eval_prompts.jsonl) carry no reference answers, so the
# wizard scores the last rows of the shipped dataset. A run trained on prd-assistant may have seen them.
PRD_TAIL = ("prd-assistant", 8)


def evaluate(hw) -> None:
    import questionary

    from tunesmith.config.eval import EvalConfig

    runs = sorted(str(p) for p in Path("runs").glob("*/final")) if Path("runs").is_dir() else []
    target = questionary.select("Evaluate (a run is compared with its base model):", choices=runs + [DEFAULT_MODEL]).ask()
    if not target:
        return
    name, rows = PRD_TAIL
    data = questionary.select("On which data?", choices=[
        f"{name}: its last {rows} rows (shipped PRD examples; a run trained on them may have seen these)",
        "my own file (rows whose last assistant turn is the reference answer)"]).ask()
    if data is None:
        return
    if data.startswith("my own"):
        dataset = questionary.path("Path to a JSONL/JSON/CSV/Parquet file:").ask()
        if not dataset:
            return
        limit = []
    else:
        dataset, limit = name, ["--limit", str(-rows)]
    budget = api.answer_budget(dataset, int(limit[1]) if limit else None, target)  # bad rows stop here, as file:line
    if target.endswith("final"):
        models = ["--compare", f"base={api.base_model(target)}", f"tuned={target}"]
    else:
        models = ["--model", target]
    output_dir = f"runs/eval-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    args = [*models, "--dataset", dataset, *limit, "--generation.max-tokens", str(budget), "--output-dir", output_dir]
    run_shown(["eval", *args], lambda: api.evaluate(load(EvalConfig, args)), Path(output_dir))
    console.print(f"[green]Done.[/green] Scores, every answer and a chart: {output_dir}/results.json, answers.jsonl, scores.png")


def serve(hw) -> None:
    import questionary

    from tunesmith.config import DeployConfig

    runs = sorted(str(p) for p in Path("runs").glob("*/final")) if Path("runs").is_dir() else []
    target = questionary.select("Serve:", choices=runs + [DEFAULT_MODEL]).ask()
    if not target:
        return
    args = ["--adapters", target] if target.endswith("final") else ["--model", target]
    console.print("Stop the server with Ctrl-C.")
    run_shown(["deploy", *args], lambda: api.deploy(load(DeployConfig, args)))


def merge(hw) -> None:
    import questionary

    runs = sorted(str(p) for p in Path("runs").glob("*/final") if (p / "adapter_config.json").exists())
    if not runs:
        console.print("No adapter runs in runs/ yet: fine-tune first.")
        return
    target = questionary.select("Which run?", choices=runs).ask()
    if target:
        args = ["--adapters", target]
        run_shown(["export", *args], lambda: api.export(load(ExportConfig, args)))


def download(hw) -> None:
    import questionary

    from tunesmith.config import DownloadConfig

    repo = questionary.text("Hub id (org/name):").ask()
    if repo:
        run_shown(["download", repo], lambda: api.download(load(DownloadConfig, [repo])))


def web_ui(hw) -> None:
    from tunesmith.config.webui import WebUIConfig

    console.print("The web UI runs until Ctrl-C; open http://127.0.0.1:7860 in a browser.")
    run_shown(["web-ui"], lambda: api.web_ui(load(WebUIConfig, [])))


def run_shown(argv: list[str], action, run_dir: Path | None = None) -> None:
    """Print the equivalent command, run it, and keep the command in the run folder."""
    command = "tunesmith " + shlex.join(argv)
    console.print(f"\n[bold]$ {command}[/bold]")
    action()
    if run_dir is not None and run_dir.is_dir():
        (run_dir / "command.txt").write_text(command + "\n", encoding="utf-8")
