"""models/kernels.py on a machine without CUDA: liger is refused when asked for by name and left out under auto, and
the model file's layer classes that liger swaps module-wide are put back after a model is patched (later models of
the same type, loaded with `kernels: none`, keep their own norms and MLPs)."""

import pytest
from tiny import make_tiny_model

from tunesmith.errors import HardwareError
from tunesmith.models import kernels
from tunesmith.models.load import load_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(make_tiny_model(tmp_path_factory.mktemp("k") / "tiny"), dtype="float32", device="cpu")


def test_liger_is_refused_on_cpu_by_name_and_left_out_under_auto(model):
    with pytest.raises(HardwareError, match="kernels: liger needs a CUDA GPU"):
        kernels.apply_kernels("liger", model, "cpu")
    assert kernels.apply_kernels("auto", model, "cpu") == "none"


def test_the_layer_classes_liger_swaps_are_put_back(model, monkeypatch):
    module = kernels._modeling_module(model)
    classes = kernels._layer_classes(model)
    assert any(name.endswith("MLP") for name in classes) and any(name.endswith("RMSNorm") for name in classes)
    for name in classes:  # what liger's apply_liger_kernel_to_<model> does to the file
        monkeypatch.setattr(module, name, type("Liger" + name, (), {}))
    kernels._restore_layer_classes(model, classes)
    assert all(getattr(module, name) is value for name, value in classes.items())
