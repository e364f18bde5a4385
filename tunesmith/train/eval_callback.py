"""Generation metrics while SFT trains: `--eval-dataset FILE --eval-metrics rouge,format [--eval-gate "rouge>=0.3"]`.

At every eval step (eval_steps, else save_steps) and at the last step the model answers the first
--eval-generate-rows rows of the eval data greedily (left-padded batches of 8), from the prompt our template renders
(exactly what infer, deploy and `tunesmith eval` send), and the metrics of `tunesmith eval` (eval/metrics.py, the
same functions) score the answers against the references. Each eval step is one line in metrics.jsonl
(eval_<column>: eval_rougeL, eval_format, ...) and on the console, its answers in eval_answers.jsonl;
eval_metrics.png beside loss.png draws them against the step. With --eval-gate the run saves as usual, then exits
non-zero when the last step's value fails the gate (rouge means rougeL), so a scripted pipeline stops there.

One process only: a sharded model (DeepSpeed, FSDP) would need every rank to generate together.
"""

from __future__ import annotations

import json
import logging
import operator
import sys
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunesmith.config.eval import parse_gate
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.train.callbacks import plot_steps

log = logging.getLogger("tunesmith")
BATCH = 8  # rows generated together at an eval step
COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}


class EvalGateFailed(TunesmithError):
    exit_code = 3


class GenerationEval(TrainerCallback):
    def __init__(self, cfg: Any, template: Any, run_dir: Path):
        # eval/metrics.py and eval/samples.py are plain functions over text and rows (no model, engine or server):
        # the one definition of each metric, shared with `tunesmith eval`.
        from tunesmith.eval import metrics as M
        from tunesmith.eval.samples import load_samples

        self.template, self.run_dir = template, run_dir
        self.max_tokens, self.every = cfg.eval_max_tokens, cfg.eval_steps or cfg.save_steps
        self.samples, _ = load_samples(cfg.eval_dataset, cfg.eval_generate_rows, cfg.skip_bad_rows, cfg.encoding)
        if not self.samples:
            raise ConfigError(f"eval_dataset: {', '.join(cfg.eval_dataset)} has no rows to answer")
        self.metrics = list(dict.fromkeys(cfg.eval_metrics))
        has_gen, has_choice = any(not s.is_choice for s in self.samples), any(s.is_choice for s in self.samples)
        for name in self.metrics:
            if not (has_choice if name == "accuracy" else has_gen):
                need = "multiple-choice rows (choices + answer)" if name == "accuracy" else "rows with a reference answer"
                raise ConfigError(f"eval_metrics: {name} needs {need}; the first {len(self.samples)} rows of "
                                  f"{', '.join(cfg.eval_dataset)} have none")
        M.check_available(self.metrics)
        if "bertscore" in self.metrics:  # the shipped MiniLM is there before the model loads
            from tunesmith.eval.bertscore import resolve

            resolve(None)
        self.bertscore_model = None  # the shipped MiniLM, as `tunesmith eval` defaults
        self.gate = parse_gate(cfg.eval_gate) if cfg.eval_gate else None
        self.last: dict[str, float] = {}
        self.done_step = -1

    # -------------------------------------------------------------------------
    # When

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self.evaluate(model, state)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.done_step != state.global_step:  # the last step, unless it was an eval step already
            self.evaluate(model, state)
        plot_eval(self.run_dir)

    # -------------------------------------------------------------------------
    # Answer and score

    def evaluate(self, model: Any, state: Any) -> dict[str, float]:
        from tqdm.auto import tqdm

        start = time.time()
        answers: list[str] = []
        with tqdm(total=len(self.samples), desc=f"eval step {state.global_step}", unit="row", leave=False,
                  dynamic_ncols=True) as bar:
            for i in range(0, len(self.samples), BATCH):
                answers += self.answer(model, self.samples[i:i + BATCH])
                bar.update(len(answers) - bar.n)
        columns = self.score(answers)
        self.last, self.done_step = columns, state.global_step
        record = {"step": state.global_step, "total_steps": state.max_steps, "epoch": round(state.epoch or 0, 4),
                  **{f"eval_{k}": round(v, 6) for k, v in columns.items()}, "eval_rows": len(self.samples),
                  "eval_seconds": round(time.time() - start, 2)}
        with (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        with (self.run_dir / "eval_answers.jsonl").open("a", encoding="utf-8") as f:
            for sample, text in zip(self.samples, answers):
                f.write(json.dumps({"step": state.global_step, "source": sample.where, "answer": text,
                                    "reference": sample.reference}, ensure_ascii=False) + "\n")
        shown = " | ".join(f"{k} {v:.3f}" for k, v in columns.items())
        tqdm.write(f"eval step {state.global_step}/{state.max_steps} | {shown} | {len(self.samples)} rows in "
                   f"{record['eval_seconds']:.1f}s", file=sys.stderr)
        return columns

    def answer(self, model: Any, samples: list[Any]) -> list[str]:
        """Greedy answers to a batch of rows, each prompt rendered as infer and deploy render it (left-padded to one
        length); each answer ends at the template's end of turn."""
        import torch

        tokenizer = self.template.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        prompts = [self.template.render_prompt(s.messages) for s in samples]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.max_tokens, do_sample=False,
                                     use_cache=True, eos_token_id=list(self.template.stop_token_ids), pad_token_id=pad)
        finally:
            model.train(was_training)
        texts = []
        for row in out[:, width:].tolist():
            end = next((i for i, token in enumerate(row) if token in self.template.stop_token_ids), len(row))
            texts.append(tokenizer.decode(row[:end], skip_special_tokens=True).strip())
        return texts

    def score(self, answers: list[str]) -> dict[str, float]:
        from tunesmith.eval import metrics as M
        from tunesmith.eval.samples import pick_choice

        columns: dict[str, float] = {}
        gen = [i for i, s in enumerate(self.samples) if not s.is_choice]
        for name in self.metrics:
            if name == "accuracy":
                choice = [i for i, s in enumerate(self.samples) if s.is_choice]
                picked = [pick_choice(answers[i], self.samples[i].choices) for i in choice]
                columns |= M.accuracy(picked, [self.samples[i].answer_index for i in choice]).columns
            else:
                columns |= M.METRICS[name]([answers[i] for i in gen], [self.samples[i].reference for i in gen],
                                           model=self.bertscore_model).columns
        return columns

    # -------------------------------------------------------------------------
    # The gate, after the run is saved

    def check_gate(self) -> None:
        if self.gate is None:
            return
        column, op, threshold = self.gate
        value = self.last.get(column)
        if value is None or not COMPARE[op](value, threshold):
            shown = "no value" if value is None else f"{column} {value:.4f}"
            raise EvalGateFailed(f"eval_gate: {column}{op}{threshold:g} failed at the last step ({shown}); the run is "
                                 f"saved in {self.run_dir}")
        log.info("eval gate passed: %s %.4f %s %g", column, value, op, threshold)


def plot_eval(run_dir: Path) -> Path | None:
    """eval_metrics.png: each eval_<column> of metrics.jsonl against the step (0-1), beside loss.png."""
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    rows = [r for r in rows if "eval_rows" in r]  # ours, not the Trainer's eval_loss lines
    keys = list(dict.fromkeys(k for r in rows for k in r if k.startswith("eval_") and k not in
                              ("eval_rows", "eval_seconds")))
    if not keys:
        return None
    return plot_steps(run_dir / "eval_metrics.png", rows, {k: k.removeprefix("eval_") for k in keys}, "score (0-1)",
                      f"{run_dir.name}: generation eval", ylim=(0, 1.05))
