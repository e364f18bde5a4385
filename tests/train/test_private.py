"""Differentially private SFT (train/private.py on Opacus): each sample's gradient is clipped, noise of the planned
scale is added, the epsilon recorded is what Opacus' accountant gives for the steps taken, a resumed run keeps
spending the same budget, and settings DP-SGD cannot honour are refused."""

import functools
import json
import math
import shutil

import pytest
import torch
import yaml
from transformers import TrainerCallback

from tunesmith import api
from tunesmith.config import SFTConfig, load
from tunesmith.errors import ConfigError
from tunesmith.train.private import ACCOUNTANT_FILE, per_sample_loss

WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "amber", "frost", "lemon", "orbit", "pearl", "quartz",
         "delta", "ember", "flint", "grove"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "toy.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"code for {w}"}, {"role": "assistant", "content": f"CODE {w} OK"}]}
            for w in WORDS]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module", autouse=True)
def noise_search_once():
    """Opacus' search for the noise that spends a budget (seconds of its accountant per try, on CPU) is a pure function
    of (epsilon, delta, sample rate, steps, accountant): runs of the same plan here search it once."""
    from opacus.accountants import utils

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(utils, "get_noise_multiplier", functools.cache(utils.get_noise_multiplier))
        yield


def private_run(tiny, toy, out, callbacks=(), **keys):
    cfg = SFTConfig(model=str(tiny), dataset=[str(toy)], batch_size=4, report_to=["none"], output_dir=str(out),
                    learning_rate=1e-3, **{"max_steps": 4, "logging_steps": 1, "dp": {"epsilon": 8}, **keys})
    return api.sft(cfg, callbacks=list(callbacks))


class ClipProbe(TrainerCallback):
    """Before each step: every sample's gradient (Opacus' grad_sample). After it: the sum of clipped gradients and the
    noisy gradient the optimizer used."""

    def __init__(self):
        self.before, self.after = [], []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.before.append({n: p.grad_sample.detach().clone() for n, p in model.named_parameters()
                            if p.requires_grad and p.grad_sample is not None})

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.after.append({n: (p.summed_grad.detach().clone(), p.grad.detach().clone())
                           for n, p in model.named_parameters() if p.requires_grad})


def test_each_sample_gradient_is_clipped_and_noise_is_added(tiny, toy, tmp_path):
    clip = 0.01  # far below these gradients' norms: every sample is clipped
    probe = ClipProbe()
    # one log line: each costs the accountant's epsilon (seconds), and the clipping does not need them
    result = private_run(tiny, toy, tmp_path / "run", [probe], dp={"epsilon": 8, "max_grad_norm": clip},
                         logging_steps=4)
    privacy = yaml.safe_load((result.run_dir / "config.yaml").read_text())["_resolved"]["privacy"]
    sigma, expected_batch = privacy["dp_noise_multiplier"], 4
    assert len(probe.before) == len(probe.after) == 4
    for per_sample, summed_and_noisy in zip(probe.before, probe.after):
        names = sorted(per_sample)
        norms = torch.stack([per_sample[n].flatten(1).norm(dim=1) for n in names], dim=1).norm(dim=1)
        assert ((norms > clip) | (norms == 0)).all()  # 0: an empty Poisson draw's all-masked row
        factor = (clip / (norms + 1e-6)).clamp(max=1.0)
        noise = []
        for n in names:
            clipped_sum = torch.einsum("i,i...->...", factor, per_sample[n])
            summed, noisy = summed_and_noisy[n]
            assert torch.allclose(summed, clipped_sum, atol=1e-6), n  # the sum of clipped per-sample gradients
            noise.append((noisy * expected_batch - summed).flatten())
        noise = torch.cat(noise)
        assert noise.std().item() == pytest.approx(sigma * clip, rel=0.05)  # N(0, (sigma * C)^2) per weight
        assert noise.mean().abs().item() < 0.05 * sigma * clip


def test_epsilon_recorded_is_opacus_accountant_for_the_steps_taken(tiny, toy, tmp_path):
    from opacus.accountants import PRVAccountant, RDPAccountant

    for accountant, cls in (("prv", PRVAccountant), ("rdp", RDPAccountant)):
        result = private_run(tiny, toy, tmp_path / accountant, dp={"epsilon": 3, "delta": 1e-5,
                                                                   "accountant": accountant})
        privacy = yaml.safe_load((result.run_dir / "config.yaml").read_text())["_resolved"]["privacy"]
        reference = cls()
        reference.history = [(privacy["dp_noise_multiplier"], 4 / len(WORDS), result.steps)]
        assert privacy["dp_epsilon"] == pytest.approx(reference.get_epsilon(delta=1e-5), rel=1e-6)
        assert privacy["dp_epsilon"] == pytest.approx(3, rel=0.02)  # the noise was chosen to spend the budget
        metrics = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert metrics[-1]["dp_epsilon"] == privacy["dp_epsilon"]
        spent = [m["dp_epsilon"] for m in metrics if "loss" in m]
        assert spent == sorted(spent) and spent[-1] == pytest.approx(privacy["dp_epsilon"], abs=1e-3)
        assert "epsilon = " in (result.final_dir / "README.md").read_text()
        assert "privacy" in yaml.safe_load((result.final_dir / "config.yaml").read_text())["_resolved"]


def test_a_resumed_run_keeps_spending_the_same_budget(tiny, toy, tmp_path):
    # the plan of the first test (4 steps at epsilon 8): its noise search is shared; one log line per run
    plan = dict(max_steps=4, save_steps=2, logging_steps=4)
    whole = private_run(tiny, toy, tmp_path / "whole", **plan)
    spent = yaml.safe_load((whole.run_dir / "config.yaml").read_text())["_resolved"]["privacy"]["dp_epsilon"]
    history = json.loads((whole.run_dir / "checkpoint-2" / ACCOUNTANT_FILE).read_text())
    assert sum(h[2] for h in history) == 2  # the steps taken before the checkpoint

    # the same run, cut after its checkpoint-2 (an identical second run would only repeat it)
    shutil.rmtree(whole.run_dir / "checkpoint-4")
    shutil.rmtree(whole.final_dir)
    resumed = private_run(tiny, toy, tmp_path / "whole", **plan, resume=True)
    again = yaml.safe_load((resumed.run_dir / "config.yaml").read_text())["_resolved"]["privacy"]["dp_epsilon"]
    assert again == pytest.approx(spent, rel=1e-9)


def test_the_loss_of_a_sample_does_not_depend_on_the_others():
    logits = torch.randn(2, 6, 11)
    labels = torch.tensor([[-100, 3, 4, -100, -100, -100], [-100, 1, 2, 3, 4, 5]])
    alone = per_sample_loss(logits[:1], labels[:1])
    assert torch.allclose(per_sample_loss(logits, labels)[0], alone[0])
    assert math.isfinite(per_sample_loss(logits, torch.full_like(labels, -100)).sum().item())


@pytest.mark.parametrize("flags, message", [
    (["--packing"], "packing: a packed row mixes samples"),
    (["--grad-accum", "2"], "grad_accum: DP-SGD draws each step's batch by Poisson sampling"),
    (["--tuner", "galore"], "tuner: dp trains lora, qlora or full"),
    (["--nproc-per-node", "2"], "nproc_per_node: dp runs in one process"),
])
def test_settings_dp_sgd_cannot_honour_are_refused(flags, message):
    with pytest.raises(ConfigError, match=message):
        load(SFTConfig, ["--dataset", "x", "--dp", "epsilon=8,delta=1e-5,max_grad_norm=1.0", *flags])
    cfg = load(SFTConfig, ["--dataset", "x", "--dp", "epsilon=4,delta=1e-6,max_grad_norm=0.5"])
    assert (cfg.dp.epsilon, cfg.dp.delta, cfg.dp.max_grad_norm) == (4, 1e-6, 0.5)
