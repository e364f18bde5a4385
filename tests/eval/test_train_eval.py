"""Eval during training: a tiny SFT run with --eval-dataset answers the eval rows at each eval step and writes the
metrics of `tunesmith eval` (the same functions) into metrics.jsonl, eval_answers.jsonl and eval_metrics.png;
--eval-gate exits non-zero after the run is saved."""

import json

import pytest
from tiny import make_tiny_model

from tunesmith.cli.main import main
from tunesmith.eval import metrics as M

WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "amber", "frost", "lemon", "orbit", "pearl", "quartz"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-eval")
    data = root / "toy.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"code for {w}"},
                                                     {"role": "assistant", "content": f"CODE {w} OK"}]}) + "\n"
                            for w in WORDS))
    return root, make_tiny_model(root / "tiny"), data


# On CUDA the run trains packed (padding-free, bfloat16) between the eval steps' generation: run with pytest -m gpu.
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_each_eval_step_writes_the_metrics_and_a_failed_gate_exits_non_zero_after_saving(setup, capsys, device):
    root, model, data = setup
    run = root / f"run-{device}"
    code = main(["sft", "--model", str(model), "--dataset", f"{data}#48", "--max-steps", "4", "--batch-size", "4",
                 "--learning-rate", "3e-2", "--max-length", "64", "--save-steps", "1000", "--eval-steps", "2",
                 "--report-to", "none", "--device", device, "--output-dir", str(run), "--eval-dataset", str(data),
                 "--eval-generate-rows", "4", "--eval-max-tokens", "6", "--eval-metrics", "rouge,format,exact_match",
                 "--eval-gate", "rouge>=1.01"])
    err = capsys.readouterr().err
    assert code == 3 and (run / "final" / "adapter_config.json").exists()  # saved, then the gate failed
    assert "eval_gate: rougeL>=1.01 failed at the last step (rougeL 0." in err and "Traceback" not in err
    assert "eval step 4/4 | rouge1" in err  # progress: one line per eval step

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval_rows" in r]
    assert [r["step"] for r in evals] == [2, 4] and all(r["eval_rows"] == 4 for r in evals)
    answers = [json.loads(line) for line in (run / "eval_answers.jsonl").read_text().splitlines()]
    assert len(answers) == 8 and answers[0]["reference"] == "CODE apple OK"
    for r in evals:  # recomputed from the saved answers with eval/metrics.py: the same numbers
        mine = [a for a in answers if a["step"] == r["step"]]
        predictions, references = [a["answer"] for a in mine], [a["reference"] for a in mine]
        expected = {**M.rouge(predictions, references).columns, **M.format_kept(predictions, references).columns,
                    **M.exact_match(predictions, references).columns}
        assert {k: r[f"eval_{k}"] for k in expected} == pytest.approx(expected, abs=1e-6)
    assert (run / "eval_metrics.png").read_bytes()[:4] == b"\x89PNG" and (run / "loss.png").exists()


def test_a_gate_on_a_metric_not_computed_is_refused_at_load(capsys):
    assert main(["sft", "--dataset", "x.jsonl", "--eval-gate", "bleu>0.1", "--eval-dataset", "y.jsonl"]) == 2
    assert "eval_gate: bleu comes from the bleu metric; add it to --eval-metrics" in capsys.readouterr().err


@pytest.mark.parametrize(("answer", "reference", "kept"), [
    ('{"a": 1, "b": [2]}', '{"b": 0, "a": "x"}', True), ('{"a": 1}', '{"a": 1, "b": 2}', False),
    ("not json", '["x"]', False),
    ("## 概述\n...\n## 需求\n1. x", "## 概述\n支持\n\n## 需求\n1. y\n## 验收标准\n- z", False),
    ("# Overview\ntext\n##  Needs ##\n- a", "# Overview\n...\n## Needs\n...", True),
    ("## Needs\n## Overview", "# Overview\n## Needs", False), ("anything", "plain text", True), ("  ", "plain", False)])
def test_format_keeps_the_references_form(answer, reference, kept):
    assert M.format_kept([answer], [reference]).columns["format"] == float(kept)
