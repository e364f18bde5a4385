"""`tunesmith sft --task reranker | classification` in process (train/reranker.py, train/classifier.py): a fine-tune
measurably beats what it started from on rows it never saw. The embedding task, through the console script and
`tunesmith eval`: tests/e2e/test_encoder_tasks_cli.py.

The reranker starts from the shipped all-MiniLM-L6-v2 with a fresh score head (a cross-encoder head needs a few dozen
pairs before it ranks at all), on the volunteer matcher's skill phrasings: a need against the certificate that meets
it and three that do not, scored on phrasings it never saw; the classifier from a tiny random BERT (tests/tiny.py) on
a keyword-separable set.
"""

import importlib.util
import json
import random
from pathlib import Path

from tiny import make_tiny_encoder

from tunesmith import api
from tunesmith.config import SFTConfig, load
from tunesmith.config.eval import EvalConfig
from tunesmith.models.encoders import read_task

MATCHER = Path(__file__).resolve().parents[2] / "examples" / "volunteer-matcher"


def skill_rows(rng: random.Random, need: list[int], certificate: list[int], rounds: int) -> str:
    """A need for each skill of the volunteer matcher (make_matcher_data.py's phrasings with the given indices), its
    skill written as a certificate, and the certificates of three other skills."""
    spec = importlib.util.spec_from_file_location("make_matcher_data", MATCHER / "make_matcher_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    skills = module.SKILLS  # skill -> (certificates, needs)
    rows = []
    for _ in range(rounds):
        for skill, (certificates, needs) in skills.items():
            others = rng.sample([s for s in skills if s != skill], 3)
            rows.append({"query": needs[rng.choice(need)], "positive": certificates[rng.choice(certificate)],
                         "negatives": [skills[o][0][rng.choice(certificate)] for o in others]})
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_reranker_fine_tune_raises_ndcg_on_phrasings_it_never_saw(tmp_path):
    from transformers import set_seed

    from tunesmith.models.encoders import build_reranker, packaged_folder

    rng = random.Random(0)
    (tmp_path / "train.jsonl").write_text(skill_rows(rng, [0, 1, 2], [0, 1, 2], 6))  # 48 lists of 4
    (tmp_path / "held.jsonl").write_text(skill_rows(rng, [3], [3], 3))  # the fourth phrasings: never trained on
    set_seed(0)
    build_reranker(packaged_folder("all-minilm-l6-v2"), "auto", "cpu").save(str(tmp_path / "fresh"))  # the start
    run = api.sft(load(SFTConfig, ["--task", "reranker", "--reranker.loss", "lambda", "--dataset",
                                   str(tmp_path / "train.jsonl"), "--tuner", "full", "--max-steps", "12",
                                   "--batch-size", "4", "--learning-rate", "3e-4", "--max-length", "32",
                                   "--save-steps", "1000", "--output-dir", str(tmp_path / "run"), "--report-to", "none"]))
    assert read_task(run.final_dir)["task"] == "reranker"
    result = api.evaluate(load(EvalConfig, ["--task", "reranking", "--dataset", str(tmp_path / "held.jsonl"), "--k",
                                            "1", "4", "--compare", f"fresh={tmp_path / 'fresh'}",
                                            f"tuned={run.final_dir}", "--output-dir", str(tmp_path / "eval")]))
    fresh, tuned = result.scores["fresh"], result.scores["tuned"]
    assert tuned["ndcg@4"] >= fresh["ndcg@4"] + 0.08, (fresh, tuned)
    assert tuned["mrr@4"] > fresh["mrr@4"], (fresh, tuned)


URGENT = ["fire", "flood", "collapse", "injured", "trapped", "explosion"]
CALM = ["quiet", "routine", "tidy", "sunny", "restock", "meeting"]
FILLER = ["the", "at", "near", "by", "report", "from", "team", "shelter", "depot", "street", "morning", "evening", "north", "south"]


def labelled(rng: random.Random, n: int) -> str:
    rows = []
    for i in range(n):
        words, label = (URGENT, "urgent") if i % 2 else (CALM, "calm")
        text = rng.sample(FILLER, 4)
        text.insert(rng.randrange(5), rng.choice(words))
        rows.append(json.dumps({"text": " ".join(text), "label": label}) + "\n")
    return "".join(rows)


def test_classifier_fine_tune_is_right_where_its_untrained_head_is_at_chance(tmp_path):
    make_tiny_encoder(tmp_path / "tiny", "embedding", seed=0)
    base = tmp_path / "tiny-bert"  # the random BERT under it, no head: sft and eval give it a fresh one
    rng = random.Random(0)
    (tmp_path / "train.jsonl").write_text(labelled(rng, 64))
    (tmp_path / "test.jsonl").write_text(labelled(rng, 20))  # new sentences around the same keywords
    run = api.sft(load(SFTConfig, ["--task", "classification", "--model", str(base), "--dataset",
                                   str(tmp_path / "train.jsonl"), "--tuner", "full", "--max-steps", "60",
                                   "--batch-size", "8", "--learning-rate", "2e-3", "--warmup-ratio", "0",
                                   "--save-steps", "1000", "--output-dir", str(tmp_path / "run"), "--report-to", "none"]))
    assert read_task(run.final_dir)["labels"] == ["calm", "urgent"]
    result = api.evaluate(load(EvalConfig, ["--task", "classification", "--dataset", str(tmp_path / "test.jsonl"),
                                            "--compare", f"base={base}", f"tuned={run.final_dir}", "--output-dir",
                                            str(tmp_path / "eval")]))
    assert result.scores["tuned"]["accuracy"] >= 0.9 and result.scores["tuned"]["f1_macro"] >= 0.9, result.scores
    assert result.scores["base"]["accuracy"] <= 0.7, result.scores  # a fresh head: about chance on a balanced set
