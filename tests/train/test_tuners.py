"""The tuners beyond LoRA/QLoRA/DoRA/full (train/tuners.py), each checked for what it claims: GaLore's optimizer
states live in the projection, LISA trains only the sampled layers and re-samples, freeze leaves the frozen weights
untouched, NEFTune's noise is there in training only, PiSSA starts from the base's outputs and saves an adapter for the
untouched base, rsLoRA's and LoRA+'s scales, and peft's other methods train adapters that merge."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from tunesmith import api
from tunesmith.config import SFTConfig, load
from tunesmith.errors import ConfigError
from tunesmith.models import load as models
from tunesmith.train import tuners

WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "toy.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"code for {w}"}, {"role": "assistant", "content": f"CODE {w} OK"}]}
            for w in WORDS]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def train(tiny, toy, tmp_path, callbacks=(), **keys):
    cfg = SFTConfig(model=str(tiny), dataset=[str(toy)], batch_size=2, report_to=["none"], logging_steps=1,
                    output_dir=str(tmp_path / keys.get("tuner", "lora")), **{"max_steps": 4, **keys})
    return api.sft(cfg, callbacks=list(callbacks))


class Probe(TrainerCallback):
    """Calls `look(model, optimizer, state)` at the chosen moments of training."""

    def __init__(self, look, when=("on_step_end",)):
        self.look = look
        for moment in when:
            setattr(self, moment, self._call)

    def _call(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.look(model, optimizer, state)


def weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def layer_of(name):
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else None


def probe_ids(tiny):
    from transformers import AutoTokenizer

    return torch.tensor([AutoTokenizer.from_pretrained(tiny)("code for apple")["input_ids"]])


def logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(ids).logits


def test_galore_keeps_adam_states_in_the_projection(tiny, toy, tmp_path):
    seen = {}

    def look(model, optimizer, state):
        inner = getattr(optimizer, "optimizer", optimizer)
        seen["type"] = type(inner).__module__
        for name, param in model.named_parameters():
            if param in inner.state and "exp_avg" in inner.state[param]:
                seen[name] = (tuple(param.shape), tuple(inner.state[param]["exp_avg"].shape))

    train(tiny, toy, tmp_path, [Probe(look)], tuner="galore", learning_rate=1e-3,
          galore={"rank": 8, "update_interval": 2, "scale": 0.25})
    assert seen["type"].startswith("galore_torch")
    up = seen["model.layers.0.mlp.up_proj.weight"]
    assert up[0] == (128, 64) and 8 in up[1] and math.prod(up[1]) == 8 * 128  # rank x the longer side
    q = seen["model.layers.1.self_attn.q_proj.weight"]
    assert math.prod(q[1]) == 8 * 64 < math.prod(q[0])
    assert seen["model.embed_tokens.weight"][0] == seen["model.embed_tokens.weight"][1]  # not a target: plain Adam


def test_lisa_trains_only_the_sampled_layers_and_resamples_each_interval(tiny, toy, tmp_path):
    steps, before = [], {}

    def snapshot(model, optimizer, state):
        before.update(weights(model))

    def look(model, optimizer, state):
        active = sorted({layer_of(n) for n, p in model.named_parameters() if p.requires_grad} - {None})
        changed = sorted({layer_of(n) for n, p in model.named_parameters() if not torch.equal(p, before[n])} - {None})
        embeddings_moved = not torch.equal(model.model.embed_tokens.weight, before["model.embed_tokens.weight"])
        states = {layer_of(n) for n, p in model.named_parameters()
                  if getattr(optimizer, "optimizer", optimizer).state.get(p)} - {None}
        steps.append((state.global_step, active, changed, embeddings_moved, sorted(states)))

    sampler = tuners.LisaSampler(layers=1, interval=2, seed=42)
    train(tiny, toy, tmp_path, [Probe(snapshot, ("on_step_begin",)), Probe(look)], tuner="lisa",
          lisa={"layers": 1, "interval": 2}, max_steps=8, learning_rate=1e-3, warmup_ratio=0.0)
    assert len(steps) == 8
    for step, active, changed, embeddings_moved, states in steps:
        drawn = sampler.draw(2, (step - 1) // 2)
        assert active == drawn and changed == drawn and states == drawn, step  # one layer, its states only
        assert embeddings_moved
    draws = [tuple(sampler.draw(2, k)) for k in range(4)]
    assert len(set(draws)) == 2  # both layers trained at some point (seed 42 draws 0, 0, 1, 0)
    assert [tuple(s[1]) for s in steps] == [d for d in draws for _ in (0, 1)]  # a new draw every 2 steps


def test_freeze_leaves_frozen_weights_bit_identical(tiny, toy, tmp_path):
    result = train(tiny, toy, tmp_path, tuner="freeze", freeze={"trainable_layers": 1}, learning_rate=1e-3)
    base = weights(AutoModelForCausalLM.from_pretrained(tiny))
    tuned = weights(AutoModelForCausalLM.from_pretrained(result.final_dir))
    for name, value in base.items():
        if layer_of(name) == 1:
            continue
        assert torch.equal(value, tuned[name]), name
    assert not torch.equal(base["model.layers.1.mlp.up_proj.weight"], tuned["model.layers.1.mlp.up_proj.weight"])


def test_neftune_noises_embeddings_in_training_only(tiny, toy, tmp_path):
    seen = []
    ids = probe_ids(tiny)

    def look(model, optimizer, state):
        embed = model.get_input_embeddings()
        clean = embed.weight[ids].detach()
        model.train()
        noisy = embed(ids).detach()
        model.eval()
        quiet = embed(ids).detach()
        model.train()
        seen.append((not torch.equal(noisy, clean), torch.equal(quiet, clean)))

    train(tiny, toy, tmp_path, [Probe(look)], neftune_alpha=5.0, max_steps=2)
    assert seen == [(True, True), (True, True)]
    seen.clear()
    train(tiny, toy, tmp_path / "plain", [Probe(look)], max_steps=2)
    assert seen == [(False, True), (False, True)]


def test_pissa_starts_at_the_base_and_saves_an_adapter_for_the_untouched_base(tiny, toy, tmp_path):
    ids = probe_ids(tiny)
    base_logits = logits(AutoModelForCausalLM.from_pretrained(tiny), ids)
    cfg = SFTConfig(model=str(tiny), dataset=[str(toy)], lora={"init": "pissa", "rank": 8})
    start = tuners.make_trainable(cfg, AutoModelForCausalLM.from_pretrained(tiny))
    residual = start.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    original = AutoModelForCausalLM.from_pretrained(tiny).model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(residual, original, atol=1e-3)  # the principal part moved into the adapter...
    assert torch.allclose(logits(start, ids), base_logits, atol=1e-4)  # ...and base - residual is exactly B0 A0

    trained = {}
    result = train(tiny, toy, tmp_path, [Probe(lambda m, o, s: trained.update(x=logits(m, ids)), ("on_train_end",))],
                   lora={"init": "pissa", "rank": 8}, learning_rate=1e-2)
    assert (result.run_dir / tuners.INITIAL_ADAPTER).is_dir()
    config = json.loads((result.final_dir / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["init_lora_weights"] is True  # converted: rank 2r on the original weights
    served = models.attach_adapters(AutoModelForCausalLM.from_pretrained(tiny), result.final_dir, trainable=False)
    assert not torch.allclose(trained["x"], base_logits, atol=1e-3)
    assert torch.allclose(logits(served, ids), trained["x"], atol=1e-4)


def test_rslora_scales_by_alpha_over_sqrt_rank(tiny):
    for rslora, expected in ((True, 32 / math.sqrt(16)), (False, 32 / 16)):
        cfg = SFTConfig(model=str(tiny), dataset=["x"], lora={"rank": 16, "alpha": 32, "rslora": rslora})
        model = tuners.make_trainable(cfg, AutoModelForCausalLM.from_pretrained(tiny))
        assert model.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"] == pytest.approx(expected)


def test_lora_plus_gives_b_a_larger_learning_rate(tiny, toy, tmp_path):
    groups = {}

    def look(model, optimizer, state):
        names = {id(p): n for n, p in model.named_parameters()}
        for group in getattr(optimizer, "optimizer", optimizer).param_groups:
            for p in group["params"]:
                kind = "B" if "lora_B" in names[id(p)] else "A" if "lora_A" in names[id(p)] else None
                if kind:
                    groups.setdefault(kind, set()).add(group["lr"])

    train(tiny, toy, tmp_path, [Probe(look, ("on_train_begin",))], lora={"plus_ratio": 16},
          learning_rate=1e-3, warmup_ratio=0.0, lr_scheduler="constant")
    (lr_a,), (lr_b,) = groups["A"], groups["B"]
    assert lr_b == pytest.approx(16 * lr_a) and lr_a == pytest.approx(1e-3)


@pytest.mark.parametrize("tuner, args", [("vera", {}), ("ia3", {}), ("loha", {"r": 4}), ("lokr", {"r": 4}),
                                         ("oft", {}), ("boft", {}), ("adalora", {"init_r": 6, "target_r": 2})])
def test_other_peft_methods_train_their_adapter_and_merge(tuner, args, tiny, toy, tmp_path):
    ids = probe_ids(tiny)
    ranks = []

    def look(model, optimizer, state):  # AdaLoRA: singular values pruned to the budget by the end
        singular = [p for n, p in model.named_parameters() if "lora_E" in n]
        ranks.append((sum(int((p != 0).sum()) for p in singular), len(singular)))

    result = train(tiny, toy, tmp_path, [Probe(look, ("on_train_end",))], tuner=tuner, peft={"args": args},
                   learning_rate=1e-2, max_steps=6)
    config = json.loads((result.final_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == tuner.upper()
    base = AutoModelForCausalLM.from_pretrained(tiny)
    adapted = models.attach_adapters(AutoModelForCausalLM.from_pretrained(tiny), result.final_dir, trainable=False)
    assert not torch.allclose(logits(adapted, ids), logits(base, ids), atol=1e-4)  # the adapter learned something
    merged = adapted.merge_and_unload()
    assert torch.allclose(logits(merged, ids), logits(adapted, ids), atol=1e-4)
    if tuner == "adalora":  # ranks pruned from init_r to the budget of target_r per module on average
        kept, modules = ranks[0]
        assert 0 < kept <= 2 * modules < 6 * modules


def test_tuner_settings_are_refused_where_they_do_nothing():
    with pytest.raises(ConfigError, match=r"galore: only read with --tuner galore \(tuner is lora\)"):
        load(SFTConfig, ["--dataset", "x", "--galore.rank", "8"])
    with pytest.raises(ConfigError, match="lora.init: pissa initialises LoRA adapters; tuner is vera"):
        load(SFTConfig, ["--dataset", "x", "--tuner", "vera", "--lora.init", "pissa"])
    with pytest.raises(ConfigError, match="tuner: lisa changes which layers train"):
        load(SFTConfig, ["--dataset", "x", "--tuner", "lisa", "--nproc-per-node", "2"])
    with pytest.raises(ConfigError, match="neftune_alpha: sft and pt only"):
        from tunesmith.config.rlhf import RLHFConfig

        load(RLHFConfig, ["--method", "dpo", "--dataset", "x", "--neftune-alpha", "5"])
    with pytest.raises(ConfigError, match="peft.args: bogus not a field of peft's VeraConfig"):
        tuners.peft_method_config("vera", {"bogus": 1})
