"""Generation metrics by name: plain functions `(predictions, references) -> Scores`, from maintained libraries.

Every score is on a 0-1 scale (BLEU too: sacrebleu's 0-100 divided by 100), so one table and one chart hold them.
- exact_match: the answer equals the reference once surrounding whitespace is stripped and inner runs of whitespace
  are one space. Case and punctuation count.
- bleu: sacrebleu corpus BLEU. Tokenizer 13a, or "zh" when a reference holds Chinese characters (13a keeps a
  Chinese sentence as one token; "zh" splits its characters and treats the rest like 13a). effective_order: short
  answers ("CODE apple OK" has no 4-gram) would otherwise score 0 even when identical. Per sample: sentence BLEU.
- rouge: rouge-score's rouge1, rouge2 and rougeL F-measures, averaged. Its own tokenizer drops every non-ASCII
  character (an identical Chinese answer scores 0), so CJK characters are split out as tokens first.
- bertscore: bert-score's F1 with the shipped all-MiniLM-L6-v2 offline, or any model by name (eval/bertscore.py).
- format: the answer keeps its reference's form: a JSON reference wants JSON of the same kind (an object with the
  same top-level keys); a Markdown reference wants its headings, in order (compared without the #s and spaces).
  Any other reference only wants a non-empty answer.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass, field
from typing import Callable

from tunesmith.errors import ConfigError

CJK = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af])")
CHINESE = re.compile(r"[\u4e00-\u9fff]")


@dataclass
class Scores:
    columns: dict[str, float]  # corpus-level, one table column each
    per_sample: list[dict[str, float]]  # aligned with the predictions
    info: dict[str, str] = field(default_factory=dict)  # how it was computed (e.g. the BLEU signature)


MetricFn = Callable[..., Scores]
METRICS: dict[str, MetricFn] = {}
PACKAGES = {  # metric -> (module, pip package)
    "bleu": ("sacrebleu", "sacrebleu"), "rouge": ("rouge_score", "rouge-score"), "bertscore": ("bert_score", "bert-score")}


def register(name: str) -> Callable[[MetricFn], MetricFn]:
    def add(fn: MetricFn) -> MetricFn:
        METRICS[name] = fn
        return fn

    return add


def check_available(names: list[str]) -> None:
    """Before any model loads: every asked-for metric has its package."""
    for name in names:
        module, package = PACKAGES.get(name, (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise ConfigError(f"metrics: {name} needs the {package} package: pip install {package} (or "
                              f"pip install 'tunesmith[eval]'); or leave {name} out of --metrics")


# -----------------------------------------------------------------------------
# Metrics


def normalise(text: str) -> str:
    return " ".join(text.split())


@register("exact_match")
def exact_match(predictions: list[str], references: list[str], **_) -> Scores:
    hits = [float(normalise(p) == normalise(r)) for p, r in zip(predictions, references)]
    return Scores({"exact_match": _mean(hits)}, [{"exact_match": h} for h in hits])


@register("bleu")
def bleu(predictions: list[str], references: list[str], **_) -> Scores:
    from sacrebleu.metrics import BLEU

    tokenize = "zh" if any(CHINESE.search(r) for r in references) else "13a"
    metric = BLEU(tokenize=tokenize, effective_order=True)
    corpus = metric.corpus_score(predictions, [references]).score / 100
    per = [metric.sentence_score(p, [r]).score / 100 for p, r in zip(predictions, references)]
    return Scores({"bleu": corpus}, [{"bleu": s} for s in per], {"bleu": str(metric.get_signature())})


class MixedTokenizer:
    """rouge-score's tokenizer (lowercase, Porter stemming) for everything but CJK characters, which become one
    token each, in order."""

    def __init__(self) -> None:
        from rouge_score.tokenizers import DefaultTokenizer

        self.latin = DefaultTokenizer(use_stemmer=True)

    def tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        for piece in CJK.split(text):
            if CJK.fullmatch(piece):
                tokens.append(piece)
            elif piece.strip():
                tokens += self.latin.tokenize(piece)
        return tokens


@register("rouge")
def rouge(predictions: list[str], references: list[str], **_) -> Scores:
    from rouge_score.rouge_scorer import RougeScorer

    kinds = ["rouge1", "rouge2", "rougeL"]
    scorer = RougeScorer(kinds, tokenizer=MixedTokenizer())
    per = [{k: float(s.fmeasure) for k, s in scorer.score(r, p).items()} for p, r in zip(predictions, references)]
    return Scores({k: _mean([s[k] for s in per]) for k in kinds}, per)


@register("bertscore")
def bertscore(predictions: list[str], references: list[str], model: str | None = None, idf: bool = False,
              **_) -> Scores:
    from tunesmith.eval.bertscore import score

    _, _, f1, how = score(predictions, references, model=model, idf=idf)
    return Scores({"bertscore": _mean(f1)}, [{"bertscore": s} for s in f1], {"bertscore": how})


HEADING = re.compile(r"^\s{0,3}#{1,6}\s*(.+?)\s*#*\s*$", re.MULTILINE)


@register("format")
def format_kept(predictions: list[str], references: list[str], **_) -> Scores:
    hits = [float(_same_form(p, r)) for p, r in zip(predictions, references)]
    return Scores({"format": _mean(hits)}, [{"format": h} for h in hits])


def _same_form(answer: str, reference: str) -> bool:
    want = _json(reference)
    if want is not None:
        got = _json(answer)
        if got is None or type(got) is not type(want):
            return False
        return set(got) == set(want) if isinstance(want, dict) else True
    headings = [" ".join(h.split()) for h in HEADING.findall(reference)]
    if headings:
        found = iter(" ".join(h.split()) for h in HEADING.findall(answer))
        return all(h in found for h in headings)  # each in turn, in the reference's order
    return bool(answer.strip())


def _json(text: str):
    text = text.strip()
    if not text.startswith(("{", "[")):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def accuracy(picked: list[int | None], right: list[int]) -> Scores:
    """Multiple choice: the share of questions whose named choice is the right one (none named = wrong)."""
    hits = [float(p == r) for p, r in zip(picked, right)]
    return Scores({"accuracy": _mean(hits)}, [{"accuracy": h} for h in hits])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
