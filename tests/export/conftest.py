"""Fixtures for tests/export: a tiny random model and a LoRA run trained on it in-process (a few steps, seconds)."""

import json

import pytest
from tiny import make_tiny_model
from export_system import SYSTEM  # a module of its own: `from conftest import` finds any conftest

WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "amber", "frost"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "toy.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"code for {w}"}, {"role": "assistant", "content": f"CODE {w} OK"}]}
            for w in WORDS]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="session")
def lora_run(tiny_model, toy_data, tmp_path_factory):
    """runs/toy with a trained adapter in final/ (lr high enough that the adapter moves the logits)."""
    from tunesmith import SFTConfig, sft

    run = tmp_path_factory.mktemp("runs") / "toy"
    sft(SFTConfig(model=str(tiny_model), dataset=[str(toy_data)], max_steps=4, batch_size=4, learning_rate=2e-2,
                  output_dir=str(run), report_to=[]))
    return run




@pytest.fixture(scope="session")
def system_run(tiny_model, toy_data, tmp_path_factory):
    """runs/toysys: like lora_run, trained with --system (saved in final/tunesmith_template.json)."""
    from tunesmith import SFTConfig, sft

    run = tmp_path_factory.mktemp("runs") / "toysys"
    sft(SFTConfig(model=str(tiny_model), dataset=[str(toy_data)], max_steps=2, batch_size=4, system=SYSTEM,
                  output_dir=str(run), report_to=[]))
    return run
