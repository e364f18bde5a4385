"""`tunesmith rlhf`: preference alignment and RL. `--method` names the algorithm (as in PRODUCT.md), so how the
weights train is `--tuner lora | qlora | dora | full` here (ms-swift calls it tuner_type)."""

from __future__ import annotations

import contextlib

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from tunesmith.config.commands import TrainConfig

DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
KTO_LOSSES = ("kto", "apo_zero_unpaired")  # TRL's KTOConfig.loss_type
CPO_LOSSES = ("sigmoid", "hinge", "ipo", "simpo")  # TRL's CPOConfig.loss_type


class RLHFConfig(TrainConfig):
    """Preference alignment on top of a base model or an SFT run. Run: tunesmith rlhf --method dpo -c dpo.yaml"""

    method: Literal["dpo", "kto", "orpo", "simpo", "cpo", "rm", "ppo", "grpo"] = Field(
        "dpo", description="Algorithm: dpo | kto | orpo | simpo | cpo | rm | ppo | grpo.")
    tuner: Literal["lora", "qlora", "dora", "full"] = Field("lora", description="How the weights train.")
    beta: float = Field(0.1, gt=0, description=(
        "Strength of the pull towards the reference model (DPO's, KTO's and CPO's beta). ORPO: lambda, the weight of "
        "the odds-ratio term. SimPO: the reward scale, 2.0 unless set."))
    loss_type: list[Literal[DPO_LOSSES + KTO_LOSSES + CPO_LOSSES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["sigmoid"], description=(
            "Loss variants (TRL's names). dpo: several are summed; kto: kto | apo_zero_unpaired (default kto); "
            "cpo: one of sigmoid, hinge, ipo, simpo; simpo: simpo."))
    learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate (5e-5 suits LoRA DPO, 5e-7 full).")
    epochs: float = Field(1.0, gt=0, description="Passes over the preference pairs.")
    command: ClassVar[str] = "rlhf"

    @property
    def weights(self) -> str:
        return self.tuner

    @model_validator(mode="after")
    def _check_rlhf(self) -> "RLHFConfig":
        if self.packing:
            raise ValueError("packing: not supported for preference data; set packing: false")
        return self

    # -------------------------------------------------------------------------
    # Multi-turn environments (grpo --env): run by tunesmith/train/episodes.py
    env: str | None = Field(None, description=(
        "Multi-turn environment for grpo, as path.py:ClassName: reset(row) -> observation, "
        "step(action) -> (observation, reward, done); the dataset rows are what reset receives."))
    max_turns: int = Field(5, ge=1, description="Most policy turns per episode with --env (each turn is one answer).")
    max_turn_tokens: int | None = Field(None, ge=1, description=(
        "Most new tokens per turn with --env (default: grpo's completion length, which also bounds the episode)."))

    @model_validator(mode="after")
    def _check_env(self) -> "RLHFConfig":
        if self.env is not None:
            path, sep, name = self.env.rpartition(":")
            if not sep or not path.endswith(".py") or not name.isidentifier():
                raise ValueError(f"env: expected path.py:ClassName, got {self.env!r}")
            if self.method != "grpo":
                raise ValueError(f"env: multi-turn environments train with --method grpo, not {self.method}")
        return self
    # end of multi-turn environments

    # -------------------------------------------------------------------------
    # PPO (method: ppo), run by tunesmith/train/ppo.py. The reward (reward_funcs, reward_weights, plugin,
    # reward_model), the rollouts (max_completion_length, temperature, top_p) and kl_coef are GRPO's keys above.
    ppo_epochs: int = Field(4, ge=1, description="PPO: passes over each batch of rollouts.")
    num_mini_batches: int = Field(1, ge=1, description="PPO: optimizer steps per pass; the batch is split into this many.")
    cliprange: float = Field(0.2, gt=0, description="PPO: clip range of the policy's probability ratio.")
    cliprange_value: float = Field(0.2, gt=0, description="PPO: clip range of the value update.")
    vf_coef: float = Field(0.1, ge=0, description="PPO: weight of the value loss beside the policy loss.")
    gamma: float = Field(1.0, ge=0, le=1, description="PPO: discount over the answer's tokens.")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="PPO: GAE lambda (1 = Monte Carlo returns, 0 = one-step).")

    PPO_ONLY: ClassVar[tuple[str, ...]] = ("ppo_epochs", "num_mini_batches", "cliprange", "cliprange_value", "vf_coef",
                                           "gamma", "gae_lambda")
    PPO_READS: ClassVar[tuple[str, ...]] = ("reward_funcs", "reward_weights", "plugin", "reward_model",
                                            "max_completion_length", "temperature", "top_p", "kl_coef")

    @model_validator(mode="after")
    def _check_ppo(self) -> "RLHFConfig":
        if self.method != "ppo":
            given = [f for f in self.PPO_ONLY if f in self.model_fields_set]
            if given:
                raise ValueError(f"{given[0]}: only used by --method ppo (method is {self.method})")
            return self
        for dpo_name, ours in (("loss_type", "cliprange"), ("beta", "kl_coef")):
            if dpo_name in self.model_fields_set:
                raise ValueError(f"{dpo_name}: a DPO setting; for ppo use {ours}")
        if self.tuner == "full":
            raise ValueError("tuner: ppo's reference model is the base with the adapter switched off; use lora, "
                             "qlora or dora")
        if self.grad_accum != 1:
            raise ValueError("grad_accum: ppo splits each batch with num_mini_batches instead; drop grad_accum")
        if self.batch_size % self.num_mini_batches:
            raise ValueError(f"num_mini_batches: {self.num_mini_batches} does not divide batch_size {self.batch_size}")
        return self
    # end of PPO

    # -------------------------------------------------------------------------
    # GRPO (method: grpo), run by tunesmith/train/grpo.py: rewards, rollouts, and a variant preset over TRL's
    # GRPOConfig knobs. A knob left at None takes the variant's value (VARIANTS in train/grpo.py). For GRPO,
    # batch_size counts completions (TRL's per_device_train_batch_size) and defaults to num_generations.
    reward_funcs: list[str] = Field(default_factory=list, description=(
        "Reward functions by name: format, length, repetition, accuracy, or any @register_reward in a --plugin file."))
    reward_weights: list[float] | None = Field(None, description=(
        "One weight per reward function, in order, then the --reward-model's (default 1); default 1 each."))
    plugin: list[str] = Field(default_factory=list, description=(
        "Python files whose @register_reward functions --reward-funcs can name."))
    reward_model: str | None = Field(None, description="Sequence-classification reward model folder, scored as one more reward.")
    variant: Literal["grpo", "dapo", "dr_grpo", "gspo", "rloo"] = Field("grpo", description=(
        "grpo (DeepSeekMath) | dapo (clip-higher, token-level loss, overlong filtering) | dr_grpo (no std scaling) | "
        "gspo (sequence-level ratio) | rloo (leave-one-out baseline, TRL's RLOOTrainer)."))
    num_generations: int = Field(8, ge=2, description="Completions sampled per prompt; rewards are compared within this group.")
    max_completion_length: int = Field(256, ge=1, description="Most new tokens per completion.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass of the rollouts.")
    kl_coef: float | None = Field(None, ge=0, description=(
        "KL penalty towards the starting model (TRL's beta); default: the variant's."))
    grpo_loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo"] | None = Field(
        None, description="TRL's GRPO loss_type (loss_type holds the DPO losses); default: the variant's.")
    scale_rewards: Literal["group", "batch", "none"] | None = Field(None, description=(
        "Divide advantages by the reward std of the group, the batch, or not at all."))
    epsilon: float | None = Field(None, gt=0, description="Lower clip range of the probability ratio; default: the variant's.")
    epsilon_high: float | None = Field(None, gt=0, description="Upper clip range (DAPO's clip-higher); default: the variant's.")
    importance_sampling_level: Literal["token", "sequence"] | None = Field(None, description=(
        "Ratio per token, or per sequence (GSPO)."))
    mask_truncated_completions: bool | None = Field(None, description=(
        "Leave completions cut at max_completion_length out of the loss (DAPO's overlong filtering)."))
    format: Literal["regex", "json"] = Field("regex", description=(
        "What the format reward checks: --format-pattern, or that the answer is JSON."))
    format_pattern: str | None = Field(None, description="Regular expression the whole answer must match for the format reward.")
    length_target: int | None = Field(None, ge=1, description=(
        "length reward: tokens to aim for (default: only penalise answers near max_completion_length)."))
    repetition_ngram: int = Field(3, ge=1, description=(
        "repetition reward: size of the token n-grams whose repeats are penalised."))
    use_vllm: bool = Field(False, description="Generate rollouts with vLLM (colocate mode; needs the vllm package).")

    # Fields only GRPO reads: set with another method, they are an error. A field another method also reads leaves this set.
    GRPO_ONLY: ClassVar[tuple[str, ...]] = (
        "reward_funcs", "reward_weights", "plugin", "reward_model", "variant", "num_generations", "max_completion_length",
        "temperature", "top_p", "kl_coef", "grpo_loss_type", "scale_rewards", "epsilon", "epsilon_high",
        "importance_sampling_level", "mask_truncated_completions", "format", "format_pattern", "length_target",
        "repetition_ngram", "use_vllm")

    @model_validator(mode="before")
    @classmethod
    def _grpo_batch(cls, data):
        # One prompt's group per step by default: TRL's batch counts completions and must hold whole groups.
        if isinstance(data, dict) and data.get("method") == "grpo" and "batch_size" not in data:
            data = {**data, "batch_size": data.get("num_generations", 8)}
        return data

    @model_validator(mode="after")
    def _check_grpo(self) -> "RLHFConfig":
        if self.method != "grpo":
            shared = self.PPO_READS if self.method == "ppo" else ()  # PPO reads these GRPO keys too
            given = [f for f in self.GRPO_ONLY if f in self.model_fields_set and f not in shared]
            if given:
                raise ValueError(f"{given[0]}: only used by --method grpo (method is {self.method})")
            return self
        for dpo_name, ours in (("loss_type", "grpo_loss_type"), ("beta", "kl_coef")):
            if dpo_name in self.model_fields_set:
                raise ValueError(f"{dpo_name}: a DPO setting; for grpo use {ours}")
        per_step = self.batch_size * self.grad_accum
        if per_step % self.num_generations:
            raise ValueError(
                f"batch_size x grad_accum ({self.batch_size} x {self.grad_accum}) must be a multiple of num_generations "
                f"({self.num_generations}): each prompt's completions are scored as one group; e.g. --batch-size "
                f"{self.num_generations}")
        if self.variant == "rloo":
            knobs = [f for f in ("grpo_loss_type", "scale_rewards", "importance_sampling_level") if getattr(self, f) is not None]
            if knobs:
                raise ValueError(f"{knobs[0]}: not a knob of --variant rloo (TRL's RLOOTrainer); drop it or pick another variant")
        if self.format_pattern is not None:
            import re

            try:
                re.compile(self.format_pattern)
            except re.error as err:
                raise ValueError(f"format_pattern: not a valid regular expression: {err}") from None
        if self.reward_weights is not None:
            n = len(self.reward_funcs)
            allowed = (n, n + 1) if self.reward_model else (n,)
            if len(self.reward_weights) not in allowed:
                rewards = ", ".join(self.reward_funcs + ([f"reward model {self.reward_model}"] if self.reward_model else []))
                raise ValueError(f"reward_weights: {len(self.reward_weights)} weight(s) for the rewards ({rewards or 'none'}); "
                                 "give one per reward function, in order")
        return self
    # end of GRPO

    # -------------------------------------------------------------------------
    # Offline preference methods (kto, orpo, cpo, simpo, rm), run by train/kto.py, orpo.py, cpo.py and rm.py. They
    # share beta and loss_type above; each key below is read by the methods named in OFFLINE_ONLY.
    desirable_weight: float = Field(1.0, gt=0, description=(
        "KTO: weight of the desirable (label true) rows' loss; raise it when they are the fewer."))
    undesirable_weight: float = Field(1.0, gt=0, description=(
        "KTO: weight of the undesirable rows' loss. The KTO paper keeps desirable_weight x desirable rows / "
        "(undesirable_weight x undesirable rows) between 1 and 4/3."))
    cpo_alpha: float | None = Field(None, ge=0, description=(
        "CPO/SimPO: weight of the NLL term on the chosen answers (default 1.0 for cpo, 0 for simpo; above 0 with "
        "simpo gives CPO-SimPO)."))
    simpo_gamma: float | None = Field(None, ge=0, description=(
        "SimPO (loss_type simpo): target reward margin between chosen and rejected (default 0.5 x beta, the SimPO "
        "paper's gamma/beta ratio for Llama-3 base: beta 2.0, gamma 1.0)."))

    OFFLINE_ONLY: ClassVar[dict[str, tuple[str, ...]]] = {
        "desirable_weight": ("kto",), "undesirable_weight": ("kto",), "cpo_alpha": ("cpo", "simpo"),
        "simpo_gamma": ("cpo", "simpo")}
    LOSSES: ClassVar[dict[str, tuple[str, ...]]] = {"dpo": DPO_LOSSES, "kto": KTO_LOSSES, "cpo": CPO_LOSSES,
                                                    "simpo": ("simpo",)}

    @model_validator(mode="before")
    @classmethod
    def _offline_defaults(cls, data):
        # Method-dependent defaults, filled before validation so config.yaml records them.
        if not isinstance(data, dict) or data.get("method") not in ("kto", "cpo", "simpo"):
            return data
        method, data = data["method"], dict(data)
        data.setdefault("loss_type", [{"kto": "kto", "cpo": "sigmoid", "simpo": "simpo"}[method]])
        if method == "simpo":
            data.setdefault("beta", 2.0)  # the SimPO paper's beta (2.0-2.5); DPO's 0.1 barely moves its loss
            data.setdefault("cpo_alpha", 0.0)
        if method == "cpo":
            data.setdefault("cpo_alpha", 1.0)
        loss = data["loss_type"]
        if "simpo" in (loss if isinstance(loss, list) else [loss]) and "simpo_gamma" not in data:
            with contextlib.suppress(TypeError, ValueError):  # a bad beta is reported by its own field's check
                data["simpo_gamma"] = 0.5 * float(data.get("beta", 0.1))
        return data

    @model_validator(mode="after")
    def _check_offline(self) -> "RLHFConfig":
        for name, methods in self.OFFLINE_ONLY.items():
            if name in self.model_fields_set and self.method not in methods:
                raise ValueError(f"{name}: only used by --method {' or '.join(methods)} (method is {self.method})")
        if self.method in ("orpo", "rm") and "loss_type" in self.model_fields_set:
            raise ValueError(f"loss_type: --method {self.method} has a single loss; drop loss_type")
        if self.method == "rm" and "beta" in self.model_fields_set:
            raise ValueError("beta: a reward model is trained without a reference model or beta; drop beta")
        allowed = self.LOSSES.get(self.method)
        if allowed is not None:
            wrong = [name for name in self.loss_type if name not in allowed]
            if wrong:
                raise ValueError(f"loss_type: {wrong[0]} is not a {self.method} loss; choose from {', '.join(allowed)}")
            if self.method != "dpo" and len(self.loss_type) != 1:
                raise ValueError(f"loss_type: {self.method} takes one loss, got {', '.join(self.loss_type)}")
        if self.method == "kto" and self.loss_type == ["kto"] and self.batch_size < 2:
            raise ValueError("batch_size: KTO estimates its KL term from the other rows of a batch; use batch_size >= 2")
        return self
    # end of offline preference methods
