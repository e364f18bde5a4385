"""The README demo's recipe (examples/prd-assistant/): its SFT settings and the figure the demo prints."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.tiny import make_tiny_model
from tunesmith import api
from tunesmith.config import SFTConfig, load

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "prd-assistant"


def logged(run: Path) -> list[tuple[float, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["loss"], r["grad_norm"]) for r in rows if "grad_norm" in r]


def test_rows_one_at_a_time_train_what_a_padded_batch_of_four_trains(tmp_path):
    """sft.yaml feeds each step's 4 rows one at a time (no padding computed on a CPU): the same rows, losses and
    gradients as batch_size 4, which pads every row to the batch's longest."""
    shipped = load(SFTConfig, ["-c", str(EXAMPLE / "sft.yaml")])
    assert (shipped.batch_size, shipped.grad_accum, shipped.max_steps) == (1, 4, 16)
    tiny = make_tiny_model(tmp_path / "tiny")
    data = tmp_path / "prd.jsonl"  # rows of different lengths, so a batch of 4 pads
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Write the PRD for feature {i}: " + "details " * (3 * i)},
        {"role": "assistant", "content": "## Overview\n" + "It does this. " * (5 + 4 * i)}]}) + "\n" for i in range(8)))
    runs = {}
    for name, flags in {"one-at-a-time": [], "padded": ["--batch-size", "4", "--grad-accum", "1"]}.items():
        cfg = load(SFTConfig, ["-c", str(EXAMPLE / "sft.yaml"), "--model", str(tiny), "--dataset", str(data), "--max-steps", "1",
                               "--save-steps", "100", "--output-dir", str(tmp_path / name), *flags])
        api.sft(cfg)
        runs[name] = logged(tmp_path / name)
    assert len(runs["padded"]) == 1
    for (loss, norm), (loss4, norm4) in zip(runs["one-at-a-time"], runs["padded"]):
        assert loss == pytest.approx(loss4, rel=1e-4) and norm == pytest.approx(norm4, rel=1e-3)


def test_structure_score_counts_the_trained_headings_in_order():
    spec = importlib.util.spec_from_file_location("prd_demo", EXAMPLE / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    full = "## Overview\nx\n## User Stories\ny\n## Requirements\nz\n## Acceptance Criteria\nw"
    assert demo.structure_score(full, "a feature") == 1.0
    assert demo.structure_score("## Requirements\n## Overview", "a feature") == 0.25  # out of order: one counts
    assert demo.structure_score("## 概述\n## 用户故事", "一个功能") == 0.5
    assert demo.structure_score("plain prose", "a feature") == 0.0
