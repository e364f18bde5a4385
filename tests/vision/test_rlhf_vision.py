"""rlhf on image prompts. DPO: pairs are rendered by the VLM renderer (prompt with its image tokens, answers as the
whole conversation renders them), and the preference collator's batch scores each side exactly as the model scores
that conversation alone (same ids, pixels and logits, chosen half and rejected half). GRPO: TRL's VLM path is fed the
prompts with their pictures, its encoding checked equal to tunesmith's renderer; the reference log-probs TRL computes
for a sampled completion (pixels, M-RoPE token types, left padding and all) equal the model's own on that prompt +
completion encoded alone; reward functions get the row's columns (its images included). KTO: rows rendered like DPO's,
its collator's batch trains exactly the answers (never an image token, the KL rows too), a run pulls the desirable
answers above the undesirable. Methods TRL has no vision path for (orpo, cpo, simpo, rm) and ppo refuse image rows,
naming why and what works."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from tunesmith.data.rows import Preference
from tunesmith.models.vision import load_vision_model, template_of
from tunesmith.train import vision as train_vision
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


@pytest.mark.parametrize("method", ["orpo", "cpo", "simpo", "rm", "ppo"])
def test_methods_without_a_vision_path_refuse_image_rows(method, tiny_vlms, pictures, tmp_path, capsys):
    from tunesmith.cli.main import main
    from tunesmith.train.vision import NO_IMAGES

    data = tmp_path / "rows.jsonl"
    row = {"prompt": "<image>Which colour?", "images": [str(pictures[0])]}
    data.write_text(json.dumps(row if method == "ppo" else {**row, "chosen": "Red.", "rejected": "Blue."}) + "\n")
    status = main(["rlhf", "--method", method, "--model", str(tiny_vlms("qwen2-vl")), "--dataset", str(data),
                   "--output-dir", str(tmp_path / "run"), "--max-steps", "1", "--report-to", "none",
                   *(["--rewards.funcs", "length"] if method == "ppo" else [])])
    err = capsys.readouterr().err
    assert status != 0 and "Traceback" not in err
    assert f"{data}:1: images: rlhf --method {method} does not train on images: {NO_IMAGES[method]}" in err
    assert "dpo, kto and grpo train on image prompts" in err and not (tmp_path / "run" / "final").exists()


def test_grpo_scores_completions_with_their_images(tiny_vlms, colour_data, tmp_path, monkeypatch):
    from tunesmith import api
    from tunesmith.config.rlhf import RLHFConfig
    from tunesmith.models.vision import encode_vision_prompt, load_vision_model
    from tunesmith.train.rewards.registry import ROW_KEY

    rows = [json.loads(line) for line in colour_data.read_text().splitlines()]
    prompts = colour_data.parent / "prompts.jsonl"  # beside the pictures its paths name
    prompts.write_text("\n".join(json.dumps({"prompt": r["messages"][:1], "colour": r["messages"][1]["content"],
                                             **({"images": r["images"]} if "images" in r else {})})
                                 for r in rows) + "\n")
    plugin = tmp_path / "reward.py"
    log = tmp_path / "reward_columns.jsonl"
    plugin.write_text(
        "import json\nfrom tunesmith.train.rewards import register_reward\n\n"
        "@register_reward('names_colour')\ndef names_colour(completions, colour, **columns):\n"
        f"    with open({str(log)!r}, 'a') as f:\n"
        "        f.write(json.dumps(columns.get('images')) + '\\n')\n"
        "    return [float(c.split()[-1].rstrip('.') in str(x)) for c, x in zip(colour, completions)]\n")
    seen: list = []

    def recording(base, template, conversations):
        cls = train_vision_trainer(base, template, conversations)

        class Recording(cls):
            def _generate_and_score_completions(self, inputs):
                out = super()._generate_and_score_completions(inputs)
                seen.append(([x["prompt"] for x in inputs], out))
                return out

        return Recording

    train_vision_trainer = train_vision.vision_grpo_trainer
    monkeypatch.setattr(train_vision, "vision_grpo_trainer", recording)
    folder = tiny_vlms("qwen2-vl")
    cfg = RLHFConfig(method="grpo", model=str(folder), dataset=[str(prompts)], output_dir=str(tmp_path / "run"),
                     max_steps=1, batch_size=4, report_to=["none"], max_length=256,
                     grpo={"num_generations": 4}, rollout={"max_completion_length": 6},
                     rewards={"plugin": [str(plugin)], "funcs": ["names_colour"]})
    result = api.rlhf(cfg)
    assert (result.final_dir / "adapter_config.json").exists()
    images_columns = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(v and all(str(x).startswith("imgs/") for x in v[0]) for v in images_columns)  # the rows' own column

    prompt_msgs, out = seen[0]
    model, processor = load_vision_model(folder, torch.float32)  # the reference: LoRA starts at the base
    image_id = processor.image_token_id
    assert torch.equal(out["mm_token_type_ids"][:, : out["prompt_ids"].shape[1]].bool(), out["prompt_ids"] == image_id)
    for i in range(2):
        prompt = out["prompt_ids"][i][out["prompt_mask"][i].bool()].tolist()
        completion = out["completion_ids"][i][out["completion_mask"][i].bool()].tolist()
        row = prompt_msgs[i][-1][ROW_KEY]
        picture = next(p["image"] for m in prompt_msgs[i] for p in m["content"] if p["type"] == "image")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which colour?"}]}]
        alone = encode_vision_prompt(processor, messages, [picture])
        assert alone["input_ids"][0].tolist() == prompt, row  # what TRL generated from = what deploy sends
        ids = torch.tensor([prompt + completion])
        inputs = {**alone, "input_ids": ids, "attention_mask": torch.ones_like(ids),
                  "mm_token_type_ids": torch.cat([alone["mm_token_type_ids"],
                                                  torch.zeros(1, len(completion), dtype=torch.long)], dim=1)}
        with torch.no_grad():
            logits = model(**inputs).logits[0, len(prompt) - 1: -1]
        ours = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(completion)[:, None])[:, 0]
        theirs = out["ref_per_token_logps"][i][out["completion_mask"][i].bool()]
        torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def _kto_rows(colour_data):
    """KTO rows beside the colour pictures: the right colour desirable, a wrong one undesirable, per picture."""
    rows = [json.loads(line) for line in colour_data.read_text().splitlines()]
    out = []
    for r in rows:
        right = r["messages"][1]["content"]
        wrong = "It is blue." if "blue" not in right else "It is red."
        extra = {"images": r["images"]} if "images" in r else {}
        out += [{"prompt": r["messages"][:1], "completion": right, "label": True, **extra},
                {"prompt": r["messages"][:1], "completion": wrong, "label": False, **extra}]
    path = colour_data.parent / "kto.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


def test_kto_batch_trains_only_the_answers_and_keeps_the_pictures(tiny_vlms, colour_data):
    from tunesmith.data.load import load_rows
    from tunesmith.train.vision import VisionUnpairedCollator, render_vision_unpaired

    _, processor = load_vision_model(tiny_vlms("qwen2-vl"), torch.float32)
    template = template_of(processor)
    rows = load_rows([str(_kto_rows(colour_data))], kind="kto").rows[:4]
    ds = render_vision_unpaired(rows, template, 256, problems := [])
    assert not problems and ds["label"] == [True, False, True, False]
    features = [{**ds[i], "KL_completion_ids": ds[(i - 1) % 4]["completion_ids"]} for i in range(4)]
    batch = VisionUnpairedCollator(template, template.tokenizer.pad_token_id)(features)
    image = processor.image_token_id
    for prefix in ("", "KL_"):
        ids, mask = batch[f"{prefix}input_ids"], batch[f"{prefix}completion_mask"].bool()
        assert (ids == image).any() and not mask[ids == image].any()  # no image token is ever trained
        assert torch.equal(batch[f"{prefix}mm_token_type_ids"].bool(), ids == image)
        for i, f in enumerate(features):
            answer = f["completion_ids"] if not prefix else f["KL_completion_ids"]
            assert ids[i][mask[i]].tolist() == answer  # exactly the answer's tokens, end-of-turn included
    assert batch["image_grid_thw"].shape[0] == sum(len(f["image_refs"]) for f in features)  # one set, both passes


def test_kto_on_image_prompts_learns_the_desirable_answers(tiny_vlms, colour_data, tmp_path):
    from tunesmith import api
    from tunesmith.config.rlhf import RLHFConfig

    cfg = RLHFConfig(method="kto", model=str(tiny_vlms("qwen2-vl")), dataset=[str(_kto_rows(colour_data))],
                     output_dir=str(tmp_path / "run"), max_steps=10, batch_size=4, learning_rate=5e-3,
                     warmup_ratio=0, logging_steps=1, report_to=["none"], max_length=256, seed=0)
    result = api.rlhf(cfg)
    metrics = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    margins = [m["rewards/margins"] for m in metrics if "rewards/margins" in m]  # desirable - undesirable reward
    losses = [m["loss"] for m in metrics if "rewards/margins" in m]
    assert len(margins) == 10 and margins[0] == 0.0 and losses[0] == 0.5  # the policy starts as its reference
    assert sum(margins[-3:]) / 3 > sum(margins[:3]) / 3 + 0.05 and max(losses[-3:]) < 0.5
    assert (result.final_dir / "adapter_config.json").exists()
