"""LLM-as-judge over any OpenAI-compatible endpoint (the official openai SDK): a judge model reads each generation row's
question, reference and answers and gives a verdict.

    tunesmith eval --compare base=smollm2-135m-instruct tuned=runs/prd/final --dataset d.jsonl \\
        --judge-url http://127.0.0.1:8000/v1 --judge-model judge --rubric rubric.md [--judge-mode pairwise|score]

pairwise: the first model is the baseline; each other model meets it on every row twice, once as assistant A and
once as B (position swap, as MT-Bench does against the judges' preference for the first answer). A winner needs both
orders to name it; orders that disagree make a tie. Reported per challenger: wins, losses, ties, the win rate
((wins + ties / 2) / judged rows, column judge_win) and the agreement between the two orders.
score: each answer is rated 1-10 against the rubric (column judge: the mean / 10, the mean itself in results.json).

Prompts follow MT-Bench's judge prompts (Zheng et al., 2023): verdicts "[[A]]", "[[B]]", "[[C]]" (tie), ratings
"Rating: [[N]]". A reply without one (or, pairwise, naming two) is counted as unparsed, shown and kept in
judgements.jsonl with the reply; it never stops the evaluation, and its row is left out of the figures.
"""

from __future__ import annotations

import json
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError

log = logging.getLogger("tunesmith")
DEFAULT_RUBRIC = ("Helpfulness: the answer does what the user asked. Correctness: it agrees with the reference answer "
                  "where the reference states facts. Clarity: it is well organised and no longer than it needs to be.")
SYSTEM = "Please act as an impartial judge and evaluate answers of AI assistants to the user question below."
PAIRWISE = """{system} Compare the two answers by these criteria:
{rubric}

Avoid any position bias: the order in which the answers appear must not influence your decision, nor their length,
nor the assistants' names. Be as objective as possible. After a short explanation, output your final verdict by
strictly following this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a
tie.

[User Question]
{question}

[The Start of Reference Answer]
{reference}
[The End of Reference Answer]

[The Start of Assistant A's Answer]
{a}
[The End of Assistant A's Answer]

[The Start of Assistant B's Answer]
{b}
[The End of Assistant B's Answer]"""
SCORE = """{system} Rate the answer by these criteria:
{rubric}

Be as objective as possible. After a short explanation, rate the answer on a scale of 1 to 10 by strictly following
this format: "Rating: [[5]]".

[User Question]
{question}

[The Start of Reference Answer]
{reference}
[The End of Reference Answer]

[The Start of Assistant's Answer]
{answer}
[The End of Assistant's Answer]"""
VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
RATING = [re.compile(r"rating\s*:?\s*\[\[\s*(\d+(?:\.\d+)?)\s*\]\]", re.IGNORECASE),  # MT-Bench's form first
          re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]"),
          re.compile(r"\b(\d+(?:\.\d+)?)\s*/\s*10\b"),
          re.compile(r"(?:rating|score)\s*[:=]\s*(\d+(?:\.\d+)?)", re.IGNORECASE)]


def parse_verdict(reply: str) -> str | None:
    """"A", "B", "C" (tie), or None when the reply names no verdict or two different ones."""
    found = set(VERDICT.findall(_after_thinking(reply)))
    return found.pop() if len(found) == 1 else None


def parse_rating(reply: str) -> float | None:
    """The 1-10 rating, trying "Rating: [[N]]" first, then looser forms; None when absent or out of range."""
    reply = _after_thinking(reply)
    for pattern in RATING:
        match = pattern.search(reply)
        if match:
            value = float(match.group(1))
            return value if 1 <= value <= 10 else None
    return None


def _after_thinking(reply: str) -> str:
    """A reasoning judge's verdict follows its thinking (which may weigh both verdicts): the text after </think>."""
    return reply.rsplit("</think>", 1)[-1]


# -----------------------------------------------------------------------------
# The judge's endpoint


@dataclass
class Judge:
    client: Any
    model: str
    rubric: str
    mode: str
    max_tokens: int
    workers: int
    rubric_file: str | None = None

    def ask(self, prompt: str) -> tuple[str, str | None]:
        """(the reply, or "" with the error's text): a failed request counts as unparsed, it does not stop eval."""
        try:
            reply = self.client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": prompt}],
                                                        temperature=0.0, max_tokens=self.max_tokens)
            return reply.choices[0].message.content or "", None
        except Exception as err:  # noqa: BLE001 - the openai SDK's API, connection and timeout errors alike
            return "", f"{type(err).__name__}: {str(err)[:300]}"


def open_judge(cfg: Any, models: int) -> Judge:
    """The judge, checked before any model loads: the rubric file reads, the endpoint answers, the model is served."""
    import importlib.util

    if importlib.util.find_spec("openai") is None:
        raise ConfigError("judge_url: the judge is asked through the openai package: pip install 'tunesmith[eval]'")
    from openai import OpenAI, OpenAIError

    mode = cfg.judge_mode or ("pairwise" if models > 1 else "score")
    if mode == "pairwise" and models < 2:
        raise ConfigError("judge_mode: pairwise compares two or more models (--compare A=... B=...); use --judge-mode "
                          "score for one")
    rubric = DEFAULT_RUBRIC
    if cfg.rubric:
        path = Path(cfg.rubric)
        if not path.is_file():
            raise ConfigError(f"rubric: {path} is not a file")
        rubric = path.read_text(encoding="utf-8").strip()
        if not rubric:
            raise ConfigError(f"rubric: {path} is empty")
    key = cfg.judge_api_key or os.environ.get("OPENAI_API_KEY") or "none"
    client = OpenAI(base_url=cfg.judge_url, api_key=key, timeout=300.0, max_retries=2)
    try:
        served = [m.id for m in client.models.list().data]
    except OpenAIError as err:
        raise ConfigError(f"judge_url: {cfg.judge_url} does not answer GET /models ({type(err).__name__}: "
                          f"{str(err)[:200]}); start the judge's server or fix the URL") from None
    model = cfg.judge_model or (served[0] if served else None)
    if model is None:
        raise ConfigError(f"judge_model: {cfg.judge_url} serves no model; give --judge-model")
    if served and model not in served:
        log.warning("judge: %s lists %s, not %s; asking for it anyway", cfg.judge_url, ", ".join(served), model)
    return Judge(client, model, rubric, mode, cfg.judge_max_tokens, min(cfg.batch_size, 16), cfg.rubric)


# -----------------------------------------------------------------------------
# Judging


@dataclass
class Judged:
    columns: dict[str, dict[str, float]]  # model -> column -> 0-1 value for the table
    summary: dict[str, Any]  # results.json's "judge"
    unparsed: list[str] = field(default_factory=list)  # replies that named no verdict


def judge_answers(judge: Judge, samples: list[Any], answers: dict[str, list[str]], out: Path) -> Judged:
    """Judge every generation row; raw judgements to out/judgements.jsonl."""
    rows = [i for i, s in enumerate(samples) if not s.is_choice]
    names = list(answers)
    jobs: list[dict[str, Any]] = []
    for i in rows:
        base = {"row": i, "source": samples[i].where, "question": question(samples[i].messages),
                "reference": samples[i].reference}
        if judge.mode == "score":
            jobs += [{**base, "model": name, "answer": answers[name][i]} for name in names]
        else:
            for other in names[1:]:  # both orders of each pair
                jobs.append({**base, "order": [names[0], other]})
                jobs.append({**base, "order": [other, names[0]]})
    log.info("judge: %s asks %s for %d %s judgements on %d rows", judge.mode, judge.model, len(jobs),
             "rating" if judge.mode == "score" else "A/B", len(rows))
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(judge.workers) as pool:
        replies = list(tqdm(pool.map(lambda job: judge.ask(_prompt(judge, job, answers)), jobs), total=len(jobs),
                            desc="judging", unit="judgement", dynamic_ncols=True))
    records = []
    for job, (reply, error) in zip(jobs, replies):
        record = {"mode": judge.mode, "judge": judge.model, **{k: v for k, v in job.items() if k != "question"},
                  "reply": reply}
        if error:
            record["error"] = error
        if judge.mode == "score":
            record["rating"] = parse_rating(reply)
        else:
            record["verdict"] = parse_verdict(reply)
            record["answers"] = [answers[m][job["row"]] for m in job["order"]]
        records.append(record)
    with (out / "judgements.jsonl").open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    judged = _score_summary(records, names) if judge.mode == "score" else _pairwise_summary(records, names)
    judged.summary |= {"mode": judge.mode, "url": str(judge.client.base_url), "model": judge.model,
                       "rubric": judge.rubric_file or "default", "judgements": len(records)}
    _show(judged)
    return judged


def _prompt(judge: Judge, job: dict[str, Any], answers: dict[str, list[str]]) -> str:
    common = {"system": SYSTEM, "rubric": judge.rubric, "question": job["question"],
              "reference": job["reference"] or "(none)"}
    if judge.mode == "score":
        return SCORE.format(**common, answer=job["answer"])
    a, b = (answers[m][job["row"]] for m in job["order"])
    return PAIRWISE.format(**common, a=a, b=b)


def question(messages: list[dict]) -> str:
    """The prompt as the judge reads it: the user's text, or every earlier turn by role for a conversation."""
    turns = [m for m in messages if m.get("role") != "system"]
    if len(turns) == 1:
        return _text(turns[0].get("content"))
    return "\n\n".join(f"{m.get('role', 'user').capitalize()}: {_text(m.get('content'))}" for m in turns)


def _text(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content or "")


def _score_summary(records: list[dict[str, Any]], names: list[str]) -> Judged:
    columns, per_model, unparsed = {}, {}, []
    for name in names:
        mine = [r for r in records if r["model"] == name]
        ratings = [r["rating"] for r in mine if r["rating"] is not None]
        unparsed += [r["error"] if r.get("error") else r["reply"] for r in mine if r["rating"] is None]
        mean = sum(ratings) / len(ratings) if ratings else None
        per_model[name] = {"mean_rating": mean, "rated": len(ratings), "unparsed": len(mine) - len(ratings)}
        if mean is not None:
            columns[name] = {"judge": mean / 10}
    return Judged(columns, {"models": per_model}, unparsed)


def _pairwise_summary(records: list[dict[str, Any]], names: list[str]) -> Judged:
    """Both orders of a row give its outcome: the same winner twice wins, a disagreement (or a tie named) is a tie."""
    baseline, columns, pairs, unparsed = names[0], {}, {}, []
    for other in names[1:]:
        by_row: dict[int, dict[str, str | None]] = {}
        for r in records:
            if set(r["order"]) != {baseline, other}:
                continue
            if r["verdict"] is None:
                unparsed.append(r["error"] if r.get("error") else r["reply"])
            winner = {"A": r["order"][0], "B": r["order"][1], "C": "tie"}.get(r["verdict"] or "")
            by_row.setdefault(r["row"], {})[r["order"][0]] = winner  # keyed by who was assistant A
        wins = losses = ties = agree = judged = 0
        for row in by_row.values():
            first, second = row.get(baseline), row.get(other)
            if first is None or second is None:
                continue  # an order without a verdict: the row is left out
            judged += 1
            agree += first == second
            outcome = first if first == second else "tie"
            wins += outcome == other
            losses += outcome == baseline
            ties += outcome == "tie"
        rate = (wins + ties / 2) / judged if judged else None
        pairs[other] = {"against": baseline, "rows": len(by_row), "judged": judged, "wins": wins, "losses": losses,
                        "ties": ties, "unparsed_rows": len(by_row) - judged, "win_rate": rate,
                        "agreement": agree / judged if judged else None}
        if rate is not None:
            columns[other] = {"judge_win": rate}
    return Judged(columns, {"baseline": baseline, "pairs": pairs}, unparsed)


def _show(judged: Judged) -> None:
    for name, p in judged.summary.get("pairs", {}).items():
        log.info("judge: %s vs %s: %d wins, %d losses, %d ties of %d rows judged in both orders; win rate %s, orders "
                 "agree on %s", name, p["against"], p["wins"], p["losses"], p["ties"], p["judged"], _pct(p["win_rate"]),
                 _pct(p["agreement"]))
    for name, m in judged.summary.get("models", {}).items():
        log.info("judge: %s rated %s on average over %d answers", name,
                 "-" if m["mean_rating"] is None else f"{m['mean_rating']:.2f}/10", m["rated"])
    if judged.unparsed:
        log.warning("judge: %d replies named no verdict (left out; all in judgements.jsonl), e.g. %s", len(judged.unparsed),
                    " | ".join(repr(r[:160]) for r in judged.unparsed[:3]))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"
