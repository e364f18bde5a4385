"""The pieces of tunesmith/train/ppo.py: GAE against a hand computation, and on a tiny model that the reference is
the base with the adapter off, the first ratio is 1, the score lands on the answer's last token, and an update moves
only the adapter and the value head."""


import pytest
import torch

from tunesmith.config.rlhf import RLHFConfig
from tunesmith.train import ppo

CFG = RLHFConfig(method="ppo", dataset=["x"], rewards={"funcs": ["length"]}, batch_size=4,
                 rollout={"temperature": 1.0, "top_p": 1.0, "max_completion_length": 6},
                 ppo={"kl_coef": 0.05, "gamma": 1.0, "gae_lambda": 0.95, "epochs": 2, "num_mini_batches": 2,
                      "cliprange": 0.2, "cliprange_value": 0.2, "vf_coef": 0.1})


@pytest.mark.parametrize("lam, advantages, returns", [
    (1.0, [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]),   # Monte Carlo: every token gets the final reward minus its value
    (0.0, [0.0, 0.0, 0.5], [0.5, 0.5, 1.0]),   # one-step: r_t + V(t+1) - V(t)
])
def test_gae_matches_a_hand_computation(lam, advantages, returns):
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0]])
    values = torch.tensor([[0.5, 0.5, 0.5], [1.0, 1.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]]).float()  # the second answer ended at its second token
    adv, ret = ppo.gae(rewards, values, mask, gamma=1.0, lam=lam)
    assert ret[0].tolist() == pytest.approx(returns)
    second = [2.0, 2.0] if lam == 1.0 else [1.0, 2.0]  # the value after the end counts 0, the reward there is ignored
    assert ret[1, :2].tolist() == pytest.approx(second)
    raw = torch.cat([torch.tensor(advantages), ret[1, :2] - values[1, :2]])
    assert adv[mask.bool()].tolist() == pytest.approx(((raw - raw.mean()) / raw.std(unbiased=False)).tolist(), abs=1e-4)
    assert adv[1, 2] == 0.0


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tiny import make_tiny_model
    from tunesmith.models.load import load_tokenizer
    from tunesmith.templates import Template

    folder = make_tiny_model(tmp_path_factory.mktemp("models") / "tiny")
    base = AutoModelForCausalLM.from_pretrained(folder)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    model.eval()
    template = Template(load_tokenizer(folder))
    prompts = [template.render_prompt([{"role": "user", "content": f"code for {w}"}]) for w in ("apple", "river stone")]
    return model, template, prompts


def test_rollout_scores_the_last_token_against_the_base_and_an_update_moves_only_the_adapter(policy):
    model, template, prompts = policy
    torch.manual_seed(0)
    head = torch.nn.Linear(64, 1)
    seen = {}

    def score(texts, answers):
        seen["answers"] = answers
        return [1.0, -1.0, 1.0, -1.0]

    batch, stats, texts = ppo.rollout(model, head, template, prompts * 2, score, CFG, "cpu")
    width = batch.prompt_len
    assert batch.input_ids.shape[1] == width + 6 and stats["kl"] == 0.0  # LoRA B starts at 0: policy == base
    assert [len(a) for a in seen["answers"]] == batch.mask.sum(1).tolist()
    # Prompts of different lengths are left-padded; the ids the policy saw are the Template's.
    assert batch.input_ids[0, width - len(prompts[0]): width].tolist() == prompts[0]
    # The first ratio is exactly 1: scoring again gives the sampling-time log-probabilities.
    again, values = ppo.forward(model, head, batch.input_ids, batch.attention_mask, width, 1.0)
    assert torch.equal(again * batch.mask, batch.logprobs) and torch.equal(values * batch.mask, batch.values)

    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    adapter = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad] + list(head.parameters()), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    out = ppo.ppo_update(model, head, optimizer, scheduler, batch, CFG)
    assert {"loss", "policy_loss", "value_loss", "clip_ratio", "approx_kl", "grad_norm"} <= out.keys()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert any(not torch.equal(p, adapter[n]) for n, p in model.named_parameters() if n in adapter)

    # The reference is the base: with the adapter off, the log-probabilities are the untouched model's.
    moved, _ = ppo.forward(model, head, batch.input_ids, batch.attention_mask, width, 1.0)
    with model.disable_adapter():
        ref, _ = ppo.forward(model, head, batch.input_ids, batch.attention_mask, width, 1.0)
    assert torch.allclose(ref * batch.mask, batch.logprobs, atol=1e-5)
    assert not torch.allclose(moved * batch.mask, batch.logprobs, atol=1e-5)


def test_continuing_an_adapter_the_reference_is_that_adapter_not_the_base(tmp_path):
    """PPO after SFT (--adapters / --continue-from): the KL term holds the policy near the SFT model it starts from, so
    the first rollout's KL is 0; the base model (adapter off) would count the whole SFT change as divergence."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tiny import make_tiny_model
    from tunesmith.models.load import load_tokenizer
    from tunesmith.templates import Template

    folder = make_tiny_model(tmp_path / "tiny")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    torch.manual_seed(0)
    with torch.no_grad():  # a trained adapter: B away from 0, so the policy is not the base
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    ppo.keep_reference_copy(model)
    model.eval()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in n for n in trainable)  # the copy is frozen
    template = Template(load_tokenizer(folder))
    prompts = [template.render_prompt([{"role": "user", "content": "code for apple"}])] * 4
    batch, stats, _ = ppo.rollout(model, torch.nn.Linear(64, 1), template, prompts, lambda t, a: [0.0] * 4, CFG, "cpu")
    assert stats["kl"] == 0.0
    with model.disable_adapter():  # the base differs: the old reference would have counted a KL here
        base, _ = ppo.forward(model, torch.nn.Linear(64, 1), batch.input_ids, batch.attention_mask, batch.prompt_len, 1.0)
    assert not torch.allclose(base * batch.mask, batch.logprobs, atol=1e-3)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == trainable  # back on the trained adapter
    model.save_pretrained(tmp_path / "final", selected_adapters=["default"])
    assert not (tmp_path / "final" / "ref").exists()
