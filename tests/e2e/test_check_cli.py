"""`tunesmith check`: every self-check passes on a sound setup and fails when the thing it guards is broken."""

import json

import pytest
import torch

from e2e_cli import run_cli

import tunesmith.selfcheck as sc


def test_all_checks_pass_through_the_console_script(tiny_model):
    proc = run_cli("check", "--model", tiny_model, "--json")
    report = json.loads(proc.stdout)
    assert report["ok"] and proc.returncode == 0
    assert [c["name"] for c in report["checks"]] == ["batch x accumulation", "packing", "resume", "merge parity",
                                                     "bf16 drift", "template parity"]


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory):
    from tunesmith.models.load import load_tokenizer
    from tunesmith.templates import Template

    work = tmp_path_factory.mktemp("check")
    return sc.tiny_model_like(tiny_model, work / "model"), sc._data(work / "rows.jsonl"), Template(load_tokenizer(tiny_model))


def test_a_loss_averaged_per_micro_batch_fails_batch_times_accumulation(setup, tmp_path, monkeypatch):
    from trl import SFTTrainer

    model, data, _ = setup
    original = SFTTrainer.compute_loss

    def per_micro_batch(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return original(self, model, inputs, return_outputs, num_items_in_batch=None)  # the peers' old bug

    monkeypatch.setattr(SFTTrainer, "compute_loss", per_micro_batch)
    ok, measured = sc.batch_times_accumulation(model, data, tmp_path)
    assert not ok, measured


def test_packed_samples_that_see_each_other_fail_packing(setup, monkeypatch):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model, _, template = setup
    original = DataCollatorForLanguageModeling.__call__

    def no_restart(self, examples):
        batch = original(self, examples)
        batch["position_ids"] = torch.arange(batch["input_ids"].shape[1]).unsqueeze(0)  # one long sequence
        return batch

    monkeypatch.setattr(DataCollatorForLanguageModeling, "__call__", no_restart)
    assert not sc.packing(model, template)[0]


def test_a_resume_that_loses_the_optimizer_state_fails_resume(setup, tmp_path, monkeypatch):
    from transformers import Trainer

    model, data, _ = setup
    monkeypatch.setattr(Trainer, "_load_optimizer_and_scheduler", lambda self, checkpoint: None)
    assert not sc.resume(model, data, tmp_path)[0]


def test_a_merge_that_scales_the_update_wrong_fails_merge_parity(setup, tmp_path, monkeypatch):
    from peft.tuners.lora.layer import Linear

    model, data, _ = setup
    original = Linear.get_delta_weight
    monkeypatch.setattr(Linear, "get_delta_weight", lambda self, adapter: 0.5 * original(self, adapter))
    assert not sc.merge_parity(model, data, tmp_path)[0]


def test_a_lossy_half_precision_cast_fails_bf16_drift(setup, monkeypatch):
    model, _, template = setup

    def lossy(net):
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(1 + 0.2 * torch.randn_like(p))  # what a cast through a too-narrow format would do
        return net.to(torch.bfloat16)

    monkeypatch.setattr(sc, "to_bf16", lossy)
    assert not sc.bf16_drift(model, template)[0]


def test_a_serving_path_that_renders_prompts_unlike_training_fails_template_parity(setup):
    """The drift ms-swift #6267 shipped: the serving side added to the system prompt what training never saw."""
    from transformers import AutoTokenizer

    from tunesmith.templates import Template

    _, _, good = setup
    drifting = Template(AutoTokenizer.from_pretrained(good.tokenizer.name_or_path))
    served = drifting.render_prompt
    drifting.render_prompt = lambda messages, **kw: served(
        [{**messages[0], "content": messages[0]["content"] + " Today is Monday."}, *messages[1:]], **kw)
    assert sc.template_parity(good)[0]
    assert not sc.template_parity(drifting)[0]


def test_a_template_that_rewrites_long_conversations_trains_each_turn_as_served(setup):
    from transformers import AutoTokenizer

    from tunesmith.templates import Template

    _, _, good = setup
    tokenizer = AutoTokenizer.from_pretrained(good.tokenizer.name_or_path)
    tokenizer.chat_template = "{% if messages|length > 3 %}Long conversation.\n{% endif %}" + good.tokenizer.chat_template
    ok, measured = sc.template_parity(Template(tokenizer))  # one sample per turn, each exactly as served
    assert ok and "per-turn samples" in measured, measured
