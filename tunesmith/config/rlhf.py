"""`tunesmith rlhf`: preference alignment and RL. `--method` names the algorithm (as in PRODUCT.md); how the weights
train is `--tuner lora | qlora | dora | full`, as in every training command.

Each method reads its own section, with the defaults of its paper:

    method: grpo
    rewards: {funcs: [format, length], weights: [1.0, 0.5], plugin: [my_rewards.py]}   # grpo and ppo
    rollout: {max_completion_length: 256, temperature: 1.0}                           # grpo and ppo
    grpo: {num_generations: 8, variant: dapo}

Flags are the same paths with dashes: `--grpo.num-generations 8`, `--dpo.beta 0.2`. The flat keys of earlier
releases (`beta`, `num_generations`, `reward_funcs`, ...) still work and print a one-line note naming the new key.
"""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from tunesmith.config.commands import TrainConfig
from tunesmith.config.local_paths import local_path
from tunesmith.config.sections import Section, changed

DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
KTO_LOSSES = ("kto", "apo_zero_unpaired")  # TRL's KTOConfig.loss_type
CPO_LOSSES = ("sigmoid", "hinge", "ipo", "simpo")  # TRL's CPOConfig.loss_type
METHODS = ("dpo", "kto", "orpo", "simpo", "cpo", "rm", "ppo", "grpo")


def _one_loss(method: str, allowed: tuple[str, ...], value: object) -> object:
    """A single TRL loss name (a one-element list is accepted: earlier releases took a list for every method)."""
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError(f"{method} takes one loss, got {', '.join(map(str, value))}")
        value = value[0]
    if value not in allowed:
        raise ValueError(f"{value} is not a {method} loss; choose from {', '.join(allowed)}")
    return value


# -----------------------------------------------------------------------------
# Offline preference methods: train/dpo.py, kto.py, orpo.py, cpo.py (cpo and simpo)


class DPOCfg(Section):
    """DPO (Rafailov et al. 2023); the reference is the starting model with the adapter switched off."""

    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference model.")
    loss_type: list[str] = Field(default_factory=lambda: ["sigmoid"], description=(
        "TRL's DPO losses; several are summed: " + ", ".join(DPO_LOSSES) + "."))

    @field_validator("loss_type", mode="before")
    @classmethod
    def _losses(cls, value: object) -> object:
        for name in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
            if name not in DPO_LOSSES:
                raise ValueError(f"{name} is not a dpo loss; choose from {', '.join(DPO_LOSSES)}")
        return [value] if isinstance(value, str) else value


class KTOCfg(Section):
    """KTO (Ethayarajh et al. 2024) on answers labelled desirable or undesirable."""

    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference model.")
    loss_type: str = Field("kto", description="kto | apo_zero_unpaired (TRL's KTOConfig.loss_type).")
    desirable_weight: float = Field(1.0, gt=0, description=(
        "Weight of the desirable (label true) rows' loss; raise it when they are the fewer."))
    undesirable_weight: float = Field(1.0, gt=0, description=(
        "Weight of the undesirable rows' loss. The KTO paper keeps desirable_weight x desirable rows / "
        "(undesirable_weight x undesirable rows) between 1 and 4/3."))

    @field_validator("loss_type", mode="before")
    @classmethod
    def _loss(cls, value: object) -> object:
        return _one_loss("kto", KTO_LOSSES, value)


class ORPOCfg(Section):
    """ORPO (Hong et al. 2024): SFT and preference in one loss, no reference model."""

    beta: float = Field(0.1, gt=0, description="lambda: the weight of the odds-ratio term beside the NLL.")


class CPOCfg(Section):
    """CPO (Xu et al. 2024): the policy's own likelihoods of chosen and rejected, plus an NLL term; no reference."""

    beta: float = Field(0.1, gt=0, description="Scale of the implicit reward.")
    loss_type: str = Field("sigmoid", description="sigmoid | hinge | ipo | simpo (TRL's CPOConfig.loss_type).")
    alpha: float = Field(1.0, ge=0, description="Weight of the NLL term on the chosen answers (TRL's cpo_alpha).")
    simpo_gamma: float | None = Field(None, ge=0, description=(
        "With loss_type simpo: target reward margin (default 0.5 x beta, the SimPO paper's gamma/beta ratio)."))

    @field_validator("loss_type", mode="before")
    @classmethod
    def _loss(cls, value: object) -> object:
        return _one_loss("cpo", CPO_LOSSES, value)

    @model_validator(mode="after")
    def _gamma(self) -> "CPOCfg":
        if self.loss_type == "simpo" and self.simpo_gamma is None:
            self.simpo_gamma = 0.5 * self.beta
        return self


class SimPOCfg(Section):
    """SimPO (Meng et al. 2024): length-normalised rewards with a target margin, no reference model. Run on TRL's
    CPOTrainer with loss_type simpo, as TRL documents. Defaults: the paper's beta 2.0 and gamma = 0.5 x beta."""

    beta: float = Field(2.0, gt=0, description="Reward scale (the SimPO paper uses 2.0-2.5).")
    loss_type: str = Field("simpo", description="simpo: its only loss (kept so that configs naming it still load).")
    gamma: float | None = Field(None, ge=0, description="Target reward margin (default 0.5 x beta).")
    alpha: float = Field(0.0, ge=0, description="Weight of an NLL term on the chosen answers; above 0 gives CPO-SimPO.")

    @field_validator("loss_type", mode="before")
    @classmethod
    def _loss(cls, value: object) -> object:
        return _one_loss("simpo", ("simpo",), value)

    @model_validator(mode="after")
    def _gamma(self) -> "SimPOCfg":
        if self.gamma is None:
            self.gamma = 0.5 * self.beta
        return self


# -----------------------------------------------------------------------------
# Online methods: train/grpo.py (and episodes.py for --grpo.env), train/ppo.py


class RewardsCfg(Section):
    """What scores a rollout (grpo, ppo): functions by name, plugin files, a reward model."""

    funcs: list[str] = Field(default_factory=list, description=(
        "Reward functions by name: format, length, repetition, accuracy, or any @register_reward in a plugin file."))
    weights: list[float] | None = Field(None, description=(
        "One weight per reward function, in order, then the reward model's (default 1); default 1 each."))
    plugin: list[str] = Field(default_factory=list, description=(
        "Python files whose @register_reward functions funcs can name."), json_schema_extra=local_path())
    model: str | None = Field(None, description=(
        "Sequence-classification reward model folder (a --method rm run), scored as one more reward."),
        json_schema_extra=local_path())
    format: Literal["regex", "json"] = Field("regex", description=(
        "What the format reward checks: format_pattern, or that the answer is JSON."))
    format_pattern: str | None = Field(None, description="Regular expression the whole answer must match for the format reward.")
    length_target: int | None = Field(None, ge=1, description=(
        "length reward: tokens to aim for (default: only penalise answers near max_completion_length)."))
    repetition_ngram: int = Field(3, ge=1, description="repetition reward: size of the token n-grams whose repeats are penalised.")

    @model_validator(mode="after")
    def _check(self) -> "RewardsCfg":
        if self.format_pattern is not None:
            try:
                re.compile(self.format_pattern)
            except re.error as err:
                raise ValueError(f"format_pattern: not a valid regular expression: {err}") from None
        if self.weights is not None:
            n = len(self.funcs)
            if len(self.weights) not in ((n, n + 1) if self.model else (n,)):
                rewards = ", ".join(self.funcs + ([f"reward model {self.model}"] if self.model else []))
                raise ValueError(f"weights: {len(self.weights)} weight(s) for the rewards ({rewards or 'none'}); "
                                 "give one per reward function, in order")
        return self


class RolloutCfg(Section):
    """How answers are sampled during training (grpo, ppo)."""

    max_completion_length: int = Field(256, ge=1, description="Most new tokens per completion.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass of the rollouts.")


class GRPOCfg(Section):
    """GRPO and its variants, a preset over TRL's GRPOConfig knobs (VARIANTS in train/grpo.py). A knob left at None
    takes the variant's value. batch_size counts completions (TRL's per_device_train_batch_size) and defaults to
    num_generations."""

    shortcuts: ClassVar[dict[str, str]] = {"beta": "kl_coef"}  # TRL's GRPOConfig name: `grpo: {beta: 0.04}`

    variant: Literal["grpo", "dapo", "dr_grpo", "gspo", "rloo"] = Field("grpo", description=(
        "grpo (DeepSeekMath) | dapo (clip-higher, token-level loss, overlong filtering) | dr_grpo (no std scaling) | "
        "gspo (sequence-level ratio) | rloo (leave-one-out baseline, TRL's RLOOTrainer)."))
    num_generations: int = Field(8, ge=2, description="Completions sampled per prompt; rewards are compared within this group.")
    kl_coef: float | None = Field(None, ge=0, description="KL penalty towards the starting model (TRL's beta); default: the variant's.")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo"] | None = Field(
        None, description="TRL's GRPO loss_type; default: the variant's.")
    scale_rewards: Literal["group", "batch", "none"] | None = Field(None, description=(
        "Divide advantages by the reward std of the group, the batch, or not at all."))
    epsilon: float | None = Field(None, gt=0, description="Lower clip range of the probability ratio; default: the variant's.")
    epsilon_high: float | None = Field(None, gt=0, description="Upper clip range (DAPO's clip-higher); default: the variant's.")
    importance_sampling_level: Literal["token", "sequence"] | None = Field(None, description=(
        "Ratio per token, or per sequence (GSPO)."))
    mask_truncated_completions: bool | None = Field(None, description=(
        "Leave completions cut at max_completion_length out of the loss (DAPO's overlong filtering)."))
    use_vllm: bool = Field(False, description="Generate rollouts with vLLM (colocate mode; needs the vllm package).")
    env: str | None = Field(None, description=(
        "Multi-turn environment as path.py:ClassName: reset(row) -> observation, step(action) -> (observation, "
        "reward, done); the dataset rows are what reset receives (train/episodes.py)."),
        json_schema_extra=local_path("python"))
    max_turns: int = Field(5, ge=1, description="Most policy turns per episode with env (each turn is one answer).")
    max_turn_tokens: int | None = Field(None, ge=1, description=(
        "Most new tokens per turn with env (default: max_completion_length, which also bounds the episode)."))

    @model_validator(mode="after")
    def _check(self) -> "GRPOCfg":
        if self.variant == "rloo":
            knobs = [f for f in ("loss_type", "scale_rewards", "importance_sampling_level") if getattr(self, f) is not None]
            if knobs:
                raise ValueError(f"{knobs[0]}: not a knob of --variant rloo (TRL's RLOOTrainer); drop it or pick another variant")
            if self.env is not None:
                raise ValueError("env: --variant rloo runs TRL's RLOOTrainer, which takes no rollout function; pick "
                                 "another variant")
        if self.env is not None:
            path, sep, name = self.env.rpartition(":")
            if not sep or not path.endswith(".py") or not name.isidentifier():
                raise ValueError(f"env: expected path.py:ClassName, got {self.env!r}")
        return self


class PPOCfg(Section):
    """PPO (train/ppo.py): a value head on the policy's trunk, GAE, clipped policy and value losses."""

    epochs: int = Field(4, ge=1, description="Passes over each batch of rollouts.")
    num_mini_batches: int = Field(1, ge=1, description="Optimizer steps per pass; the batch is split into this many.")
    cliprange: float = Field(0.2, gt=0, description="Clip range of the policy's probability ratio.")
    cliprange_value: float = Field(0.2, gt=0, description="Clip range of the value update.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss beside the policy loss.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount over the answer's tokens.")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE lambda (1 = Monte Carlo returns, 0 = one-step).")
    kl_coef: float = Field(0.05, ge=0, description="KL penalty towards the starting model, per token (TRL's former PPOConfig).")


# -----------------------------------------------------------------------------
# The command


class RLHFConfig(TrainConfig):
    """Preference alignment and RL on top of a base model or an SFT run. Run: tunesmith rlhf --method dpo -c dpo.yaml"""

    method: Literal["dpo", "kto", "orpo", "simpo", "cpo", "rm", "ppo", "grpo"] = Field(
        "dpo", description="Algorithm: dpo | kto | orpo | simpo | cpo | rm | ppo | grpo; its section holds its settings.")
    learning_rate: float = Field(5e-5, gt=0, description="Peak learning rate (5e-5 suits LoRA DPO, 5e-7 full).")
    epochs: float = Field(1.0, gt=0, description="Passes over the data.")
    dpo: DPOCfg = Field(default_factory=DPOCfg, description="--method dpo.")
    kto: KTOCfg = Field(default_factory=KTOCfg, description="--method kto.")
    orpo: ORPOCfg = Field(default_factory=ORPOCfg, description="--method orpo.")
    cpo: CPOCfg = Field(default_factory=CPOCfg, description="--method cpo.")
    simpo: SimPOCfg = Field(default_factory=SimPOCfg, description="--method simpo.")
    grpo: GRPOCfg = Field(default_factory=GRPOCfg, description="--method grpo.")
    ppo: PPOCfg = Field(default_factory=PPOCfg, description="--method ppo.")
    rewards: RewardsCfg = Field(default_factory=RewardsCfg, description="--method grpo and ppo.")
    rollout: RolloutCfg = Field(default_factory=RolloutCfg, description="--method grpo and ppo.")
    command: ClassVar[str] = "rlhf"

    # Which method reads which section (rm reads none: it has no settings of its own).
    READERS: ClassVar[dict[str, tuple[str, ...]]] = {
        "dpo": ("dpo",), "kto": ("kto",), "orpo": ("orpo",), "cpo": ("cpo",), "simpo": ("simpo",), "grpo": ("grpo",),
        "ppo": ("ppo",), "rewards": ("grpo", "ppo"), "rollout": ("grpo", "ppo")}
    # The flat keys of earlier releases (and of TRL's configs) -> where they live now; a dict picks the section by
    # --method, and a method it lacks is an error naming the methods that read the key. TRL's GRPOConfig.beta is the
    # KL coefficient, so a flat `beta: 0.04` written for grpo is grpo.kl_coef.
    moved: ClassVar[dict[str, str | dict[str, str]]] = {
        "beta": {**{m: f"{m}.beta" for m in ("dpo", "kto", "orpo", "cpo", "simpo")}, "grpo": "grpo.kl_coef"},
        "loss_type": {"dpo": "dpo.loss_type", "kto": "kto.loss_type", "cpo": "cpo.loss_type", "simpo": "simpo.loss_type"},
        "desirable_weight": {"kto": "kto.desirable_weight"},
        "undesirable_weight": {"kto": "kto.undesirable_weight"},
        "cpo_alpha": {"cpo": "cpo.alpha", "simpo": "simpo.alpha"},
        "simpo_gamma": {"cpo": "cpo.simpo_gamma", "simpo": "simpo.gamma"},
        **{k: {"grpo": f"grpo.{k}"} for k in ("variant", "num_generations", "scale_rewards", "epsilon", "epsilon_high",
                                               "importance_sampling_level", "mask_truncated_completions", "use_vllm",
                                               "env", "max_turns", "max_turn_tokens")},
        "grpo_loss_type": {"grpo": "grpo.loss_type"},
        "kl_coef": {"grpo": "grpo.kl_coef", "ppo": "ppo.kl_coef"},
        "ppo_epochs": {"ppo": "ppo.epochs"},
        **{k: {"ppo": f"ppo.{k}"} for k in ("num_mini_batches", "cliprange", "cliprange_value", "vf_coef", "gamma",
                                             "gae_lambda")},
        **{k: {"grpo": f"rewards.{new}", "ppo": f"rewards.{new}"} for k, new in (
            ("reward_funcs", "funcs"), ("reward_weights", "weights"), ("plugin", "plugin"), ("reward_model", "model"),
            ("format", "format"), ("format_pattern", "format_pattern"), ("length_target", "length_target"),
            ("repetition_ngram", "repetition_ngram"))},
        **{k: {"grpo": f"rollout.{k}", "ppo": f"rollout.{k}"} for k in ("max_completion_length", "temperature", "top_p")},
    }
    # Flat keys whose old meaning has a different name for another method: say which.
    MISREAD: ClassVar[dict[tuple[str, str], str]] = {
        ("beta", "ppo"): "ppo.kl_coef", ("loss_type", "grpo"): "grpo.loss_type",
        ("loss_type", "ppo"): "ppo.cliprange"}

    @classmethod
    def moved_elsewhere(cls, key: str, method: str) -> str:
        if (key, method) in cls.MISREAD:
            return f"{key}: a DPO setting; for {method} use {cls.MISREAD[key, method]}"
        if method == "rm" and key == "beta":
            return "beta: a reward model is trained without a reference model or beta; drop beta"
        if method == "orpo" and key == "loss_type":
            return f"loss_type: --method {method} has a single loss; drop loss_type"
        readers = cls.moved[key]
        return f"{key}: only used by --method {' or '.join(readers)} (method is {method})"

    @model_validator(mode="before")
    @classmethod
    def _grpo_batch(cls, data):
        # One prompt's group per step by default: TRL's batch counts completions and must hold whole groups.
        if isinstance(data, dict) and data.get("method") == "grpo" and "batch_size" not in data:
            grpo = data.get("grpo") or {}
            section = grpo if isinstance(grpo, dict) else grpo.model_dump()
            generations = section.get("num_generations", data.get("num_generations", 8))  # flat: an old key
            data = {**data, "batch_size": generations}
        return data

    @model_validator(mode="after")
    def _check_rlhf(self) -> "RLHFConfig":
        if self.packing:
            raise ValueError("packing: not supported for preference data; set packing: false")
        if self.method in ("grpo", "ppo") and self.truncation in ("left", "right"):
            raise ValueError(f"truncation: {self.method} renders each prompt again for its rollouts, so a prompt cannot "
                             "be cut; use error or drop")
        for section, readers in self.READERS.items():
            if changed(self, section) and self.method not in readers:
                raise ValueError(f"{section}: only read by --method {' or '.join(readers)} (method is {self.method})")
        if self.method == "kto" and self.kto.loss_type == "kto" and self.batch_size < 2:
            raise ValueError("batch_size: KTO estimates its KL term from the other rows of a batch; use batch_size >= 2")
        if self.method == "grpo":
            per_step = self.batch_size * self.grad_accum
            if per_step % self.grpo.num_generations:
                raise ValueError(
                    f"batch_size x grad_accum ({self.batch_size} x {self.grad_accum}) must be a multiple of "
                    f"grpo.num_generations ({self.grpo.num_generations}): each prompt's completions are scored as one "
                    f"group; e.g. --batch-size {self.grpo.num_generations}")
        if self.neftune_alpha:
            raise ValueError("neftune_alpha: sft and pt only (a preference or reward loss would compare noisy policy "
                             "log-probabilities with clean reference ones)")
        if self.method in ("rm", "ppo") and self.tuner not in ("lora", "qlora", "dora", "full"):
            raise ValueError(f"tuner: --method {self.method} trains with lora, qlora, dora or full (its value head "
                             f"is saved beside a LoRA adapter); tuner is {self.tuner}")
        if self.method == "ppo":
            if not self.trains_adapter:
                raise ValueError("tuner: ppo's reference model is the base with the adapter switched off; use lora, "
                                 "qlora or dora")
            if self.grad_accum != 1:
                raise ValueError("grad_accum: ppo splits each batch with ppo.num_mini_batches instead; drop grad_accum")
            if self.batch_size % self.ppo.num_mini_batches:
                raise ValueError(f"ppo.num_mini_batches: {self.ppo.num_mini_batches} does not divide batch_size "
                                 f"{self.batch_size}")
        return self
