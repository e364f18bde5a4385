"""`tunesmith check`: what a user runs on their own machine and versions, in about a minute, before trusting a run.

    tunesmith check [--model M] [--json]      # a table, pass/fail, exit 1 when a check fails

Each check trains or runs a tiny random model of the model's own family (its config with 2 layers and hidden 64, its
real tokenizer and chat template) through tunesmith's real code paths, and compares two ways of doing the same
thing that must agree:
  batch x accumulation   one step of batch 8 x 1 equals batch 2 x 4: the same loss and the same weights after it
                         (a loss averaged per micro-batch instead of per token breaks it: TRL #3910, axolotl #3077)
  packing                a padding-free packed batch gives every sample the loss it has alone
  resume                 4 steps straight equal 2 steps, a stop, and --resume to 4
  merge parity           the merged model's logits equal the adapter model's (the adapter batch x accumulation
                         trained: one step at batch 8)
  bf16 drift             bf16 logits stay within 5 % of fp32 and pick the same greedy token
  template parity        for the model's own template: the prompt part of each training row is exactly what infer
                         and deploy send, and the trained tokens are each answer and its end-of-turn token
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from tunesmith.config.doctor import CheckConfig

log = logging.getLogger("tunesmith")
TOLERANCE = {"weights": 1e-5, "update": 1e-3, "loss": 1e-5, "logits": 1e-4, "bf16": 0.05}
CONVERSATION = [{"role": "system", "content": "You count."},
                {"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "1 2 3"},
                {"role": "user", "content": "And to five?"}, {"role": "assistant", "content": "1 2 3 4 5"},
                {"role": "user", "content": "Backwards from two."}, {"role": "assistant", "content": "2 1"}]


@dataclass
class Result:
    name: str
    ok: bool
    measured: str
    seconds: float


def check(cfg: CheckConfig) -> list[Result]:
    from tunesmith.config import DEFAULT_MODEL
    from tunesmith.models.load import load_tokenizer, resolve
    from tunesmith.templates import Template

    folder = resolve(cfg.model or DEFAULT_MODEL)
    work = Path(tempfile.mkdtemp(prefix="tunesmith-check-"))
    try:
        with _long_lived_imports_frozen():
            tiny = tiny_model_like(folder, work / "model")
            data = _data(work / "rows.jsonl")
            template = Template(load_tokenizer(folder))
            checks: list[tuple[str, Callable[[], tuple[bool, str]]]] = [
                ("batch x accumulation", lambda: batch_times_accumulation(tiny, data, work)),
                ("packing", lambda: packing(tiny, template)),
                ("resume", lambda: resume(tiny, data, work)),
                # the adapter batch x accumulation trained, when it did (else merge_parity trains the same one)
                ("merge parity", lambda: merge_parity(tiny, data, work, adapters=work / "bs8" / "final")),
                ("bf16 drift", lambda: bf16_drift(tiny, template)),
                ("template parity", lambda: template_parity(template)),
            ]
            results = [_timed(name, fn) for name, fn in checks]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _print(results, cfg.json)
    return results


@contextmanager
def _long_lived_imports_frozen() -> Iterator[None]:
    """The modules the checks use imported first and moved out of the garbage collector's way (gc.freeze): each
    training run ends in accelerate's gc.collect(), which otherwise walks every object of torch, transformers, TRL
    and PEFT again (~0.5 s a run on a busy 2-core machine); objects the checks make are still collected."""
    import importlib

    for module in ("peft", "trl", "tunesmith.train.sft", "tunesmith.export.run"):
        try:
            importlib.import_module(module)
        except ImportError:  # the checks that need it say so
            pass
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _timed(name: str, fn: Callable[[], tuple[bool, str]]) -> Result:
    started = time.perf_counter()
    try:
        ok, measured = fn()
    except Exception as err:  # noqa: BLE001 - a check that cannot run has failed, and says why
        ok, measured = False, f"could not run: {type(err).__name__}: {err}"
    return Result(name, ok, measured, round(time.perf_counter() - started, 1))


# -----------------------------------------------------------------------------
# A tiny model of the family, and rows to train on


def tiny_model_like(folder: Path, out: Path) -> Path:
    """The model's own config with 2 layers and hidden 64 (head_dim 32), random weights, its tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(folder)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name, value in (("num_hidden_layers", 2), ("hidden_size", 64), ("intermediate_size", 128),
                        ("num_attention_heads", 2), ("num_key_value_heads", 1), ("head_dim", 32)):
        if hasattr(text, name):
            setattr(text, name, value)
    for name in ("quantization_config", "layer_types"):  # a GGUF-converted or hybrid model: plain dense layers here
        if hasattr(config, name):
            delattr(config, name)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder).save_pretrained(out)
    return out


def _data(path: Path) -> Path:
    """16 conversations of different lengths, so micro-batches hold different numbers of trained tokens."""
    rows = [{"messages": [{"role": "user", "content": f"Count to {n}."},
                          {"role": "assistant", "content": " ".join(str(i) for i in range(1, n + 1))}]}
            for n in range(1, 17)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def _sft(model: Path, data: Path, out: Path, callbacks: list[Any] | None = None, **fields: Any):
    from tunesmith.config import SFTConfig
    from tunesmith.train.sft import sft

    cfg = SFTConfig(model=str(model), dataset=[str(data)], output_dir=str(out), report_to=["none"], device="cpu",
                    learning_rate=1e-3, lr_scheduler="constant", warmup_ratio=0.0, logging_steps=1, seed=7,
                    **{"max_steps": 1, "batch_size": 8, **fields})
    with _no_loss_plot():
        return sft(cfg, callbacks=callbacks)


@contextmanager
def _no_loss_plot() -> Iterator[None]:
    """The checks' runs draw no loss.png (train/callbacks.py LossPlot): nobody sees it, and matplotlib costs about a
    second a run; everything else about the run (metrics, checkpoints, final/) is as a user's run has it."""
    from tunesmith.train import callbacks

    draw = callbacks.plot_loss
    callbacks.plot_loss = lambda run_dir: None
    try:
        yield
    finally:
        callbacks.plot_loss = draw


def _adapter(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# -----------------------------------------------------------------------------
# The checks: each returns (ok, what was measured)


def batch_times_accumulation(model: Path, data: Path, work: Path) -> tuple[bool, str]:
    """The logged loss must be equal, and so must the update: ||delta_a - delta_b|| / ||delta_a|| (the adapter's B
    starts at zero, so its weights after one step are the update; Adam's per-weight noise on near-zero gradients
    stays far below the tolerance in norm)."""
    import torch

    one = _sft(model, data, work / "bs8", batch_size=8, grad_accum=1)
    four = _sft(model, data, work / "bs2ga4", batch_size=2, grad_accum=4)
    a, b = _adapter(one.final_dir), _adapter(four.final_dir)
    updates = [k for k in a if "lora_B" in k]
    change = float(torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in updates) / sum((a[k] ** 2).sum() for k in updates)))
    loss = abs(one.first_loss - four.first_loss) / abs(one.first_loss)
    ok = change < TOLERANCE["update"] and loss < TOLERANCE["loss"]
    return ok, f"loss {one.first_loss:.6f} vs {four.first_loss:.6f}; updates differ by {change:.1e} (relative)"


def packing(model: Path, template: Any) -> tuple[bool, str]:
    """Per-sample losses of a padding-free packed batch (TRL's collator, as training packs) against each alone."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    net = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    rows = [template.render([{"role": "user", "content": f"Count to {n}."},
                             {"role": "assistant", "content": " ".join(str(i) for i in range(1, n + 1))}])
            for n in (3, 9, 5)]
    batch = DataCollatorForLanguageModeling(pad_token_id=template.tokenizer.pad_token_id, padding_free=True)(
        [{"input_ids": ids, "labels": labels} for ids, labels in rows])
    with torch.no_grad():
        packed = net(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0]
        worst, start = 0.0, 0
        for ids, _ in rows:
            alone = net(input_ids=torch.tensor([ids])).logits[0]
            worst = max(worst, float((packed[start:start + len(ids)] - alone).abs().max()))
            start += len(ids)
    return worst < TOLERANCE["logits"], f"max logit difference packed vs alone {worst:.1e}"


def resume(model: Path, data: Path, work: Path) -> tuple[bool, str]:
    from transformers import TrainerCallback

    class StopAt2(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                control.should_save, control.should_training_stop = True, True

    fields = dict(max_steps=4, batch_size=4, save_steps=2)
    straight = _sft(model, data, work / "straight", **fields)
    _sft(model, data, work / "resumed", callbacks=[StopAt2()], **fields)
    resumed = _sft(model, data, work / "resumed", resume=True, **fields)
    diff = _max_diff(_adapter(straight.final_dir), _adapter(resumed.final_dir))
    return diff < TOLERANCE["weights"], f"max weight difference straight vs resumed {diff:.1e}"


def merge_parity(model: Path, data: Path, work: Path, adapters: Path | None = None) -> tuple[bool, str]:
    """`tunesmith export` merges `adapters` (one step at batch 8, as batch x accumulation trains them; trained here
    when not given or not there) and the merged model's logits must equal the adapter model's. The export's own
    before/after report is kept to its smallest (16 tokens, no greedy prompts): this check measures the logits."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunesmith.config import ExportConfig
    from tunesmith.export.run import export

    if adapters is None or not (adapters / "adapter_model.safetensors").exists():
        adapters = _sft(model, data, work / "merge", batch_size=8, grad_accum=1).final_dir
    merged_dir = export(ExportConfig(adapters=str(adapters), output=str(work / "merged"), verify=False,
                                     eval_tokens=16, greedy_prompts=0))
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), str(adapters))
        merged = AutoModelForCausalLM.from_pretrained(merged_dir)
        diff = float((adapter(input_ids=ids).logits - merged(input_ids=ids).logits).abs().max())
    return diff < TOLERANCE["logits"], f"max logit difference merged vs adapter {diff:.1e}"


def to_bf16(model: Any) -> Any:
    import torch

    return model.to(torch.bfloat16)


def bf16_drift(model: Path, template: Any) -> tuple[bool, str]:
    import torch
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([template.render(CONVERSATION)[0]])
    with torch.no_grad():
        full = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()(input_ids=ids).logits[0]
        half = to_bf16(AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval())(input_ids=ids).logits[0]
    drift = float((half.float() - full).abs().max() / full.abs().max())
    same = float((half.argmax(-1) == full.argmax(-1)).float().mean())
    return drift < TOLERANCE["bf16"] and same >= 0.9, f"max relative drift {drift:.2%}, same greedy token {same:.0%}"


def template_parity(template: Any) -> tuple[bool, str]:
    """Every assistant turn: its prompt part is exactly render_prompt of the turns before it, and what trains is the
    answer plus the end-of-turn token; for templates that rewrite past turns (Qwen3's reasoning), per turn sample."""
    from tunesmith.errors import TemplateError
    from tunesmith.templates import IGNORE

    answers = [i for i, m in enumerate(CONVERSATION) if m["role"] == "assistant"]
    try:
        samples = template.render_samples(CONVERSATION)
    except TemplateError as err:  # the renderer itself refuses what it cannot train exactly
        return False, str(err)
    # one sequence holds every turn; otherwise sample k holds turn k, rendered as it was served
    groups = [(samples[0], answers)] if len(samples) == 1 else list(zip(samples, [[t] for t in answers]))
    problems = []
    for (ids, labels), turns in groups:
        for turn in turns:
            prompt = template.render_prompt(CONVERSATION[:turn])
            if ids[: len(prompt)] != prompt:
                problems.append(f"turn {turn}: the training ids do not start with the served prompt")
        trained = [i for i, label in zip(ids, labels) if label != IGNORE]
        if trained != [t for turn in turns for t in _answer(template, turn)]:
            problems.append(f"turn {turns[-1]}: the trained tokens are not exactly the answer and its end-of-turn")
    shape = "one sequence" if len(samples) == 1 else f"{len(samples)} per-turn samples"
    return not problems, "; ".join(problems) or f"{len(answers)} turns ({shape}): prompts and trained tokens exact"


def _answer(template: Any, turn: int) -> list[int]:
    """The ids a turn's answer renders to, end-of-turn token included: the conversation up to it, less its prompt."""
    from tunesmith.templates import IGNORE

    ids, labels = template.render_samples(CONVERSATION[: turn + 1], loss_on="last")[-1]
    return [i for i, label in zip(ids, labels) if label != IGNORE]


# -----------------------------------------------------------------------------
# Output


def _print(results: list[Result], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"ok": all(r.ok for r in results), "checks": [asdict(r) for r in results]}, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="tunesmith check")
    for column in ("check", "", "measured", "s"):
        table.add_column(column, overflow="fold")
    for r in results:
        table.add_row(r.name, "[green]pass[/green]" if r.ok else "[red]FAIL[/red]", escape(r.measured), f"{r.seconds:g}")
    Console().print(table)
