"""--tuner longlora (train/longlora.py): RoPE scaled to the target length (transformers' rope_parameters, in the saved
config.json), S2-Attn while training, LoRA plus trainable embeddings and norms, saved merged so that the loaded model
answers as the trained one did with full attention; plan counts the embeddings and norms that train."""

import json

import pytest
import torch
from tiny import make_tiny_model
from transformers import AutoModelForCausalLM, LlamaConfig, TrainerCallback

from tunesmith import api
from tunesmith.config import SFTConfig, load
from tunesmith.errors import ConfigError
from tunesmith.plan.estimate import DTYPE_BYTES, Setup, estimate_training
from tunesmith.plan.model_shape import builtin_config, shape_from_config
from tunesmith.train.longlora import rope_parameters

WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger"]


def test_rope_is_scaled_to_the_target_length_as_transformers_reads_it():
    config = LlamaConfig(max_position_embeddings=2048)
    linear = rope_parameters(config, "linear", 8192)
    assert linear == {"rope_parameters": {"rope_theta": 10000.0, "rope_type": "linear", "factor": 4.0},
                      "max_position_embeddings": 8192}
    yarn = rope_parameters(config, "yarn", 8192)["rope_parameters"]
    assert yarn["original_max_position_embeddings"] == 2048 and yarn["factor"] == 4.0
    assert rope_parameters(config, "dynamic", 8192)["max_position_embeddings"] == 2048  # NTK scales beyond it
    assert rope_parameters(config, "linear", 1024) is None and rope_parameters(config, "none", 8192) is None
    config.rope_parameters = {"rope_type": "llama3", "factor": 8.0, "rope_theta": 5e5}
    with pytest.raises(ConfigError, match="already scaled \\(llama3\\)"):
        rope_parameters(config, "linear", 8192)


def test_longlora_trains_with_s2_and_saves_a_merged_model_with_the_scaled_rope(tmp_path):
    tiny = make_tiny_model(tmp_path / "tiny")
    toy = tmp_path / "toy.jsonl"
    toy.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"code for {w}"},
                                                      {"role": "assistant", "content": f"CODE {w} OK"}]})
                             for w in WORDS) + "\n")
    ids = torch.tensor([[1, 504, 2730, 327, 6697, 28, 4167, 30, 9, 2, 45]])
    seen = {}

    class Look(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            seen["attention"] = model.get_base_model().config._attn_implementation
            seen["trains"] = {n.split(".modules_to_save")[0].rsplit(".", 1)[-1]
                              for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}

        def on_train_end(self, args, state, control, model=None, **kwargs):
            model.eval()
            with torch.no_grad():
                seen["logits"] = model(ids).logits

    cfg = SFTConfig(model=str(tiny), dataset=[str(toy)], tuner="longlora", batch_size=3, max_steps=3, report_to=["none"],
                    learning_rate=1e-2, output_dir=str(tmp_path / "run"), lora={"rank": 4},
                    longlora={"target_length": 8192, "rope_scaling": "linear", "group_size_ratio": 0.25})
    result = api.sft(cfg, callbacks=[Look()])
    assert seen["attention"] == "s2_attention"
    assert seen["trains"] == {"embed_tokens", "input_layernorm", "post_attention_layernorm", "norm"}

    final = result.final_dir
    assert not (final / "adapter_config.json").exists()
    config = json.loads((final / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "linear" and config["rope_parameters"]["factor"] == 4.0
    assert config["max_position_embeddings"] == 8192
    merged = AutoModelForCausalLM.from_pretrained(final)
    base = AutoModelForCausalLM.from_pretrained(tiny)
    assert merged.config._attn_implementation == "sdpa"
    assert torch.allclose(merged.model.rotary_emb.inv_freq, base.model.rotary_emb.inv_freq / 4)
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, seen["logits"], atol=1e-4)  # full attention, as at the end of training
    assert not torch.equal(merged.model.embed_tokens.weight, base.model.embed_tokens.weight)
    assert not torch.equal(merged.model.norm.weight, base.model.norm.weight)
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()  # still tied


def test_longlora_is_planned_with_its_trainable_embeddings_and_norms():
    shape = shape_from_config(builtin_config("qwen2.5-0.5b-instruct"))
    lora, longlora = (estimate_training(shape, Setup(method=m, dtype="bfloat16")) for m in ("lora", "longlora"))
    full = shape.embedding_params() + shape.layers * shape.layer_norm_params() + shape.hidden
    assert longlora.trainable - lora.trainable == full
    assert longlora.total - lora.total == pytest.approx(full * DTYPE_BYTES["bfloat16"] * 4)  # copy, grad, 2 states


def test_longlora_is_refused_where_it_does_not_apply():
    from tunesmith.config.rlhf import RLHFConfig

    with pytest.raises(ConfigError, match="tuner: longlora extends a causal LM's context with sft or pt"):
        load(RLHFConfig, ["--method", "dpo", "--dataset", "x", "--tuner", "longlora"])
    with pytest.raises(ConfigError, match="no FSDP, ZeRO-3 or sequence parallel"):
        load(SFTConfig, ["--dataset", "x", "--tuner", "longlora", "--fsdp", "full-shard"])
    with pytest.raises(ConfigError, match=r"longlora: only read with --tuner longlora \(tuner is lora\)"):
        load(SFTConfig, ["--dataset", "x", "--longlora.target-length", "8192"])


def test_a_dynamic_ntk_model_is_served_up_to_its_scaled_length(tmp_path):
    from tunesmith.infer import load_engine

    folder = make_tiny_model(tmp_path / "tiny")
    model = AutoModelForCausalLM.from_pretrained(folder)
    for key, value in rope_parameters(model.config, "dynamic", 8192).items():
        setattr(model.config, key, value)
    model.save_pretrained(folder)
    engine = load_engine("transformers", str(folder), None, "cpu", "auto")
    assert engine.context_length() == 8192  # config.json says 2048: dynamic NTK scales beyond it
