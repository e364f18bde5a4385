"""GRPO: sample `num_generations` answers per prompt, score them with reward functions, and push up the ones that
beat their group's mean.  Run: tunesmith rlhf --method grpo --dataset prompts.jsonl --rewards.funcs format length \
--rewards.weights 1 0.5 --rewards.format-pattern '...' --rewards.plugin my_rewards.py

TRL's GRPOTrainer does the work (rollouts with transformers generation, or vLLM colocate with --grpo.use-vllm; advantages;
the clipped loss; metrics such as reward, rewards/<name>/mean, kl, completions/mean_length). This file adds:
  - rewards by name (tunesmith/train/rewards), plugins checked and every reward called once on real rows before
    any weights load, so a broken plugin costs seconds;
  - prompts rendered by our Template: the ids TRL generates from are exactly template.render_prompt(messages), the
    ids `infer` and `deploy` send (see RenderedPrompts);
  - --grpo.variant, a preset over TRL's own knobs (VARIANTS), each knob still settable on its own.
Departs from TRL's defaults: --grpo.variant grpo follows the DeepSeekMath paper (per-sequence loss, KL beta 0.04) where
TRL defaults to DAPO's token-level loss and no KL term; pass --grpo.variant dapo for those.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunesmith.config.rlhf import RLHFConfig
from tunesmith.errors import ConfigError
from tunesmith.templates import Template
from tunesmith.train.online import dry_run, prompt_datasets, require_reward
from tunesmith.train.rewards import build_rewards
from tunesmith.train.rewards.registry import ROW_KEY, RewardFn

if TYPE_CHECKING:
    from tunesmith.train.run import RunResult

# Each variant is a setting of TRL's GRPOConfig knobs (RLOOConfig for rloo). Sources:
#   grpo     DeepSeekMath (arXiv 2402.03300): loss averaged per sequence, advantages scaled by the group's std,
#            KL beta 0.04, clip 0.2.
#   dapo     DAPO (2503.14476): clip-higher (0.2 / 0.28), token-level loss, overlong filtering, no KL term. Its
#            dynamic sampling is not in TRL; its soft overlong punishment is the `length` reward.
#   dr_grpo  Dr. GRPO (2503.20783): no std scaling, loss over a constant (max_completion_length), no KL term.
#   gspo     GSPO (2507.18071): one importance ratio per sequence, clip 3e-4 / 4e-4, per-sequence loss, no KL term.
#   rloo     RLOO (2402.14740): each completion's baseline is the mean reward of the other completions of its
#            prompt; TRL's RLOOTrainer, with its KL-in-the-reward beta 0.05.
VARIANTS: dict[str, dict[str, Any]] = {
    "grpo": dict(loss_type="grpo", scale_rewards="group", beta=0.04, epsilon=0.2, epsilon_high=0.2,
                 importance_sampling_level="token", mask_truncated_completions=False),
    "dapo": dict(loss_type="dapo", scale_rewards="group", beta=0.0, epsilon=0.2, epsilon_high=0.28,
                 importance_sampling_level="token", mask_truncated_completions=True),
    "dr_grpo": dict(loss_type="dr_grpo", scale_rewards="none", beta=0.0, epsilon=0.2, epsilon_high=0.2,
                    importance_sampling_level="token", mask_truncated_completions=False),
    "gspo": dict(loss_type="grpo", scale_rewards="group", beta=0.0, epsilon=3e-4, epsilon_high=4e-4,
                 importance_sampling_level="sequence", mask_truncated_completions=False),
    "rloo": dict(beta=0.05, epsilon=0.2, epsilon_high=0.2, mask_truncated_completions=False),
}
# our grpo section's field -> TRL's name
KNOBS = {"loss_type": "loss_type", "scale_rewards": "scale_rewards", "kl_coef": "beta", "epsilon": "epsilon",
         "epsilon_high": "epsilon_high", "importance_sampling_level": "importance_sampling_level",
         "mask_truncated_completions": "mask_truncated_completions"}


def grpo(cfg: RLHFConfig, callbacks: list[Any] | None = None) -> RunResult:
    rewards = build_rewards(cfg)  # loads --rewards.plugin files: their errors come first, before anything heavy
    _check_setup(cfg, rewards)
    from tunesmith.train.preflight import load_template, preflight, trainable_report  # imports transformers: after
    from tunesmith.train.run import open_run                                          # the checks above, so they
    from tunesmith.train.setup import load_trainable, run_trainer                     # answer fast

    with open_run(cfg) as run:
        template, base_folder = load_template(cfg)
        from tunesmith.train.vision import VisionRun, vision_grpo_trainer

        vlm = VisionRun.start(cfg, template, base_folder)  # prompts with images: train/vision.py
        if vlm is not None:
            if cfg.grpo.env is not None or cfg.grpo.use_vllm or cfg.method != "grpo":
                raise ConfigError(f"{cfg.method} on a vision-language model: transformers rollouts of single-turn "
                                  "prompts only (no --grpo.env, no --grpo.use-vllm, method grpo)")
            template = vlm.template
        env = environment(cfg, template)
        if env is None:
            table, train_ds, eval_ds, skipped, record = prompt_datasets(cfg, template)
            for fn in rewards:
                fn.rows = [(conv, cols) for conv, cols, _ in table]
            dry_run(rewards, train_ds, template.tokenizer)
            prompt_ids, rollout, env_rewards = [ids for _, _, ids in table], None, []
        else:
            train_ds, rollout, env_rewards = env
            eval_ds, skipped, prompt_ids, record = None, 0, [], {}

        plan = preflight(cfg, base_folder, rows=len(train_ds))
        # The environment's reward goes last, where rewards.weights gives unweighted 1s
        reward_funcs, reward_tokenizers = reward_models(cfg, rewards)
        reward_funcs, reward_tokenizers = [*reward_funcs, *env_rewards], [*reward_tokenizers, *[None] * len(env_rewards)]
        model, device, dtype = vlm.load_trainable(cfg, base_folder) if vlm else load_trainable(cfg, base_folder)
        _stop_at_end_of_turn(model, template)
        record.update(vlm.recorded() if vlm else {})
        run.save_config(base_model_folder=str(base_folder), train_prompts=len(train_ds), skipped_rows=skipped, **record,
                        trl_knobs=resolve_knobs(cfg), **plan.recorded(), **trainable_report(cfg, model))
        args = grpo_args(cfg, run.dir, device, dtype, has_eval=eval_ds is not None, n_rewards=len(reward_funcs))
        trainer_cls = rendered_trainer(cfg.grpo.variant)
        processing = template.tokenizer
        if vlm is not None:  # TRL's VLM path (pixels for rollouts and loss), fed the prompts tunesmith renders
            trainer_cls = vision_grpo_trainer(trainer_cls, template, [conv for conv, _, _ in table])
            args.chat_template_kwargs = dict(template.chat_template_kwargs)
            processing = template.processor
            processing.tokenizer.padding_side = "left"  # TRL pads prompts on the left; its loss pass re-encodes them
        extra = {"rollout_func": rollout} if rollout is not None else {}

        def make_trainer(**kwargs: Any) -> Any:
            return trainer_cls(reward_funcs=reward_funcs, reward_processing_classes=reward_tokenizers,
                               prompt_ids=prompt_ids, **extra, **kwargs)

        trainer = run_trainer(cfg, run.dir, model, processing, train_ds, eval_ds, device, dtype,
                              run.resume_from, callbacks, trainer_cls=make_trainer, args=args)
        final = run.save_final(trainer, template)  # without the reference copy TRL keeps with --adapters
        return run.result(trainer, final, skipped)


def _check_setup(cfg: RLHFConfig, rewards: list[RewardFn]) -> None:
    require_reward(cfg, rewards, "grpo")
    if cfg.grpo.use_vllm and importlib.util.find_spec("vllm") is None:
        raise ConfigError("grpo.use_vllm: the vllm package is not installed (pip install vllm); drop --grpo.use-vllm to "
                          "generate with transformers")
    if cfg.val_dataset or cfg.val_split:
        if cfg.batch_size % cfg.grpo.num_generations:
            raise ConfigError(f"batch_size ({cfg.batch_size}) must be a multiple of grpo.num_generations "
                              f"({cfg.grpo.num_generations}) to evaluate, which runs without gradient accumulation")


def reward_models(cfg: RLHFConfig, rewards: list) -> tuple[list, list]:
    """The reward functions plus --rewards.model (a `--method rm` run, loaded by models/reward.py), with the tokenizer
    each needs (None for functions). TRL scores a reward model on the prompt + answer as its chat template renders
    them, the text rm trained on."""
    if not cfg.rewards.model:
        return list(rewards), [None] * len(rewards)
    from tunesmith.models.reward import load_reward_model

    model, tokenizer = load_reward_model(cfg.rewards.model, device=cfg.device, dtype=cfg.dtype)
    model.config._name_or_path = "reward_model"  # TRL names its metric after this: rewards/reward_model/mean
    return [*rewards, model], [*[None] * len(rewards), tokenizer]


# -----------------------------------------------------------------------------
# Multi-turn environments: HOOK for tunesmith/train/episodes.py (--grpo.env path.py:ClassName)


def environment(cfg: RLHFConfig, template: Template) -> tuple[Any, Any, list] | None:
    """(train dataset, TRL rollout_func, extra reward functions) with --grpo.env, else None. The rollout function replaces
    TRL's generation (GRPOTrainer(rollout_func=...)), so RenderedPrompts is bypassed and the environment renders
    its own prompts (train/episodes.py)."""
    if cfg.grpo.env is None:
        return None
    from tunesmith.train.episodes import rollout_func_for

    run = rollout_func_for(cfg, template)
    return run.train_dataset, run.rollout_func, run.reward_funcs


# -----------------------------------------------------------------------------
# Prompts: rendered by our Template (train/online.py), carried to TRL by row index


def rendered_trainer(variant: str) -> type:
    """GRPOTrainer (RLOOTrainer for rloo) with one override, `_tokenize_prompts`, the hook TRL 1.16 calls to turn a
    batch of prompts into ids for generation (transformers or vLLM alike); everything after it works on those ids.
    TRL would re-render the messages with the tokenizer's chat template in one piece; ours returns the ids that
    Template.render_prompt gave for the prompt's row, looked up by the index the prompt carries: exactly what is
    served, by construction (tests/e2e/test_grpo_cli.py checks the ids reaching generate)."""
    from trl import GRPOTrainer, RLOOTrainer

    base = RLOOTrainer if variant == "rloo" else GRPOTrainer

    class RenderedPrompts(base):
        def __init__(self, *args: Any, prompt_ids: list[list[int]], **kwargs: Any):
            self.prompt_ids = prompt_ids
            super().__init__(*args, **kwargs)

        def _tokenize_prompts(self, prompts: list) -> tuple[list[list[int]], None, dict]:
            return [list(self.prompt_ids[p[-1][ROW_KEY]]) for p in prompts], None, {}

    RenderedPrompts.__name__ = f"Rendered{base.__name__}"
    return RenderedPrompts


# -----------------------------------------------------------------------------
# TRL arguments


def resolve_knobs(cfg: RLHFConfig) -> dict[str, Any]:
    """The variant's preset, then every knob the user set."""
    knobs = dict(VARIANTS[cfg.grpo.variant])
    for ours, trl_name in KNOBS.items():
        value = getattr(cfg.grpo, ours)
        if value is not None:
            knobs[trl_name] = value
    return knobs


def grpo_args(cfg: RLHFConfig, run_dir: Path, device: str, dtype: Any, has_eval: bool, n_rewards: int) -> Any:
    from trl import GRPOConfig, RLOOConfig

    from tunesmith.train.setup import common_args

    common = common_args(cfg, run_dir, device, dtype, has_eval)
    del common["max_length"]  # GRPO bounds prompts (checked per row) and completions separately
    common["include_num_input_tokens_seen"] = "no"  # TRL counts prompt + completion tokens itself
    weights = None
    if cfg.rewards.weights is not None:  # unweighted rewards (the reward model, an environment's) get 1
        weights = [*cfg.rewards.weights, *[1.0] * (n_rewards - len(cfg.rewards.weights))]
    config_cls = RLOOConfig if cfg.grpo.variant == "rloo" else GRPOConfig
    return config_cls(**common, **resolve_knobs(cfg), num_generations=cfg.grpo.num_generations,
                      max_completion_length=cfg.rollout.max_completion_length, temperature=cfg.rollout.temperature,
                      top_p=cfg.rollout.top_p, reward_weights=weights, use_vllm=cfg.grpo.use_vllm, vllm_mode="colocate")


def _stop_at_end_of_turn(model: Any, template: Template) -> None:
    """TRL ends a completion at the model's generation-config EOS ids (plus the tokenizer's); add the Template's stop
    ids, so a base model trained with a chat template stops at its end-of-turn token as the served model will."""
    config = model.get_base_model().generation_config if hasattr(model, "get_base_model") else model.generation_config
    eos = config.eos_token_id
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    config.eos_token_id = eos + [i for i in template.stop_token_ids if i not in eos]

