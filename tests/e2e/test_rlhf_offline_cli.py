"""`tunesmith rlhf --method kto | orpo | cpo | simpo | rm` through the console script on a tiny random model: orpo in
a new process, the other runs (judged by their run folder) through its main() in this process (run_main)."""

import json

import pytest
import yaml

from e2e_cli import WORDS, assert_preflight_recorded, read_metrics, run_cli, run_main

# A 2-layer model gains nothing from a second thread, and OpenMP threads spin badly when CI shares the cores.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
RUN_FILES = {"config.yaml", "metrics.jsonl", "train.log", "loss.png", "final"}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """An easy preference: the chosen answer always ends with the marker token ' OK'."""
    path = tmp_path_factory.mktemp("pref") / "pairs.jsonl"
    rows = [{"prompt": f"code for {w}", "chosen": f"CODE {w} OK", "rejected": f"CODE {w} NO"} for w in WORDS]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def rlhf(method, model, data, run, *flags, check=True, runner=run_main):
    return runner("rlhf", "--method", method, "--model", model, "--dataset", data, "--logging-steps", "1",
                  "--output-dir", run, "--report-to", "none", *flags, env=ONE_THREAD, check=check)


def load_adapter(model_folder, final):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_folder), str(final))


def test_kto_lifts_desirable_answers_above_undesirable_ones(tiny_model, pairs, tmp_path):
    run = tmp_path / "kto"  # the pairs are unpaired into desirable / undesirable rows
    rlhf("kto", tiny_model, f"{pairs}#48", run, "--max-steps", "12", "--batch-size", "8", "--learning-rate", "2e-2")
    logs = [m for m in read_metrics(run) if "rewards/margins" in m]
    assert logs[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at step 1
    last = logs[-4:]
    assert sum(m["rewards/margins"] for m in last) / 4 > 0.1
    # each kind moves its own way from the reference: desirable up, undesirable down (inverted labels fail here)
    assert sum(m["rewards/chosen"] for m in last) > 0 > sum(m["rewards/rejected"] for m in last)
    assert sum(m["loss"] for m in last) / 4 < logs[0]["loss"] - 0.01
    assert "kl" in logs[-1] and logs[-1]["tokens_per_s"] > 0
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    assert yaml.safe_load((run / "config.yaml").read_text())["_resolved"]["train_rows"] == 96
    assert_preflight_recorded(run)
    load_adapter(tiny_model, run / "final")


@pytest.mark.parametrize("method", ["orpo", "cpo", "simpo"])
def test_reference_free_methods_train_and_write_an_adapter(method, tiny_model, pairs, tmp_path):
    run = tmp_path / method
    # orpo through the console script, the other two through its main() in this process (the same flags and run)
    rlhf(method, tiny_model, pairs, run, "--max-steps", "2", "--batch-size", "4",
         runner=run_cli if method == "orpo" else run_main)
    logs = [m for m in read_metrics(run) if "loss" in m]
    assert len(logs) == 2 and {"rewards/chosen", "rewards/rejected", "rewards/margins"} <= set(logs[-1])
    # tokens/s counts both sides of each pair (the Trainer's own count finds no input_ids in pair batches: 0)
    assert all(m["tokens_per_s"] > 0 for m in logs) and logs[-1]["num_input_tokens_seen"] > 2 * 4 * 2 * 5
    if method == "orpo":
        assert "log_odds_ratio" in logs[-1]
    else:  # SimPO is CPO without the NLL term
        assert (logs[-1]["nll_loss"] == 0.0) == (method == "simpo")
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["method"] == method and resolved["_resolved"]["train_pairs"] == len(WORDS)
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    assert {"adapter_model.safetensors", "tunesmith_template.json"} <= {p.name for p in (run / "final").iterdir()}
    assert_preflight_recorded(run)
    load_adapter(tiny_model, run / "final")


def test_reward_model_learns_the_preference_and_final_loads_as_a_classifier(tiny_model, pairs, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from tunesmith.models.reward import load_reward_model, score
    from tunesmith.templates import Template

    run = tmp_path / "rm"
    rlhf("rm", tiny_model, f"{pairs}#48", run, "--max-steps", "12", "--batch-size", "4", "--learning-rate", "5e-3")
    logs = [m for m in read_metrics(run) if "accuracy" in m]
    assert logs[0]["accuracy"] < 0.5 and logs[-1]["accuracy"] == 1.0
    assert logs[-1]["margin"] > logs[0]["margin"] + 1.0
    final = run / "final"
    assert_preflight_recorded(run)  # the score head trains whole beside the adapter: allowed (modules_to_save)
    assert not (final / "adapter_config.json").exists()  # merged: a plain transformers folder
    assert AutoModelForSequenceClassification.from_pretrained(final).config.num_labels == 1
    model, tokenizer = load_reward_model(final)
    template = Template.load(final)
    sequences = [template.render([{"role": "user", "content": f"code for {w}"},
                                  {"role": "assistant", "content": f"CODE {w} {mark}"}])[0]
                 for w in WORDS for mark in ("OK", "NO")]
    scores = score(model, tokenizer, sequences)
    assert all(ok > no for ok, no in zip(scores[::2], scores[1::2]))


def test_bad_kto_label_stops_the_run_with_file_and_line(tiny_model, tmp_path):
    data = tmp_path / "kto.jsonl"
    rows = [{"prompt": f"code for {w}", "completion": f"CODE {w} OK", "label": True} for w in WORDS[:3]]
    rows[1]["label"] = "good"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    expected = f"{data}:2: label: expected true (desirable) or false (undesirable), got 'good'"
    bad = run_main("rlhf", "--method", "kto", "--model", tiny_model, "--dataset", data, "--output-dir", tmp_path / "k",
                   check=False)
    assert bad.returncode == 1 and expected in bad.stderr and not (tmp_path / "k" / "final").exists()
    checked = run_main("data", "check", data, "--kind", "kto", check=False)
    assert checked.returncode == 1 and expected in checked.stdout
