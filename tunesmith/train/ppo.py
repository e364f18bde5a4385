"""PPO: a policy with a value head learns from a scalar reward per answer.
Run: tunesmith rlhf --method ppo --dataset prompts.jsonl --rewards.plugin rewards.py --rewards.funcs my_reward

TRL 1.16 no longer ships a PPOTrainer, so this file is the algorithm of its former one (Ouyang et al. 2022; "The N+
Implementation Details of RLHF with PPO", Huang et al. 2024), small enough to read top to bottom:
  rollout    one sampled answer per prompt; the reward functions score it (a scalar per answer)
  rewards    per token: -kl_coef * (log pi - log pi_ref); the score is added on the answer's last token
  values     a linear head on the policy's last hidden state, the value of the context before each token
  advantage  GAE(gamma, lambda) over the answer, whitened over the batch; returns = advantages + values
  update     ppo_epochs passes over the batch in minibatches: clipped policy loss + vf_coef x clipped value loss
Departs from TRL's former trainer: the value head shares the policy's trunk (TRL's PPOv2 used a second model
initialised from the reward model; one model fits where GRPO fits), and the reference is the policy at the start: a
fresh adapter switched off (LoRA/QLoRA/DoRA only: no second copy of the base), or, continuing an adapter (--adapters,
--continue-from), a frozen copy of it named "ref" (as TRL's GRPO keeps one), so the SFT model is the reference. Dropout is off throughout, so the first epoch's ratio is 1.
One device; no checkpoint/resume and no evaluation (final/ holds the adapter and value_head.safetensors): Ctrl-C names
the step reached and says the same command starts again (train/callbacks.py Interrupted, exit 130). With
dropout off the model is in eval mode, where transformers skips gradient checkpointing.
"""

from __future__ import annotations

import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import torch

from tunesmith.config.rlhf import RLHFConfig
from tunesmith.errors import ConfigError
from tunesmith.templates import Template
from tunesmith.train.preflight import load_template, preflight, trainable_report
from tunesmith.train.run import RunResult, open_run
from tunesmith.train.callbacks import Interrupted, LossPlot, MetricsLog, ProgressBar
from tunesmith.train.online import dry_run, prompt_datasets, require_reward
from tunesmith.train.rewards import build_rewards
from tunesmith.train.rewards.registry import ROW_KEY
from tunesmith.train.setup import load_trainable

def ppo(cfg: RLHFConfig, callbacks: list[Any] | None = None) -> RunResult:
    rewards = build_rewards(cfg)  # plugin errors first, before anything heavy
    require_reward(cfg, rewards, "ppo")
    if cfg.resume or cfg.val_dataset or cfg.val_split:
        raise ConfigError("ppo writes no checkpoints and runs no evaluation in this release; drop resume, "
                          "val_dataset and val_split")
    with open_run(cfg) as run:
        template, base_folder = load_template(cfg)
        table, train_ds, _, skipped, record = prompt_datasets(cfg, template)
        for fn in rewards:
            fn.rows = [(conv, cols) for conv, cols, _ in table]
        dry_run(rewards, train_ds, template.tokenizer)  # every reward called once on real rows, as GRPO does

        plan = preflight(cfg, base_folder, rows=len(train_ds))
        model, device, dtype = load_trainable(cfg, base_folder)
        if cfg.adapters:
            keep_reference_copy(model)
        model.eval()  # dropout off: the policy that sampled is the policy that is scored
        value_head = torch.nn.Linear(model.config.get_text_config().hidden_size, 1, device=device)
        torch.nn.init.zeros_(value_head.weight)  # values start at 0: the first advantages are the rewards themselves
        torch.nn.init.zeros_(value_head.bias)
        score = scorer(cfg, rewards, device)
        steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs * len(train_ds) / cfg.batch_size)
        run.save_config(base_model_folder=str(base_folder), train_prompts=len(train_ds), skipped_rows=skipped, **record,
                        rollouts=steps, **plan.recorded(), **trainable_report(cfg, model))

        from transformers import get_scheduler

        params = [p for p in model.parameters() if p.requires_grad] + list(value_head.parameters())
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        updates = steps * cfg.ppo.epochs * cfg.ppo.num_mini_batches
        scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=int(cfg.warmup_ratio * updates),
                                  num_training_steps=updates)
        # The Trainer's callbacks write metrics.jsonl, the progress bar and loss.png; they read only these fields.
        state = SimpleNamespace(global_step=0, max_steps=steps, epoch=0.0, num_input_tokens_seen=0, log_history=[],
                                is_world_process_zero=True, is_local_process_zero=True)
        args = SimpleNamespace(output_dir=str(run.dir), logging_steps=cfg.logging_steps)
        hooks = [MetricsLog(run.dir), ProgressBar(), LossPlot(run.dir), *(callbacks or [])]

        def save_model(folder: str) -> None:
            from safetensors.torch import save_file

            model.save_pretrained(folder, selected_adapters=["default"])  # not the reference copy
            save_file({k: v.contiguous() for k, v in value_head.state_dict().items()}, f"{folder}/value_head.safetensors")

        trainer = SimpleNamespace(state=state, model=model, save_model=save_model)
        try:
            _fire(hooks, "on_train_begin", args, state)
            generator = torch.Generator().manual_seed(cfg.seed)
            order: list[int] = []
            started = time.time()
            for step in range(1, steps + 1):
                while len(order) < cfg.batch_size:  # reshuffled every pass over the prompts
                    order += torch.randperm(len(train_ds), generator=generator).tolist()
                picked, order = order[: cfg.batch_size], order[cfg.batch_size:]
                prompts = [train_ds[i]["prompt"] for i in picked]
                ids = [table[p[-1][ROW_KEY]][2] for p in prompts]
                batch, stats, _ = rollout(model, value_head, template, ids, lambda t, a: score(prompts, t, a, state),
                                          cfg, device)
                stats |= score.logged | ppo_update(model, value_head, optimizer, scheduler, batch, cfg)
                state.global_step, state.epoch = step, step * cfg.batch_size / len(train_ds)
                state.num_input_tokens_seen += int(batch.attention_mask.sum())
                if step % cfg.logging_steps == 0 or step == 1 or step == steps:
                    logs = {"loss": stats.pop("loss"), "learning_rate": scheduler.get_last_lr()[0], **stats}
                    state.log_history.append({**logs, "step": step})
                    _fire(hooks, "on_log", args, state, logs=logs)
                _fire(hooks, "on_step_end", args, state)
            state.log_history.append({"train_runtime": time.time() - started, "step": steps})
            _fire(hooks, "on_train_end", args, state)
            final = run.save_final(trainer, template)
        except KeyboardInterrupt:
            # Ctrl-C, as train/setup.py run_trainer answers it: close the bar, draw loss.png so far, remove final/'s
            # staging folder when the save was under way (final/ itself is renamed into place whole), and say where
            # the run stood. No checkpoint to name: ppo writes none, so the run starts again.
            for hook in hooks:
                if isinstance(hook, (ProgressBar, LossPlot)):
                    hook.on_train_end(args, state, None)
            shutil.rmtree(run.dir / ".final-staging", ignore_errors=True)
            raise Interrupted(run.dir, state.global_step, restart="ppo writes no checkpoints") from None
        return run.result(trainer, final, skipped)


def _fire(hooks: list[Any], event: str, args: Any, state: Any, **kwargs: Any) -> None:
    for hook in hooks:
        getattr(hook, event)(args, state, None, **kwargs)


def scorer(cfg: RLHFConfig, rewards: list[Any], device: str) -> Callable:
    """score(prompts, texts, answer ids, state) -> the weighted sum of the rewards per answer (None counts 0, as in
    TRL), logging each under rewards/<name>/mean. A reward model scores the conversation its own template renders."""
    funcs: list[tuple[str, Callable]] = [(fn.name, fn) for fn in rewards]
    if cfg.rewards.model:
        from tunesmith.models.reward import load_reward_model, score as rm_score

        rm, rm_tokenizer = load_reward_model(cfg.rewards.model, device=device)
        rm_template = Template(rm_tokenizer)

        def reward_model(prompts, completions, completion_ids, **_):
            sequences = [rm_template.render(_messages(p) + [{"role": "assistant", "content": c}])[0]
                         for p, c in zip(prompts, completions)]
            return rm_score(rm, rm_tokenizer, sequences)

        funcs.append(("reward_model", reward_model))
    weights = cfg.rewards.weights or [1.0] * len(funcs)
    logged: dict[str, float] = {}

    def score(prompts, texts, answer_ids, state):
        from transformers import TrainerState

        total = [0.0] * len(texts)
        trainer_state = TrainerState(global_step=state.global_step, max_steps=state.max_steps)
        for (name, fn), weight in zip(funcs, weights):
            values = fn(prompts=prompts, completions=texts, completion_ids=answer_ids, trainer_state=trainer_state,
                        log_extra=lambda *a: None, log_metric=lambda *a: None)
            given = [v for v in values if v is not None]
            logged[f"rewards/{name}/mean"] = sum(given) / len(given) if given else float("nan")
            total = [t + weight * (v or 0.0) for t, v in zip(total, values)]
        return total

    score.logged = logged
    return score


def _messages(prompt: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


# -----------------------------------------------------------------------------
# Rollouts: sample, score, and record what the update needs


@dataclass
class Batch:
    input_ids: torch.Tensor       # (B, P + T): left-padded prompt, then the answer, right-padded
    attention_mask: torch.Tensor  # (B, P + T)
    mask: torch.Tensor            # (B, T): 1 on answer tokens (through the stop token)
    prompt_len: int               # P
    logprobs: torch.Tensor        # (B, T) policy at sampling time
    values: torch.Tensor          # (B, T)
    advantages: torch.Tensor      # (B, T)
    returns: torch.Tensor         # (B, T)


def forward(model: Any, value_head: torch.nn.Module, input_ids, attention_mask, prompt_len: int, temperature: float):
    """Per-token log-probabilities of the answer tokens and the values of the contexts that produced them."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # as generate() numbers a left-padded prompt
    keep = input_ids.size(1) - prompt_len + 1  # the LM head runs only where an answer token is predicted
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                output_hidden_states=True, logits_to_keep=keep)
    logits = out.logits[:, :-1].float() / temperature
    logprobs = torch.gather(logits.log_softmax(-1), 2, input_ids[:, prompt_len:, None]).squeeze(-1)
    values = value_head(out.hidden_states[-1][:, prompt_len - 1: -1].float()).squeeze(-1)
    return logprobs, values


def sample(model: Any, template: Any, prompts: list[list[int]], cfg: RLHFConfig, device: str):
    """Left-padded prompts -> (input_ids, attention_mask, answer mask); the answer ends at the first stop token."""
    pad = template.tokenizer.pad_token_id
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    out = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=cfg.rollout.temperature,
                         top_k=0, top_p=cfg.rollout.top_p, max_new_tokens=cfg.rollout.max_completion_length,
                         eos_token_id=template.stop_token_ids, pad_token_id=pad)
    answer = out[:, width:]
    is_stop = torch.isin(answer, torch.tensor(template.stop_token_ids, device=device))
    first_stop = torch.where(is_stop.any(1), is_stop.int().argmax(1), answer.size(1))
    mask = (torch.arange(answer.size(1), device=device)[None] <= first_stop[:, None]).long()
    answer = torch.where(mask.bool(), answer, pad)
    return torch.cat([ids, answer], 1), torch.cat([attn, mask], 1), mask, width


def gae(rewards, values, mask, gamma: float, lam: float):
    """Generalised advantage estimation over the answer tokens; positions after the end carry no value."""
    values, rewards = values * mask, rewards * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        following = values[:, t + 1] if t + 1 < rewards.size(1) else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * following - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    returns = advantages + values
    return whiten(advantages, mask) * mask, returns


def keep_reference_copy(model) -> None:
    """A frozen copy of the starting adapter under the name "ref": the policy the KL term holds the run near."""
    model.add_adapter("ref", model.peft_config["default"])
    trained = dict(model.named_parameters())
    for name, param in trained.items():
        if ".ref." in name:
            param.requires_grad_(False)
            param.data.copy_(trained[name.replace(".ref.", ".default.")].data)


@contextmanager
def reference_policy(model):
    """The model as the reference policy: the "ref" copy when the run continues an adapter, else the base with the
    fresh adapter switched off."""
    if "ref" not in model.peft_config:
        with model.disable_adapter():
            yield
        return
    model.set_adapter("ref")  # peft marks the active adapter trainable and the others frozen
    try:
        yield
    finally:
        model.set_adapter("default")


def whiten(x, mask):
    mean = (x * mask).sum() / mask.sum()
    var = ((x - mean) ** 2 * mask).sum() / mask.sum()
    return (x - mean) * torch.rsqrt(var + 1e-8)


@torch.no_grad()
def rollout(model, value_head, template, prompts, scores_of: Callable, cfg: RLHFConfig, device: str):
    """One batch of experience and the statistics to log."""
    input_ids, attention_mask, mask, width = sample(model, template, prompts, cfg, device)
    logprobs, values = forward(model, value_head, input_ids, attention_mask, width, cfg.rollout.temperature)
    with reference_policy(model):
        ref_logprobs, _ = forward(model, value_head, input_ids, attention_mask, width, cfg.rollout.temperature)
    answers = [row[m.bool()].tolist() for row, m in zip(input_ids[:, width:], mask)]
    texts = template.tokenizer.batch_decode(answers, skip_special_tokens=True)
    scores = torch.tensor(scores_of(texts, answers), dtype=torch.float32, device=device)
    kl = (logprobs - ref_logprobs) * mask
    rewards = -cfg.ppo.kl_coef * kl
    last = mask.sum(1) - 1
    rewards[torch.arange(len(prompts)), last] += scores
    advantages, returns = gae(rewards, values, mask, cfg.ppo.gamma, cfg.ppo.gae_lambda)
    batch = Batch(input_ids, attention_mask, mask, width, logprobs * mask, values * mask, advantages, returns)
    stats = {"reward": scores.mean().item(), "reward_std": scores.std().item() if len(scores) > 1 else 0.0,
             "kl": kl.sum(1).mean().item(), "completions/mean_length": mask.sum(1).float().mean().item()}
    return batch, stats, texts


# -----------------------------------------------------------------------------
# The update: clipped policy and value losses, several epochs over minibatches


def ppo_update(model, value_head, optimizer, scheduler, batch: Batch, cfg: RLHFConfig) -> dict[str, float]:
    size = batch.input_ids.size(0)
    per_mb = max(1, size // cfg.ppo.num_mini_batches)
    totals: dict[str, list[float]] = {}
    params = [p for p in model.parameters() if p.requires_grad] + list(value_head.parameters())
    for _ in range(cfg.ppo.epochs):
        order = torch.randperm(size)
        for start in range(0, size, per_mb):
            i = order[start: start + per_mb].to(batch.input_ids.device)
            m = batch.mask[i].float()
            logprobs, values = forward(model, value_head, batch.input_ids[i], batch.attention_mask[i],
                                       batch.prompt_len, cfg.rollout.temperature)
            ratio = torch.exp(logprobs - batch.logprobs[i])
            adv = batch.advantages[i]
            pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.ppo.cliprange, 1 + cfg.ppo.cliprange))
            clipped_v = batch.values[i] + (values - batch.values[i]).clamp(-cfg.ppo.cliprange_value, cfg.ppo.cliprange_value)
            vf = 0.5 * torch.max((values - batch.returns[i]) ** 2, (clipped_v - batch.returns[i]) ** 2)
            policy_loss, value_loss = masked_mean(pg, m), masked_mean(vf, m)
            loss = policy_loss + cfg.ppo.vf_coef * value_loss
            optimizer.zero_grad()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                log_ratio = logprobs - batch.logprobs[i]
                for key, value in {"loss": loss, "policy_loss": policy_loss, "value_loss": value_loss,
                                   "grad_norm": grad_norm,
                                   "clip_ratio": masked_mean(((ratio - 1).abs() > cfg.ppo.cliprange).float(), m),
                                   "approx_kl": masked_mean(0.5 * log_ratio**2, m)}.items():
                    totals.setdefault(key, []).append(float(value))
    return {k: sum(v) / len(v) for k, v in totals.items()}


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)
