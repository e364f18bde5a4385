"""The merge check's bound: float32 rounding of a model with large logits passes (SmolLM2-135M's adapters differ by
~1e-4 from their merge, which an absolute 1e-4 bound refused about half the time), a merge that drops the adapter is
still refused."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunesmith.export.merge import MergeMismatch, merge_adapter
from tunesmith.templates import Template


@pytest.fixture(scope="module")
def loud_base(tiny_model, tmp_path_factory):
    """The tiny base with its final norm scaled 20,000x: logits in the thousands, as rounding sees a big model's."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model.model.norm.weight.data *= 20_000
    folder = tmp_path_factory.mktemp("models") / "loud"
    model.save_pretrained(folder)
    return folder


def test_rounding_of_large_logits_is_not_a_mismatch(loud_base, lora_run):
    merged, diff = merge_adapter(loud_base, lora_run / "final", Template.load(lora_run / "final"))
    assert diff > 1e-4  # what the old absolute bound refused
    assert merged is not None


def test_a_merge_that_loses_the_adapter_is_refused(loud_base, lora_run, monkeypatch):
    from peft.tuners.tuners_utils import BaseTuner

    monkeypatch.setattr(BaseTuner, "merge_and_unload", lambda self: self.unload())  # the adapter thrown away
    with pytest.raises(MergeMismatch, match="--verify false"):
        merge_adapter(loud_base, lora_run / "final", Template.load(lora_run / "final"))
