"""The DAO chart step's CPU model (examples/dao-proposal/build_vlm.py): the assembled LLaVA folder carries the language
model's weights unchanged, its processor turns a --bold chart into one image token, and `tunesmith sft` trains it with
the tower and the projector open (their adapters move). Built here from a tiny random LM with SmolLM2's tokenizer, so
the test takes seconds; the README's run uses the embedded SmolLM2-135M-Instruct."""

import importlib.util
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from tiny import make_tiny_model

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "dao-proposal"


def _module(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_vlm_makes_a_model_tunesmith_trains_with_its_eye_open(tmp_path):
    from tunesmith import api
    from tunesmith.config import SFTConfig
    from tunesmith.models.vision import family_of, load_processor

    build_vlm, charts = _module("build_vlm"), _module("make_charts")
    lm = make_tiny_model(tmp_path / "lm")
    folder = build_vlm.build(tmp_path / "vlm", lm_folder=lm)
    assert family_of(folder).name == "llava"
    processor = load_processor(folder)
    source, built = load_file(lm / "model.safetensors"), load_file(folder / "model.safetensors")
    # saved in LLaVA's checkpoint layout: language_model.model.* (transformers maps it to model.language_model.*)
    carried = {n.split("language_model.", 1)[1].removeprefix("model."): w for n, w in built.items()
               if n.startswith(("language_model.", "model.language_model.")) and "lm_head" not in n}
    assert carried.keys() == {n.removeprefix("model.") for n in source if n.startswith("model.")}
    for name, weight in carried.items():
        if name != "embed_tokens.weight":  # one row longer: the <image> token
            assert torch.equal(weight, source[f"model.{name}"]), name
    assert torch.equal(carried["embed_tokens.weight"][:-1], source["model.embed_tokens.weight"])

    rows = charts.make("train", 4, charts.SEED, tmp_path / "charts", bold=True)
    assert rows[0]["messages"][1]["content"].startswith("Trend: rising.\n\n## Title\n")
    from PIL import Image

    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}]}], add_generation_prompt=True)
    picture = Image.open(tmp_path / "charts" / rows[0]["images"][0])
    assert picture.size == (64, 64)
    ids = processor(text=[text], images=[picture.convert("RGB")])["input_ids"][0]
    assert list(ids).count(processor.image_token_id) == 1

    cfg = SFTConfig(model=str(folder), dataset=[str(tmp_path / "charts" / "train.jsonl")],
                    output_dir=str(tmp_path / "run"), freeze_vision_tower=False, freeze_aligner=False, max_steps=2,
                    batch_size=2, learning_rate=1e-2, warmup_ratio=0, logging_steps=1, report_to=["none"], seed=0)
    result = api.sft(cfg)
    adapter = load_file(result.final_dir / "adapter_model.safetensors")
    for part in ("vision_tower", "multi_modal_projector", "language_model"):
        moved = [w for n, w in adapter.items() if part in n and "lora_B" in n]
        assert moved and any(w.abs().sum() > 0 for w in moved), part  # B starts at zero: these trained
    recorded = json.dumps((result.run_dir / "config.yaml").read_text())
    assert "freeze_vision_tower: false" in recorded and "freeze_aligner: false" in recorded


def test_build_vlm_patch_sets_the_image_tokens_and_tokenizing_follows_it(tmp_path):
    """--patch 64: one image token per chart. The same chart files tokenized for the 16-token model first must not
    come back from the tokenizing cache with 16 (the patch size lives on LLaVA's processor, not its image processor)."""
    from tunesmith.config import SFTConfig
    from tunesmith.data.load import load_rows
    from tunesmith.train.preflight import load_template
    from tunesmith.train.vision import VisionRun

    build_vlm, charts = _module("build_vlm"), _module("make_charts")
    lm = make_tiny_model(tmp_path / "lm")
    charts.make("train", 4, charts.SEED, tmp_path / "charts", bold=True)
    data = tmp_path / "charts" / "train.jsonl"
    for patch, tokens in ((16, 16), (64, 1)):
        folder = build_vlm.build(tmp_path / f"vlm{patch}", lm_folder=lm, patch=patch)
        cfg = SFTConfig(model=str(folder), dataset=[str(data)], output_dir=str(tmp_path / "run"))
        template, base = load_template(cfg)
        vlm = VisionRun.start(cfg, template, base)
        table, problems = vlm.tokenize(load_rows(cfg.dataset, kind="sft").rows, "assistant", 256)
        image_id = vlm.template.processor.image_token_id
        assert not problems and [ids.count(image_id) for ids in table["input_ids"]] == [tokens] * 4
