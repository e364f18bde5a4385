"""liger's fused RMSNorm, RoPE and SwiGLU in the served model on CUDA (models/kernels.py, TransformersEngine.use_kernels):
the layers really are replaced, and greedy answers through the continuous batch (CUDA graphs, async batching) equal
those of the model's own layers in float32."""

import pytest
from test_continuous_fast_paths import PROMPTS, greedy, run
from tiny import make_tiny_model, untie_head

from tunesmith.infer import load_engine

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return untie_head(make_tiny_model(tmp_path_factory.mktemp("kernels") / "tiny-untied"))


def answers(model_dir, kernels: str):
    engine = load_engine("transformers", model=str(model_dir), device="cuda", dtype="float32", kernels=kernels,
                         batching={"use_cuda_graph": True, "use_async_batching": True, "max_memory_percent": 0.05})
    try:
        served = engine.served[engine.default]
        layer = served.model.get_decoder().layers[0]
        return run(engine, [(p, greedy()) for p in PROMPTS]), served.kernels, layer.mlp._get_name()
    finally:
        engine.shutdown()


def test_fused_layers_answer_as_the_models_own(model_dir):
    pytest.importorskip("liger_kernel")
    own, kernels, mlp = answers(model_dir, "none")  # first: liger's RoPE patch is module-wide and cannot be undone
    assert kernels == "none" and "Liger" not in mlp
    fused, kernels, mlp = answers(model_dir, "liger")
    assert kernels.startswith("liger") and "Liger" in mlp
    assert fused == own
