"""On CPU, TRL's fused LM head projected every position (prompt and padding too) and zeroed the unlabelled ones after;
on CUDA it projects only the labelled ones. Training now does the same on CPU (models/patches/trl_lm_head.py): fewer
rows through the head, the same loss and gradients. Before: the rows counted below were all 2 x 11 positions."""

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl.trainer import utils as trl_utils

from tunesmith.config import SFTConfig
from tunesmith.models.patches.trl_lm_head import labelled_positions_only
from tunesmith.train.setup import run_trainer

PROMPT = 4  # unlabelled positions at the start of each 12-token row


@pytest.fixture
def rows_projected(monkeypatch):
    """How many positions each call of TRL's chunked log-prob function projects through the LM head."""
    seen = []
    upstream = trl_utils._ChunkedLogProbFunction

    class Counting(upstream):
        @classmethod
        def apply(cls, hidden, *args):
            seen.append(hidden.shape[0])
            return upstream.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Counting)
    return seen


def batch(vocab):
    ids = torch.randint(3, vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :PROMPT] = -100
    return ids, labels


def loss_and_grads(model, ids, labels):
    model.zero_grad()
    out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_only_labelled_positions_go_through_the_head_with_the_same_loss_and_gradients(tiny, rows_projected):
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    ids, labels = batch(model.config.vocab_size)
    every_loss, every_grads = loss_and_grads(model, ids, labels)
    with labelled_positions_only("cpu"):
        labelled_loss, labelled_grads = loss_and_grads(model, ids, labels)
    assert rows_projected == [2 * 11, 2 * (11 - PROMPT + 1)]  # shifted: position t scores token t+1
    assert torch.allclose(labelled_loss, every_loss, atol=1e-6)
    assert every_grads.keys() == labelled_grads.keys() and every_grads
    for name, grad in every_grads.items():
        assert torch.allclose(labelled_grads[name], grad, atol=1e-6), name
    assert trl_utils._use_triton(torch.device("cpu")) is False  # put back after the block


def test_a_cpu_training_run_projects_only_labelled_positions(tiny, tmp_path, rows_projected):
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    ids, labels = batch(model.config.vocab_size)
    data = datasets.Dataset.from_list([{"input_ids": i, "labels": lab} for i, lab in zip(ids.tolist(),
                                                                                        labels.tolist())])
    cfg = SFTConfig(dataset=["x"], method="full", max_steps=1, batch_size=2, report_to=["none"],
                    output_dir=str(tmp_path), save_steps=1000)
    run_trainer(cfg, tmp_path, model, AutoTokenizer.from_pretrained(tiny), data, None, "cpu", torch.float32, None,
                None)
    assert rows_projected == [2 * (11 - PROMPT + 1)]
