"""Configuration: one validated model per command, filled by YAML, flags and Python alike. Imports no torch."""

from tunesmith.config.commands import (
    DEFAULT_MODEL,
    DataCheckConfig,
    DeployConfig,
    DownloadConfig,
    InferConfig,
    PTConfig,
    SFTConfig,
    TrainConfig,
)
from tunesmith.config.export import ExportConfig
from tunesmith.config.load import help_text, load, read_yaml, validate
from tunesmith.config.plan import PlanConfig
from tunesmith.config.sections import GenerationCfg, LoraCfg

__all__ = [
    "DEFAULT_MODEL", "DataCheckConfig", "DeployConfig", "DownloadConfig", "ExportConfig", "GenerationCfg", "InferConfig", "LoraCfg", "PTConfig", "PlanConfig",
    "SFTConfig", "TrainConfig", "help_text", "load", "read_yaml", "validate",
]
