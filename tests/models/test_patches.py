"""tunesmith/models/patches: each patch still matches the upstream internals it touches, and is still needed. A
failure here after an upgrade says which patch to revisit (or delete)."""

import inspect

import pytest
import torch

from tiny import make_tiny_model
from tunesmith.models import patches


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture
def tiny(tiny_folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_folder)


def test_the_installed_releases_are_the_ones_the_patches_were_tested_with():
    for package in patches.TESTED:
        assert patches.check_upstream(package), f"{package}: re-check tunesmith/models/patches before moving the pin"


# -----------------------------------------------------------------------------
# peft_lora.py


def lora(model):
    from peft import get_peft_model

    from tunesmith.config import LoraCfg
    from tunesmith.models.load import lora_config

    return get_peft_model(model, lora_config(LoraCfg(), "lora"))


def adapter_input_dtypes(model, autocast: bool) -> set:
    """The dtype each lora_A sees during one bf16-autocast forward of bf16 hidden states."""
    seen = set()
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.add(args[0].dtype))
             for n, m in model.named_modules() if n.endswith("lora_A.default")]
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    return seen


def test_peft_still_casts_adapter_inputs_to_fp32_and_the_flag_stops_it(tiny):
    from tunesmith.models.patches.peft_lora import keep_adapter_inputs_in_compute_dtype

    model = lora(tiny.to(torch.bfloat16))
    for module in model.modules():  # peft keeps adapter weights in fp32 for bf16 bases (autocast_adapter_dtype)
        if hasattr(module, "lora_A"):
            assert module.lora_A["default"].weight.dtype == torch.float32
    assert adapter_input_dtypes(model, autocast=True) == {torch.float32}  # upstream: the copy the patch removes
    assert keep_adapter_inputs_in_compute_dtype(model, torch.bfloat16) == 14  # 7 linears x 2 layers
    assert adapter_input_dtypes(model, autocast=True) == {torch.bfloat16}


def test_peft_lora_linear_forward_is_what_the_fused_forward_replaces():
    from peft.tuners.lora.layer import Linear

    params = list(inspect.signature(Linear.forward).parameters)
    assert params[:2] == ["self", "x"] and "args" in params and "kwargs" in params
    source = inspect.getsource(Linear.forward)
    # upstream still scales B's output in a pass of its own: the work the fused forward folds into one addmm
    assert "* scaling" in source and "lora_B" in source
    for attribute in ("active_adapters", "disable_adapters", "merged", "lora_variant", "scaling", "base_layer"):
        assert attribute in inspect.getsource(Linear) or hasattr(Linear, attribute), attribute


# -----------------------------------------------------------------------------
# attention.py


def test_the_public_call_still_refuses_our_flash_name_and_the_config_attribute_still_decides(tiny):
    from transformers import AttentionInterface

    from tunesmith.models.patches.attention import set_attention

    calls = []
    original = AttentionInterface._global_mapping["sdpa"]

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    name = "flash_tunesmith_patch_probe"
    AttentionInterface.register(name, spy)
    with pytest.raises(Exception):  # noqa: B017 - upstream tries the hub's kernels for any "flash" name
        tiny.set_attn_implementation(name)
    set_attention(tiny, name)
    tiny(input_ids=torch.tensor([[1, 2, 3]]))
    assert calls, "config._attn_implementation no longer picks the attention: revisit models/patches/attention.py"


# -----------------------------------------------------------------------------
# trl_rollouts.py


def test_grpo_trainer_still_has_the_single_turn_generator_and_reads_the_limit_where_we_set_it():
    from trl import GRPOTrainer
    from trl.generation.vllm_generation import VLLMGeneration

    params = list(inspect.signature(GRPOTrainer._generate_single_turn).parameters)
    assert params[:5] == ["self", "prompt_ids", "images", "multimodal_fields", "num_generations"]
    init = inspect.getsource(GRPOTrainer.__init__)
    assert '"max_new_tokens": self.max_completion_length' in init
    assert "self.generation_config = GenerationConfig(**generation_kwargs" in init
    assert "self.generation_kwargs = generation_kwargs" in init
    assert "self.max_completion_length" in inspect.getsource(VLLMGeneration)


# -----------------------------------------------------------------------------
# deepspeed_cpu.py


def test_deepspeed_comm_builds_its_shm_op_only_while_the_probe_dict_allows_it(monkeypatch):
    pytest.importorskip("deepspeed")
    import importlib

    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    from tunesmith.models.patches.deepspeed_cpu import SHM_OP, skip_shm_allreduce_build

    ds_torch = importlib.import_module("deepspeed.comm.torch")  # the package's attribute `torch` is torch itself
    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    assert builder.NAME == SHM_OP
    built = []
    monkeypatch.setattr(type(builder), "load", lambda self, *a, **k: built.append(self.NAME) or object())
    monkeypatch.setitem(deepspeed.ops.__compatible_ops__, SHM_OP, True)
    assert ds_torch.build_shm_op() is not None and built == [SHM_OP]  # what TorchBackend.__init__ calls on CPU
    skip_shm_allreduce_build()
    assert ds_torch.build_shm_op() is None and built == [SHM_OP]  # not built again
