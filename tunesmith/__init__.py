"""tunesmith: data -> train -> align -> evaluate -> export -> serve, for fine-tuned language models."""

from tunesmith.config import DataCheckConfig, ExportConfig, InferConfig, PTConfig, SFTConfig
from tunesmith.config.rlhf import RLHFConfig

__version__ = "0.1.0"
__all__ = ["DataCheckConfig", "ExportConfig", "InferConfig", "PTConfig", "RLHFConfig", "SFTConfig", "data_check", "export",
           "infer", "pt", "rlhf", "sft"]


def __getattr__(name: str):
    # The API functions import torch lazily; reaching them through the package keeps `import tunesmith` fast.
    if name in ("sft", "pt", "rlhf", "infer", "export", "data_check", "deploy", "download"):
        from tunesmith import api

        return getattr(api, name)
    raise AttributeError(name)
