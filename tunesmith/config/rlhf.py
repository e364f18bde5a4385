"""`tunesmith rlhf`: preference alignment and RL. `--method` names the algorithm (as in PRODUCT.md), so how the
weights train is `--tuner lora | qlora | dora | full` here (ms-swift calls it tuner_type)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from tunesmith.config.commands import TrainConfig

DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


class RLHFConfig(TrainConfig):
    """Preference alignment on top of a base model or an SFT run. Run: tunesmith rlhf --method dpo -c dpo.yaml"""

    method: Literal["dpo", "kto", "orpo", "simpo", "cpo", "rm", "ppo", "grpo"] = Field(
        "dpo", description="Algorithm: dpo | kto | orpo | simpo | cpo | rm | ppo | grpo.")
    tuner: Literal["lora", "qlora", "dora", "full"] = Field("lora", description="How the weights train.")
    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference model (DPO's beta).")
    loss_type: list[Literal[DPO_LOSSES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["sigmoid"], description="DPO loss variants (TRL's names); several are summed.")
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
