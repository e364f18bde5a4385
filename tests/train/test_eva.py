"""lora.init eva (train/tuners.py initialize_from_data): LoRA's A comes from the principal components of each layer's
inputs on the run's first training batches, exactly as peft's initialize_lora_eva_weights computes it on those batches;
B starts at 0 (the run starts at the base model), ranks move between layers, and the trained adapter loads as LoRA."""

import json
from itertools import islice

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback
from trl import SFTTrainer

from tunesmith import api
from tunesmith.config import SFTConfig, load
from tunesmith.errors import ConfigError
from tunesmith.models import load as models
from tunesmith.train import tuners
from tunesmith.train.preflight import load_template
from tunesmith.train.setup import load_trainable, trl_args
from tunesmith.train.sft import sft_data

WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "amber", "frost"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "toy.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"code for {w}"},
                          {"role": "assistant", "content": f"CODE {w} OK, the word {w} is coded now"}]} for w in WORDS]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def eva_cfg(tiny, toy, tmp_path, **keys):
    keys = {"lora": {"init": "eva", "rank": 4}, "batch_size": 4, **keys}
    return SFTConfig(model=str(tiny), dataset=[str(toy)], report_to=["none"], logging_steps=1,
                     output_dir=str(tmp_path / "run"), max_steps=4, **keys)


def trainer_for(cfg, tmp_path):
    template, folder = load_template(cfg)
    data = sft_data(cfg, template)
    model, device, dtype = load_trainable(cfg, folder)
    return SFTTrainer(model=model, args=trl_args(cfg, tmp_path / "t", device, dtype, False), train_dataset=data.train,
                      processing_class=template.tokenizer)


def adapters(model, part):
    return {name: m.lora_A["default"].weight.detach().clone() if part == "A" else m.lora_B["default"].weight.detach()
            for name, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}


def test_eva_start_is_peft_eva_on_the_runs_first_batches(tiny, toy, tmp_path):
    from peft.tuners.lora.eva import initialize_lora_eva_weights

    cfg = eva_cfg(tiny, toy, tmp_path)
    trainer = trainer_for(cfg, tmp_path)
    batches = list(islice(trainer.get_train_dataloader(), cfg.lora.eva_batches))
    ranks = tuners.initialize_from_data(cfg, trainer)
    ours = adapters(trainer.model, "A")

    # peft's own call on the same batches (the run's dataloader yields them again: seeded order) gives the same A
    again = list(islice(trainer.get_train_dataloader(), cfg.lora.eva_batches))
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))
    reference = trainer_for(cfg, tmp_path).model
    initialize_lora_eva_weights(reference, dataloader=batches, show_progress_bar=False)
    theirs = adapters(reference, "A")
    assert ours.keys() == theirs.keys() and all(torch.allclose(ours[k], theirs[k], atol=1e-6) for k in ours)
    assert sorted(set(ranks.values())) != [4] and sum(ranks.values()) == 4 * len(ranks)  # moved, total kept

    # EVA's defining property: A's rows are the top principal components of the layer's inputs on answer tokens
    inputs = []
    q_proj = trainer.model.base_model.model.model.layers[1].self_attn.q_proj
    handle = q_proj.base_layer.register_forward_hook(lambda m, args, out: inputs.append(args[0]))
    with torch.no_grad(), trainer.model.disable_adapter():
        for batch in batches:
            trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    handle.remove()
    rows = torch.cat([x[(b["labels"] != -100) & b["attention_mask"].bool()] for x, b in zip(inputs, batches)])
    rows = rows - rows.mean(0)
    principal = torch.linalg.svd(rows, full_matrices=False).Vh
    a = ours["base_model.model.model.layers.1.self_attn.q_proj"]
    top = min(2, a.shape[0])
    assert torch.nn.functional.cosine_similarity(a[:top], principal[:top]).abs().min() > 0.95

    # B = 0: the run starts at the base model; a gaussian start does not, and its A differs
    assert all(not b.any() for b in adapters(trainer.model, "B").values())
    gaussian = tuners.make_trainable(SFTConfig(model=str(tiny), dataset=["x"], lora={"init": "gaussian", "rank": 4}),
                                     AutoModelForCausalLM.from_pretrained(tiny))
    assert not torch.allclose(adapters(gaussian, "A")["base_model.model.model.layers.1.self_attn.q_proj"][:top],
                              a[:top], atol=1e-2)


def test_eva_run_trains_and_its_adapter_loads_as_lora(tiny, toy, tmp_path):
    from transformers import AutoTokenizer

    ids = torch.tensor([AutoTokenizer.from_pretrained(tiny)("code for apple")["input_ids"]])
    seen = {}

    class Look(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen["ranks"] = {n: m.r["default"] for n, m in model.named_modules() if hasattr(m, "lora_A")}

        def on_train_end(self, args, state, control, model=None, **kwargs):
            model.eval()
            with torch.no_grad():
                seen["logits"] = model(ids).logits

    result = api.sft(eva_cfg(tiny, toy, tmp_path, learning_rate=1e-2), callbacks=[Look()])
    config = json.loads((result.final_dir / "adapter_config.json").read_text())
    assert config["init_lora_weights"] == "eva" and config["rank_pattern"]  # EVA's ranks, saved
    assert {k.removeprefix("base_model.model."): v for k, v in seen["ranks"].items() if v != 4} == \
        config["rank_pattern"]
    served = models.attach_adapters(AutoModelForCausalLM.from_pretrained(tiny), result.final_dir, trainable=False)
    with torch.no_grad():
        assert torch.allclose(served(ids).logits, seen["logits"], atol=1e-5)


def test_eva_is_refused_where_it_cannot_run(tiny, toy, tmp_path):
    with pytest.raises(ConfigError, match="lora.init: eva reads the layer inputs of sft and pt"):
        from tunesmith.config.rlhf import RLHFConfig

        load(RLHFConfig, ["--method", "dpo", "--dataset", "x", "--lora.init", "eva"])
    with pytest.raises(ConfigError, match="lora.init: eva runs the model on training batches before Opacus"):
        load(SFTConfig, ["--dataset", "x", "--lora.init", "eva", "--dp", "epsilon=8"])
    with pytest.raises(ConfigError, match="lora.eva_batches/eva_rho: only read with lora.init eva"):
        load(SFTConfig, ["--dataset", "x", "--lora.eva-batches", "2"])
    with pytest.raises(ConfigError, match=r"needs at least rank x eva_rho = 64 answer tokens per batch"):
        api.sft(eva_cfg(tiny, toy, tmp_path, batch_size=1, lora={"init": "eva", "rank": 32}))
