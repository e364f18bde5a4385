"""`tunesmith rlhf` through the console script on a tiny random model (runs judged by their run folder and messages,
and refusals, through its main() in this process: run_main)."""

import json

import pytest

from e2e_cli import WORDS, assert_preflight_recorded, read_metrics, run_cli, run_main


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """An easy preference: the chosen answer always ends with the marker token ' OK'."""
    path = tmp_path_factory.mktemp("pref") / "pairs.jsonl"
    rows = [{"prompt": f"code for {w}", "chosen": f"CODE {w} OK", "rejected": f"CODE {w} NO"} for w in WORDS]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_dpo_raises_the_chosen_rejected_margin_and_writes_an_adapter(tiny_model, pairs, tmp_path):
    run = tmp_path / "dpo"
    run_cli("rlhf", "--method", "dpo", "--model", tiny_model, "--dataset", f"{pairs}#48", "--max-steps", "12",
            "--batch-size", "4", "--learning-rate", "2e-2", "--beta", "0.1", "--logging-steps", "1",
            "--output-dir", run, "--report-to", "none")
    logs = [m for m in read_metrics(run) if "rewards/margins" in m]
    first, last = logs[0], logs[-1]
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at step 1
    assert last["rewards/margins"] > 0.1 and last["rewards/accuracies"] == 1.0
    assert last["loss"] < first["loss"] - 0.05
    assert {"adapter_model.safetensors", "tunesmith_template.json"} <= {p.name for p in (run / "final").iterdir()}
    assert_preflight_recorded(run)


def test_dpo_continues_an_sft_run_and_refuses_packing(tiny_model, toy_data, pairs, tmp_path):
    """Continuing a run: its base, its system prompt (inherited when unset), and what differs said before training."""
    sft = tmp_path / "sft"  # the runs here are judged by their folders and messages: in process
    run_main("sft", "--model", tiny_model, "--dataset", toy_data, "--max-steps", "2", "--output-dir", sft,
             "--report-to", "none", "--system", "You write codes.", "--max-length", "512")
    run = tmp_path / "dpo"
    proc = run_main("rlhf", "--method", "dpo", "--adapters", sft / "final", "--dataset", pairs, "--max-steps", "2",
                    "--output-dir", run, "--report-to", "none")
    import yaml

    assert yaml.safe_load((run / "config.yaml").read_text())["_resolved"]["base_model_folder"] == str(tiny_model)
    assert json.loads((run / "final" / "tunesmith_template.json").read_text())["default_system"] == "You write codes."
    assert f"max_length: {sft / 'final'} trained with 512, this run uses 2048" in proc.stderr
    other = run_main("rlhf", "--method", "dpo", "--adapters", sft / "final", "--dataset", pairs, "--max-steps", "1",
                     "--output-dir", tmp_path / "dpo2", "--report-to", "none", "--system", "Be brief.",
                     "--max-length", "512")
    assert "system prompt: " in other.stderr and "'You write codes.'" in other.stderr and "'Be brief.'" in other.stderr
    assert "max_length:" not in other.stderr
    packed = run_main("rlhf", "--dataset", pairs, "--packing", check=False)
    assert packed.returncode == 2 and "packing: not supported for preference data" in packed.stderr
