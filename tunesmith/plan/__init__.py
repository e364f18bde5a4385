"""Memory planning: hardware probe, exact parameter counts from config.json, peak-memory estimates and settings
that fit. Pure functions; nothing here loads weights. Run: tunesmith plan MODEL [--gpu-memory 24]

The package is also callable as the API function tunesmith.plan (api_package.py says why)."""

from tunesmith.api_package import callable_as_api_function

from tunesmith.plan.estimate import Estimate, Setup, estimate_inference, estimate_training
from tunesmith.plan.hardware import Hardware, probe
from tunesmith.plan.model_shape import ModelShape, load_shape, shape_from_config
from tunesmith.plan.recommend import Choice, recommend

__all__ = ["Choice", "Estimate", "Hardware", "ModelShape", "Setup", "estimate_inference", "estimate_training",
           "load_shape", "probe", "recommend", "shape_from_config"]
callable_as_api_function(__name__)
