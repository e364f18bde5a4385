"""tunesmith: data -> train -> align -> evaluate -> export -> serve, for fine-tuned language models."""

from tunesmith.config import (
    DataCheckConfig,
    DeployConfig,
    DownloadConfig,
    ExportConfig,
    InferConfig,
    PlanConfig,
    PTConfig,
    SFTConfig,
)
from tunesmith.config.eval import EvalConfig
from tunesmith.config.rlhf import RLHFConfig

__version__ = "0.1.0"
API = ("sft", "pt", "rlhf", "infer", "evaluate", "deploy", "export", "plan", "data_check", "download")
__all__ = ["DataCheckConfig", "DeployConfig", "DownloadConfig", "EvalConfig", "ExportConfig", "InferConfig", "PTConfig", "PlanConfig",
           "RLHFConfig", "SFTConfig", *API]


def __getattr__(name: str):
    # The API functions import torch lazily; reaching them through the package keeps `import tunesmith` fast.
    if name in API:
        from tunesmith import api

        return getattr(api, name)
    if name == "register_reward":  # for reward plugins; the rewards package imports no torch
        from tunesmith.train.rewards import register_reward

        return register_reward
    raise AttributeError(name)
