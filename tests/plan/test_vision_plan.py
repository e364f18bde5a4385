"""`tunesmith plan` on vision-language models: the tower and aligner counted exactly (against the real model's
parameters), the plan larger than its language model's alone by the tower's weights, and the image tokens shown."""

import json
from dataclasses import replace

import pytest

from tunesmith.config.plan import PlanConfig
from tunesmith.plan.estimate import Setup, estimate_training, optimizer_bytes
from tunesmith.plan.hardware import Hardware
from tunesmith.plan.model_shape import load_shape
from tunesmith.plan.run import plan

TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1,
            "head_dim": 32, "vocab_size": 500, "tie_word_embeddings": True}


def configs():
    from transformers import LlavaConfig, Qwen2_5_VLConfig, Qwen2VLConfig

    return {
        "qwen2_vl": Qwen2VLConfig(text_config=TEXT, tie_word_embeddings=True, vision_config={
            "depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2}),
        "qwen2_5_vl": Qwen2_5_VLConfig(text_config=TEXT, tie_word_embeddings=True, vision_config={
            "depth": 2, "hidden_size": 32, "out_hidden_size": 64, "intermediate_size": 64, "num_heads": 2,
            "fullatt_block_indexes": [1]}),
        "llava": LlavaConfig(text_config=dict(TEXT, model_type="qwen2"), tie_word_embeddings=True, vision_config={
            "model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "image_size": 56, "patch_size": 14, "projection_dim": 32}),
    }


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """config.json of each VLM, and of its language model alone (text_config as a model of its own)."""
    out = {}
    for name, config in configs().items():
        folder = tmp_path_factory.mktemp(name)
        config.to_json_file(folder / "config.json")
        text = {**config.to_dict()["text_config"], "tie_word_embeddings": True}
        (folder / "text.json").write_text(json.dumps(text))
        out[name] = (config, folder)
    return out


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "llava"])
def test_vision_params_equal_the_real_models(folders, family):
    import torch
    from transformers import AutoModelForImageTextToText

    config, folder = folders[family]
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    tower = sum(p.numel() for n, p in model.named_parameters()
                if "language_model" not in n and not n.startswith("lm_head"))
    shape = load_shape(str(folder / "config.json"))
    assert shape.vision_params() == tower > 0
    assert shape.params() == total
    assert load_shape(str(folder / "text.json")).params() == total - tower


def hardware():
    return Hardware(gpus=[], ram_gib=64)


@pytest.mark.parametrize("tuner", ["lora", "full"])
def test_the_plan_of_a_vlm_is_its_language_models_plus_the_tower(folders, tuner, capsys):
    _config, folder = folders["qwen2_vl"]
    vlm_shape, text_shape = load_shape(str(folder / "config.json")), load_shape(str(folder / "text.json"))
    tower = vlm_shape.vision_params()
    setup = Setup(method=tuner, dtype="bfloat16", seq=512, micro_batch=1, images=0)
    vlm, text = estimate_training(vlm_shape, setup), estimate_training(text_shape, setup)
    assert vlm.parts["weights"] - text.parts["weights"] == tower * 2  # bf16
    if tuner == "full":  # the tower trains too: two bf16 Adam states per weight (and gradients in the step)
        assert vlm.trainable - text.trainable == tower
        assert optimizer_bytes(vlm_shape, setup) - optimizer_bytes(text_shape, setup) == tower * 4
        assert vlm.phases["step"] - text.phases["step"] >= tower * (2 + 2 + 4)
        assert vlm.total - text.total >= tower * (2 + 4) * 1.08 - 1  # weights and states, with allocator slack
    else:  # LoRA adapts the language model only: the tower adds its frozen weights
        assert vlm.trainable == text.trainable
        assert vlm.total - text.total == pytest.approx(tower * 2 * 1.08, rel=0.01)
    common = {"tuner": tuner, "gpu_memory": 24, "max_length": 512, "batch_size": 1, "json": True, "dtype": "bfloat16"}
    planned = plan(PlanConfig(model=str(folder / "config.json"), **common), hardware())
    alone = plan(PlanConfig(model=str(folder / "text.json"), **common), hardware())
    assert planned["model"]["params"] - alone["model"]["params"] == tower == planned["model"]["vision"]["params"]
    assert planned["model"]["params_by_part"]["vision tower+aligner"] == tower


def test_image_tokens_per_sample_are_counted_and_their_activations_planned(folders, capsys):
    _config, folder = folders["qwen2_vl"]
    common = {"model": str(folder / "config.json"), "tuner": "lora", "gpu_memory": 24, "max_length": 512,
              "batch_size": 1,
                  "gradient_checkpointing": False, "json": True, "dtype": "bfloat16"}
    none = plan(PlanConfig(images_per_sample=0, **common), hardware())
    two = plan(PlanConfig(images_per_sample=2, image_size=224, **common), hardware())
    vision = two["model"]["vision"]
    assert vision["tokens_per_image"] == (224 // 14) ** 2 // 4 == 64 and vision["image_tokens_per_sample"] == 128
    assert any("128 image tokens of the 512" in n for n in two["notes"])
    assert none["model"]["vision"]["image_tokens_per_sample"] == 0
    shape = load_shape(str(folder / "config.json"), image_size=224)
    setup = Setup(method="lora", dtype="bfloat16", seq=512, micro_batch=2)
    without, with_two = estimate_training(shape, setup), estimate_training(shape, replace(setup, images=2))
    patches = 2 * 2 * 64 * 4  # pictures x micro-batch x tokens x the 2x2 patches merged into each token
    one_layer = (6 * 32 + 2 * 64) * 2 * patches  # a frozen tower keeps one layer's activations at a time
    assert with_two.phases["loss"] - without.phases["loss"] == one_layer
    full = plan(PlanConfig(images_per_sample=8, image_size=448, **{**common, "max_length": 256}), hardware())
    assert any("fill the whole sequence" in n for n in full["notes"])


# Qwen2-VL-2B-Instruct's config.json as the hub ships it (flat: the language model's keys at the top level)
QWEN2_VL_2B = {"model_type": "qwen2_vl", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
               "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
               "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
               "bos_token_id": 151643, "eos_token_id": 151645, "image_token_id": 151655, "video_token_id": 151656,
               "vision_start_token_id": 151652, "vision_end_token_id": 151653,
               "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
               "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
                                 "hidden_size": 1536, "patch_size": 14, "spatial_merge_size": 2,
                                 "temporal_patch_size": 2}}


def test_a_hub_config_counts_as_the_published_model(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(QWEN2_VL_2B))
    shape = load_shape(str(path))
    # sum(p.numel()) of Qwen2VLForConditionalGeneration built from this config (2.21B, as the model card says)
    assert shape.params() == 2_208_985_600 and shape.vision_params() == 665_271_296
    assert shape.vision.tokens_per_image == 256  # 448x448: 32x32 patches of 14 px, merged 2x2
