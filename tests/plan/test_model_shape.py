"""Parameter counts from config.json equal the real models' counts (built on the meta device: no memory, no weights)."""

import json

import pytest
import torch
import transformers as tf

from tunesmith.errors import ConfigError, ModelNotFoundError
from tunesmith.plan.model_shape import BUILTIN, builtin_config, load_shape, read_config, shape_from_config

SMALL = dict(vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
FAMILIES = [
    (tf.LlamaConfig, {}),
    (tf.LlamaConfig, dict(attention_bias=True, mlp_bias=True, tie_word_embeddings=True)),
    (tf.Qwen2Config, {}),
    (tf.Qwen2Config, dict(tie_word_embeddings=True)),
    (tf.Qwen3Config, dict(head_dim=32)),
    (tf.MistralConfig, dict(head_dim=16)),
    (tf.GemmaConfig, dict(head_dim=16)),
    (tf.Gemma2Config, dict(head_dim=16)),
    (tf.Gemma3TextConfig, dict(head_dim=16)),
    (tf.Phi3Config, {}),
]
# Published parameter counts of the registry's models (their model cards / safetensors metadata).
PUBLISHED = {
    "qwen2.5-0.5b-instruct": 494_032_768, "qwen2.5-1.5b-instruct": 1_543_714_304, "qwen2.5-7b-instruct": 7_615_616_512,
    "qwen3-8b": 8_190_735_360, "llama-3.2-1b-instruct": 1_235_814_400, "llama-3.1-8b-instruct": 8_030_261_248,
    "mistral-7b-instruct": 7_248_023_552, "gemma-2-2b-it": 2_614_341_888, "phi-3.5-mini-instruct": 3_821_079_552,
}


def meta_count(config) -> int:
    with torch.device("meta"):
        model = tf.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def as_dict(config) -> dict:
    return json.loads(config.to_json_string())


@pytest.mark.parametrize("cls,extra", FAMILIES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_tiny_families_count_exactly(cls, extra):
    config = cls(**SMALL, **extra)
    assert shape_from_config(as_dict(config)).params() == meta_count(config)


@pytest.mark.parametrize("name", ["qwen2.5-0.5b-instruct", "qwen2.5-7b-instruct", "llama-3.1-8b-instruct", "qwen3-8b"])
def test_real_shapes_count_exactly(name):
    values = builtin_config(name)
    cls = {"qwen2": tf.Qwen2Config, "qwen3": tf.Qwen3Config, "llama": tf.LlamaConfig}[values.pop("model_type")]
    config = cls(**values)
    shape = shape_from_config(as_dict(config))
    assert shape.params() == meta_count(config) == PUBLISHED[name]


def test_builtin_shapes_match_published_counts():
    assert set(BUILTIN) == set(PUBLISHED)
    for name, count in PUBLISHED.items():
        assert shape_from_config(builtin_config(name)).params() == count, name


def test_embedded_smollm2_config_counts_exactly():
    from tunesmith.models.embedded import prepared_folder

    try:
        path = prepared_folder() / "config.json"
    except ModelNotFoundError as err:
        pytest.skip(f"embedded model not installed: {err}")
    config = tf.AutoConfig.from_pretrained(path.parent)
    shape = load_shape("smollm2-135m-instruct")  # through tunesmith.models.load.resolve
    assert shape.params() == meta_count(config) == 134_515_008
    assert shape.source.endswith("config.json")


def test_breakdown_sums_to_params():
    shape = shape_from_config(builtin_config("qwen2.5-7b-instruct"))
    assert sum(shape.breakdown().values()) == shape.params()
    assert shape.breakdown()["lm_head"] == 152064 * 3584  # untied
    assert shape_from_config(builtin_config("qwen2.5-0.5b-instruct")).breakdown()["lm_head"] == 0  # tied


@pytest.mark.parametrize("targets,dora", [("all-linear", False), (["q_proj", "v_proj"], False), ("all-linear", True)])
def test_lora_counts_equal_peft(targets, dora):
    from peft import LoraConfig, get_peft_model

    config = tf.Qwen2Config(**SMALL)
    model = tf.AutoModelForCausalLM.from_config(config)
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=targets, use_dora=dora, task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert shape_from_config(as_dict(config)).lora_params(8, targets, dora=dora) == trainable


def test_lora_count_of_qwen25_7b_shape():
    # per layer: q 16*(3584+3584), k and v 16*(3584+512), o like q, gate/up/down 16*(3584+18944); 28 layers
    shape = shape_from_config(builtin_config("qwen2.5-7b-instruct"))
    assert shape.lora_params(16) == 28 * (2 * 114688 + 2 * 65536 + 3 * 360448) == 40_370_176


def test_phi3_fused_modules_and_unknown_targets():
    shape = shape_from_config(builtin_config("phi-3.5-mini-instruct"))
    assert set(shape.lora_modules()) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    with pytest.raises(ConfigError, match="lora.targets: no module q_proj in a phi3 layer; its linear modules are "
                                          "qkv_proj, o_proj, gate_up_proj, down_proj"):
        shape.lora_modules(["q_proj"])


@pytest.mark.parametrize("spelling", ["all", "ALL", ["all"], "all-linear", ("all-linear",)])
def test_all_is_peft_all_linear(spelling):
    """LLaMA-Factory's `lora_target: all` (plan's --lora-targets all, a sft file's lora section) is peft's all-linear:
    every linear layer of the decoder layers, the output head aside; it was a ValueError traceback ("all not in a llama
    layer")."""
    shape = shape_from_config(builtin_config("qwen2.5-7b-instruct"))
    assert shape.lora_modules(spelling) == shape.lora_modules("all-linear") == shape.linear_modules()
    assert shape.lora_params(16, spelling) == shape.lora_params(16, "all-linear") == 40_370_176


def test_unknown_targets_name_every_bad_one_and_the_models_linear_modules():
    shape = shape_from_config(builtin_config("qwen2.5-7b-instruct"))
    with pytest.raises(ConfigError) as err:
        shape.lora_params(16, ["q_proj", "fc1", "attn"])
    assert str(err.value) == ("lora.targets: no module fc1, attn in a qwen2 layer; its linear modules are q_proj, "
                              "k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj: name some of these, or all "
                              "(all-linear: every linear layer but the output head)")


def test_a_bad_lora_target_stops_sfts_preflight_with_a_config_error(tmp_path):
    """Through train/preflight.py (the memory plan counts the adapters before any weights load): `tunesmith sft
    --lora.targets foo` printed a traceback from model_shape.py; the CLI prints a ConfigError's message instead."""
    from tunesmith.config import SFTConfig
    from tunesmith.train.preflight import preflight

    (tmp_path / "config.json").write_text(json.dumps(builtin_config("llama-3.2-1b-instruct")))
    with pytest.raises(ConfigError, match="lora.targets: no module foo_proj in a llama layer; its linear modules are "
                                          "q_proj, k_proj"):
        preflight(SFTConfig(model=str(tmp_path), dataset=["x"], device="cpu", lora={"targets": ["q_proj", "foo_proj"]}),
                  tmp_path, rows=10)
    plan = preflight(SFTConfig(model=str(tmp_path), dataset=["x"], device="cpu", lora={"targets": "all"}), tmp_path,
                     rows=10)
    assert plan.needed_gib is not None


def test_local_folder_and_config_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(builtin_config("qwen2.5-7b-instruct")))
    assert load_shape(str(tmp_path)).params() == PUBLISHED["qwen2.5-7b-instruct"]
    assert load_shape(str(tmp_path / "config.json")).params() == PUBLISHED["qwen2.5-7b-instruct"]


def test_offline_hub_id_fails_clearly_and_registry_names_fall_back(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache
    with pytest.raises(ModelNotFoundError, match="not in the hub cache and the hub cannot be reached"):
        read_config("some-org/some-model")
    shape = load_shape("qwen2.5-7b-instruct")
    assert shape.params() == PUBLISHED["qwen2.5-7b-instruct"] and shape.source.startswith("built-in")


def test_moe_and_non_decoder_configs_are_refused():
    with pytest.raises(ValueError, match="mixture-of-experts"):
        shape_from_config({**builtin_config("qwen3-8b"), "num_experts": 128})
    with pytest.raises(ValueError, match="no hidden_size"):
        shape_from_config({"model_type": "bert", "vocab_size": 10})
