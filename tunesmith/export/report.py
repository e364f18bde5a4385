"""export_report.json: what an export cost, measured the same way on the model before and after it.

- size on disk before (base + adapter, or the source model) and after (the exported folder);
- perplexity on held-out text: --eval-dataset rows (chats rendered with the run's own template, text rows as they
  are), or HELDOUT below; at most --eval-tokens tokens, scored in windows of WINDOW tokens;
- greedy agreement: the first GREEDY_TOKENS tokens each model generates greedily for PROMPTS (rendered with the run's
  template), compared position by position up to the first difference;
- time taken.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.lineage import REPORT_FILE

WINDOW = 512
GREEDY_TOKENS = 16
PROMPTS = [
    "Write the requirements for a feature that lets users export their invoices as CSV.",
    "Explain in two sentences why the sky is blue.",
    "List three things to check before deploying a web service.",
    "用一句话介绍你自己。",
]
# Held-out text written for tunesmith (not in any training set it ships): prose, a list, code and Chinese, so that a
# quantization that hurts one kind of text shows.
HELDOUT = """\
The harbour town woke slowly. Fishing boats came in before dawn, their decks shining with the night's catch, and the
market stalls opened one by one as the light grew. An old man sold coffee from a cart painted the colour of the sea;
he knew every sailor by name and most of their debts as well. By eight o'clock the square was loud with bargaining,
gulls and the bells of the church on the hill, which rang a little late, as they had for forty years.

Product requirements for a password reset feature.
1. Overview: users who forget their password can set a new one from a link sent to their verified email address.
2. Requirements: the link expires after thirty minutes and works once; the new password must meet the same rules as
at sign-up; every active session ends when the password changes.
3. Acceptance criteria: a user with an expired link sees a clear message and can request a new one; support staff
can see in the audit log when a reset was requested and completed.
4. Out of scope: resets by SMS, and security questions.

Photosynthesis turns light into chemical energy. In the chloroplasts of a leaf, chlorophyll absorbs mostly red and
blue light, which drives the splitting of water into oxygen, protons and electrons. The electrons pass along a chain
of proteins that pumps protons across a membrane, and the flow of protons back through an enzyme makes ATP. In the
Calvin cycle the plant then uses ATP and NADPH to fix carbon dioxide from the air into sugars.

def moving_average(values, window):
    \"\"\"The mean of each run of `window` consecutive values.\"\"\"
    if window <= 0:
        raise ValueError("window must be positive")
    total = sum(values[:window])
    out = [total / window]
    for i in range(window, len(values)):
        total += values[i] - values[i - window]
        out.append(total / window)
    return out

会议纪要：本周我们讨论了新版本的发布计划。测试团队报告说还有三个严重的问题没有解决，因此发布日期推迟一周。产品经理会在周五之前更新需求文档，
并通知所有相关的同事。下次会议定在下周二上午十点。

When the committee finally published its report, the conclusions were modest. The bridge could be repaired rather
than replaced, at about a third of the cost, provided the work began before the winter storms. Traffic would be
limited to one lane for six months. Several residents wrote to the newspaper to complain, but most agreed that a
narrow bridge was better than none, and by spring the scaffolding had become part of the view.
"""


@dataclass
class Probe:
    """What both models are measured on, rendered once."""

    windows: list[list[int]]  # held-out ids, cut into windows of at most WINDOW tokens
    prompts: list[list[int]]  # greedy-agreement prompts
    source: str  # where the held-out text came from
    stop_ids: list[int]
    pad_id: int

    @property
    def tokens(self) -> int:
        return sum(len(w) for w in self.windows)


def build_probe(template: Any, eval_dataset: list[str], eval_tokens: int, encoding: str = "utf-8",
                greedy_prompts: int = len(PROMPTS)) -> Probe:
    tok = template.tokenizer
    if eval_dataset:
        ids = _dataset_ids(template, eval_dataset, eval_tokens, encoding)
        source = ", ".join(eval_dataset)
    else:
        ids = tok(HELDOUT, add_special_tokens=False)["input_ids"]
        source = "tunesmith's shipped held-out text (export/report.py)"
    ids = ids[:eval_tokens]
    windows = [ids[i: i + WINDOW] for i in range(0, len(ids), WINDOW)]
    windows = [w for w in windows if len(w) > 1]
    prompts = [template.render_prompt([{"role": "user", "content": p}]) for p in PROMPTS[:greedy_prompts]]
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    return Probe(windows, prompts, source, list(template.stop_token_ids), pad)


def _dataset_ids(template: Any, specs: list[str], limit: int, encoding: str) -> list[int]:
    """Rows of any tunesmith dataset as one stream of ids: chats rendered whole by the template, text as it is."""
    from tunesmith.data.load import load_rows
    from tunesmith.data.rows import Text

    data = load_rows(specs, kind="sft", encoding=encoding)
    if data.problems and not data.rows:  # no chat at all: raw text rows?
        text = load_rows(specs, kind="pt", encoding=encoding)
        data = text if not text.problems else data
    data.raise_if_bad(skip_bad_rows=False, fix="Fix these rows, or pass another --eval-dataset FILE.")
    ids: list[int] = []
    for row in data.rows:
        if isinstance(row, Text):
            ids += template.tokenizer(row.text, add_special_tokens=False)["input_ids"]
        else:  # the whole conversation as the template prints it
            ids += template.tokenizer(template.render_text(row.messages), add_special_tokens=False)["input_ids"]
        if len(ids) >= limit:
            break
    return ids


def measure(model: Any, probe: Probe) -> dict:
    """Perplexity over the probe's windows and the greedy answers to its prompts."""
    import torch

    device = next(model.parameters()).device
    nll, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for window in probe.windows:
            ids = torch.tensor([window], device=device)
            logits = model(input_ids=ids).logits[0, :-1].float()
            nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += len(window) - 1
        answers = []
        for prompt in probe.prompts:  # one at a time: no padding, so nothing but the weights differs
            ids = torch.tensor([prompt], device=device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=GREEDY_TOKENS, eos_token_id=probe.stop_ids or None,
                                 pad_token_id=probe.pad_id)
            answers.append(out[0, len(prompt):].tolist())
    return {"perplexity": math.exp(nll / count) if count else None, "greedy": answers}


def agreement(before: list[list[int]], after: list[list[int]]) -> dict:
    """Share of each greedy answer that matches up to the first differing token, averaged; identical answers."""
    shares, identical = [], 0
    for a, b in zip(before, after):
        same = 0
        for x, y in zip(a, b):
            if x != y:
                break
            same += 1
        shares.append(same / max(len(a), len(b), 1))
        identical += a == b
    mean = sum(shares) / len(shares) if shares else None
    return {"prompts": len(shares), "identical": identical, "mean_matching_prefix": mean}


def folder_bytes(*folders: Path, skip_optimizer: bool = True) -> int:
    total = 0
    for folder in folders:
        for p in Path(folder).rglob("*"):
            if p.is_file() and p.name != REPORT_FILE and not (skip_optimizer and p.name.startswith("optimizer")):
                total += p.stat().st_size
    return total


def write(folder: Path, report: dict) -> Path:
    path = Path(folder) / REPORT_FILE
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def summary(report: dict) -> str:
    """The lines printed after an export."""
    mib = 2 ** 20
    before, after = report["perplexity_before"], report["perplexity_after"]
    change = f" ({(after / before - 1) * 100:+.2f} %)" if before and after else ""
    agree = report["greedy_agreement"]
    lines = [
        f"size: {report['size_before_bytes'] / mib:.1f} MiB -> {report['size_after_bytes'] / mib:.1f} MiB",
        (f"perplexity on {report['eval_tokens']} held-out tokens ({report['eval_source']}): "
         f"{before:.3f} -> {after:.3f}{change}"),
        (f"greedy agreement on {agree['prompts']} prompts x {GREEDY_TOKENS} tokens: {agree['identical']} identical, "
         f"{agree['mean_matching_prefix'] * 100:.0f} % matching prefix" if agree["prompts"] else
         "greedy agreement: not measured (--greedy-prompts 0)"),
        f"time: {report['seconds']:.1f} s; wrote {report['output']}",
    ]
    return "\n".join(lines)


def show(report: dict) -> None:
    print(summary(report), file=sys.stderr)
