"""`tunesmith sft --task embedding` and `tunesmith eval --task retrieval` through the console script's main() in this
process (eval's own run through a new interpreter is tests/e2e/test_eval_cli.py), on the shipped
all-MiniLM-L6-v2: a few steps on one town's volunteer matches (make_matcher_data.py, written by the test) raise
recall@10 and nDCG@10 on the needs of held-out incidents, shown base vs tuned in one table.

Measured on 2 CPU cores: 8 steps take ~7 s; recall@10 0.36 -> 0.52 (the margin asserted is 0.08).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_cli import run_main

MATCHER = Path(__file__).resolve().parents[2] / "examples" / "volunteer-matcher"


@pytest.fixture(autouse=True)
def progress_bars_restored():
    """The encoder loaders turn transformers' progress bars off for the process (models/encoders.py): back on for the
    later tests of this worker, as if the runs had had a process of their own."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    yield
    if enabled:
        hf_logging.enable_progress_bar()


def test_embedding_fine_tune_raises_recall_on_held_out_incidents(tmp_path):
    data = tmp_path / "matcher"
    subprocess.run([sys.executable, MATCHER / "make_matcher_data.py", "--volunteers", "60", "--train-incidents", "30",
                    "--heldout", "10", "--out", data], check=True, capture_output=True)
    run = tmp_path / "runs" / "embed"
    run_main("sft", "--task", "embedding", "--dataset", data / "embed_train.jsonl", "--tuner", "full", "--max-steps", "8",
             "--batch-size", "8", "--learning-rate", "1e-4", "--max-length", "48", "--embedding.matryoshka-dims", "384",
             "64", "--save-steps", "1000", "--logging-steps", "4", "--output-dir", run, "--report-to", "none")
    assert {"config.yaml", "metrics.jsonl", "final"} <= {p.name for p in run.iterdir()}
    final = run / "final"
    assert {"modules.json", "model.safetensors", "tokenizer.json", "tunesmith_task.json"} <= {p.name for p in
                                                                                             final.iterdir()}
    card = json.loads((final / "tunesmith_task.json").read_text())
    assert card["task"] == "embedding" and card["matryoshka_dims"] == [384, 64] and card["embedding_dim"] == 384

    out = tmp_path / "eval"
    proc = run_main("eval", "--task", "retrieval", "--dataset", data / "heldout", "--compare", "base=all-minilm-l6-v2",
                    f"tuned={final}", "--k", "1", "5", "10", "--output-dir", out)
    for word in ("base", "tuned", "recall@10", "ndcg@10", "mrr@10"):
        assert word in proc.stdout  # the table
    assert {"results.json", "answers.jsonl", "scores.png", "config.yaml"} <= {p.name for p in out.iterdir()}
    results = json.loads((out / "results.json").read_text())
    assert results["rows"] == 30 and results["corpus"] == 60  # 10 held-out incidents' needs, the roster
    base, tuned = results["models"]["base"]["scores"], results["models"]["tuned"]["scores"]
    assert tuned["recall@10"] >= base["recall@10"] + 0.08, (base, tuned)
    assert tuned["ndcg@10"] > base["ndcg@10"] and tuned["mrr@10"] > base["mrr@10"], (base, tuned)
