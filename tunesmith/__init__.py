"""tunesmith: data -> train -> align -> evaluate -> export -> serve, for fine-tuned language models."""

from tunesmith.config import DataCheckConfig, ExportConfig, InferConfig, PTConfig, SFTConfig

__version__ = "0.1.0"
__all__ = ["DataCheckConfig", "ExportConfig", "InferConfig", "PTConfig", "SFTConfig", "data_check", "export",
           "infer", "pt", "sft"]


def __getattr__(name: str):
    # The API functions import torch lazily; reaching them through the package keeps `import tunesmith` fast.
    if name in ("sft", "pt", "infer", "export", "data_check"):
        from tunesmith import api

        return getattr(api, name)
    raise AttributeError(name)
