"""tunesmith sft on a vision-language model through the console script: pictures in both row formats, packed, loss
falls; the final adapter loads with load_vision_model (+ peft) and answers an image prompt; config.yaml records the
frozen vision tower and aligner. Bad image rows stop the run before any weights load, named file:line: field."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from PIL import Image

from tunesmith.cli.main import main
from tunesmith.models.vision import encode_vision_prompt, load_vision_model


def test_sft_trains_on_images_and_final_answers(vision_sft_run, colour_data):
    losses = [json.loads(line)["loss"] for line in (vision_sft_run / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) >= 8 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses
    resolved = yaml.safe_load((vision_sft_run / "config.yaml").read_text())["_resolved"]
    assert resolved["vision"] == {"family": "qwen2-vl", "freeze_vision_tower": True, "freeze_aligner": True}

    model, processor = load_vision_model(vision_sft_run / "final", torch.float32)
    assert type(model).__name__.startswith("Peft")
    adapted = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    assert adapted and all(".language_model." in n for n in adapted)  # LoRA on the language model only
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which colour?"}]}]
    inputs = encode_vision_prompt(processor, messages, [Image.open(colour_data.parent / "imgs" / "0.png")])
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:]).startswith("It is")


@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory):
    from tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("text") / "tiny")


def test_bad_image_rows_named_before_weights_load(tiny_vlms, tiny_text_model, tmp_path, pictures, capsys):
    rows = [
        {"messages": [{"role": "user", "content": "<image>Which colour?"}, {"role": "assistant", "content": "Red."}],
         "images": [str(pictures[0]), str(pictures[1])]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "gone.png"}},
                                                   {"type": "text", "text": "Which?"}]},
                      {"role": "assistant", "content": "Red."}]},
        {"messages": [{"role": "user", "content": "<image>Which?"}, {"role": "assistant", "content": "Red."}],
         "images": ["broken.png"]},
    ]
    (tmp_path / "broken.png").write_bytes(b"not an image")
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    # the CLI's main in this process (the console script's path without its start-up cost)
    status = main(["sft", "--model", str(tiny_vlms("qwen2-vl")), "--dataset", str(data), "--output-dir",
                   str(tmp_path / "run"), "--max-steps", "1", "--report-to", "none"])
    err = capsys.readouterr().err
    assert status != 0 and "Traceback" not in err
    assert f"{data}:1: images: 2 image(s) but 1 <image> placeholder(s)" in err
    assert f"{data}:2: messages[0].content[0]: image not found: {tmp_path / 'gone.png'}" in err
    assert f"{data}:3: images[0]: {tmp_path / 'broken.png'}: not a readable image" in err
    assert "Loading weights" not in err and not (tmp_path / "run" / "final").exists()

    # too many image tokens for max_length: named by the data check (and by sft) before any weights load
    many = tmp_path / "many.jsonl"
    many.write_text(json.dumps({"messages": [{"role": "user", "content": "<image>" * 8 + "All colours?"},
                                             {"role": "assistant", "content": "Red."}],
                                "images": [str(pictures[0])] * 8}) + "\n")
    status = main(["data", "check", str(many), "--model", str(tiny_vlms("qwen2-vl")), "--max-length", "40"])
    err = capsys.readouterr().out  # data check's report
    assert status != 0 and f"{many}:1: images: " in err and "of them for 8 image(s)) > max_length 40" in err

    # a text-only model given rows with images: refused, naming the first such row
    text_rows = tmp_path / "text.jsonl"
    text_rows.write_text(json.dumps({"messages": [{"role": "user", "content": "<image>Which?"},
                                                  {"role": "assistant", "content": "Red."}],
                                     "images": [str(pictures[0])]}) + "\n")
    status = main(["sft", "--model", str(tiny_text_model), "--dataset", str(text_rows), "--output-dir",
                   str(tmp_path / "run2"), "--max-steps", "1", "--report-to", "none"])
    err = capsys.readouterr().err
    assert status != 0 and f"{text_rows}:1: images: {tiny_text_model} is a text-only model" in err


def test_data_inspect_shows_the_image_tokens_training_sees(tiny_vlms, colour_data, tmp_path):
    from tunesmith.config.data import DataInspectConfig
    from tunesmith.data.images import open_image
    from tunesmith.data.load import load_rows
    from tunesmith.data.vision import images_of
    from tunesmith.train.inspect_rows import inspect

    folder = tiny_vlms("qwen2-vl")
    report = inspect(DataInspectConfig(dataset=[str(colour_data)], model=str(folder), rows=2,
                                       output_dir=str(tmp_path / "inspect")))
    _, processor = load_vision_model(folder, torch.float32)
    for row, sample in zip(load_rows([str(colour_data)], kind="sft").rows, report.samples):
        pixels = processor.image_processor(images=[open_image(r) for r in images_of(row.messages)])
        expected = int(pixels["image_grid_thw"].prod()) // 4  # 2x2 patches merge into one token
        assert sample.ids.count(processor.image_token_id) == expected
        assert all(label == -100 for i, label in zip(sample.ids, sample.labels) if i == processor.image_token_id)
