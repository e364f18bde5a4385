"""warmup_ratio never takes the whole run: a 1-step run's only step trains."""

import datasets
import pytest
import torch

from tunesmith.config import SFTConfig
from tunesmith.train.setup import run_trainer


def tiny_model():
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=32, tie_word_embeddings=True,
                         pad_token_id=0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def stub_tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                   pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def rows(n):
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 128, (12,), generator=gen).tolist()
        out.append({"input_ids": ids, "labels": [-100] * 3 + ids[3:]})
    return out


def train(tmp_path, steps, **kw):
    cfg = SFTConfig(dataset=["x"], method="full", max_steps=steps, batch_size=2, learning_rate=1e-3,
                    report_to=["none"], output_dir=str(tmp_path), save_steps=1000, **{"logging_steps": 1, **kw})
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = run_trainer(cfg, tmp_path, model, stub_tokenizer(), datasets.Dataset.from_list(rows(2 * steps)), None,
                          "cpu", torch.float32, None, None)
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    moved = any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    return trainer, lrs, moved


def test_a_one_step_run_trains_at_its_learning_rate(tmp_path):
    _, lrs, moved = train(tmp_path, 1)  # the default warmup_ratio 0.03: ceil made its only step lr 0
    assert lrs == [pytest.approx(1e-3)] and moved


def test_warmup_counts_as_transformers_but_leaves_a_step(tmp_path):
    trainer, lrs, _ = train(tmp_path, 3, warmup_ratio=0.5, lr_scheduler="constant_with_warmup")
    assert trainer.args.warmup_steps == 2  # ceil(1.5), as transformers counts
    assert lrs == [0.0, pytest.approx(5e-4), pytest.approx(1e-3)]
    trainer, lrs, _ = train(tmp_path / "all", 2, warmup_ratio=0.9, lr_scheduler="constant_with_warmup")
    assert trainer.args.warmup_steps == 1 and lrs[-1] == pytest.approx(1e-3)  # ceil(1.8) = 2 would be the whole run


def test_the_last_step_is_logged_whatever_logging_steps_says(tmp_path):
    """2 steps at logging_steps 10 logged step 1 only: the run ended on 'loss a -> a', as if nothing was learnt."""
    trainer, _, _ = train(tmp_path, 3, logging_steps=10)
    assert [h["step"] for h in trainer.state.log_history if "loss" in h] == [1, 3]
