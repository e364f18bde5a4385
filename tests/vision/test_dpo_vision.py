"""DPO on image prompts: pairs are rendered by the VLM renderer (prompt with its image tokens, answers as the whole
conversation renders them), and the preference collator's batch scores each side exactly as the model scores that
conversation alone: same ids, same pixels, same logits (chosen half and rejected half)."""

from __future__ import annotations

import torch
from PIL import Image

from tunesmith.data.rows import Preference
from tunesmith.models.vision import load_vision_model, template_of
from tunesmith.train.vision import VisionPreferenceCollator, render_vision_pairs


def test_preference_batch_scores_like_the_conversation_alone(tiny_vlms, pictures):
    model, processor = load_vision_model(tiny_vlms("qwen2-vl"), torch.float32)
    template = template_of(processor)
    rows = []
    for i, (good, bad) in enumerate([("Red.", "Blue."), ("Green, surely.", "Red.")]):
        prompt = [{"role": "user", "content": [{"type": "image", "image": str(pictures[i])},
                                               {"type": "text", "text": "Which colour?"}]}]
        rows.append(Preference(prompt, good, bad, "pairs.jsonl", i + 1))
    problems = []
    ds = render_vision_pairs(rows, template, 256, problems)
    assert not problems and ds["image_refs"] == [[str(pictures[0])], [str(pictures[1])]]
    batch = VisionPreferenceCollator(template, template.tokenizer.pad_token_id)([ds[0], ds[1]])
    with torch.no_grad():
        together = model(**{k: v for k, v in batch.items() if k != "completion_mask"}, use_cache=False).logits
    for side, answers in enumerate([[r.chosen for r in rows], [r.rejected for r in rows]]):
        for i, (row, answer) in enumerate(zip(rows, answers)):
            image = Image.open(row.prompt[0]["content"][0]["image"])
            ids, _ = template.render_images(row.prompt + [{"role": "assistant", "content": answer}], [image],
                                            loss_on="last")
            side_ids = ds[i]["chosen_ids"] if side == 0 else ds[i]["rejected_ids"]
            ids = ids[: len(ds[i]["prompt_ids"]) + len(side_ids)]  # through the end-of-turn token (layout after it)
            assert ids[len(ds[i]["prompt_ids"]):] == side_ids
            alone_inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
                            **{k: v for k, v in template.image_inputs([image]).items() if k != "num_image_tokens"},
                            **{k: torch.tensor([v]) for k, v in template.text_inputs(ids).items()}}
            with torch.no_grad():
                alone = model(**alone_inputs, use_cache=False).logits[0]
            row_index = side * len(rows) + i
            assert batch["input_ids"][row_index, : len(ids)].tolist() == ids
            assert batch["completion_mask"][row_index].sum().item() == len(ids) - len(ds[i]["prompt_ids"])
            torch.testing.assert_close(together[row_index, : len(ids)], alone, atol=1e-4, rtol=1e-4)


def test_methods_without_images_refuse_image_rows(tiny_vlms, pictures, tmp_path, capsys):
    import json

    from tunesmith.cli.main import main

    data = tmp_path / "kto.jsonl"
    data.write_text(json.dumps({"prompt": "<image>Which colour?", "completion": "Red.", "label": True,
                                "images": [str(pictures[0])]}) + "\n")
    status = main(["rlhf", "--method", "kto", "--model", str(tiny_vlms("qwen2-vl")), "--dataset", str(data),
                   "--output-dir", str(tmp_path / "run"), "--max-steps", "1", "--report-to", "none"])
    err = capsys.readouterr().err
    assert status != 0 and f"{data}:1: images: rlhf --method kto does not train on images yet" in err
