"""Training vision-language models: what sft, dpo, kto and grpo add when --model is a VLM (the other rlhf methods
refuse image rows, NO_IMAGES says why).

    vlm = VisionRun.start(cfg, template, base_folder)       # None for a text model; refuses what cannot be exact
    train_ds, problems = vlm.tokenize(rows, cfg.loss_on, cuts)  # ids, labels (-100 on every vision token), image refs
    model, device, dtype = vlm.load_trainable(cfg, base_folder)  # vision tower / aligner frozen, LoRA on the LM
    trainer = run_trainer(..., trainer_cls=vlm.trainer_cls(model), args=vlm.args(...))

Rows keep their images as references (absolute paths or data URIs, data/vision.py); the collator opens them and asks
the processor for the pixels of each batch, and checks that the image tokens in the ids are exactly as many as the
processor gives those pictures. Packing (--packing) puts several samples with their images in one row, padding-free:
positions restart at each sample (for Qwen2-VL/2.5-VL the 3-D M-RoPE positions are computed per sample, from that
sample's own image grids), and attention stays within a sample (transformers builds the block mask from the restarting
text positions). Families whose inputs cannot be packed exactly refuse it (models/vision.py says why per family).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from tunesmith.config.commands import LORA_TUNERS
from tunesmith.data.images import open_image
from tunesmith.data.rows import Preference, Problem
from tunesmith.data.vision import has_images, images_of
from tunesmith.errors import ConfigError, DataError
from tunesmith.models import vision
from tunesmith.templates import IGNORE
from tunesmith.templates.vision import VisionTemplate

log = logging.getLogger("tunesmith")
M_ROPE = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl")
# Why a method refuses image rows (TRL 1.16): its trainer takes no processor or pixels
NO_IMAGES = {
    "orpo": "TRL's ORPOTrainer (trl.experimental) feeds the model token ids only, no pixels",
    "cpo": "TRL's CPOTrainer (trl.experimental) feeds the model token ids only, no pixels",
    "simpo": "TRL's CPOTrainer (trl.experimental), which SimPO runs on, feeds the model token ids only, no pixels",
    "rm": "TRL's RewardTrainer trains a sequence classifier on token ids, with no vision-language path",
    "ppo": "tunesmith's PPO loop (train/ppo.py) rolls out and scores text prompts only",
}


def vision_template(cfg: Any, template: Any, base_folder: Path) -> VisionTemplate | None:
    """For a VLM: the renderer with its processor (from the run continued, else the base), carrying the text
    template's system prompt and chat_template_kwargs; None for a text model."""
    if vision.family_of(base_folder) is None:
        return None
    adapters = Path(cfg.adapters) if getattr(cfg, "adapters", None) else None
    folder = adapters if adapters and (adapters / "preprocessor_config.json").exists() else base_folder
    return VisionTemplate(vision.load_processor(folder), default_system=template.default_system,
                          chat_template_kwargs=template.chat_template_kwargs)


def refuse_images_for_text_model(rows: list, model: str, method: str | None = None) -> None:
    """Rows with images where no VLM renderer will read them: refused, naming the first such row (a text template
    would render the image parts as garbage). With `method`: that method takes no images yet, even on a VLM."""
    for row in rows:
        messages = getattr(row, "messages", None) or getattr(row, "prompt", None)
        if not has_images(messages):
            continue
        if method is not None and vision.is_vision_model(model):
            raise DataError(f"{row.source}:{row.line}: images: rlhf --method {method} does not train on images: "
                            f"{NO_IMAGES.get(method, 'it has no vision path')}; sft and rlhf --method dpo, kto and "
                            "grpo train on image prompts (dpo or kto for preferences), or drop the images")
        raise DataError(f"{row.source}:{row.line}: images: {model} is a text-only model; train a vision-language "
                        f"model ({', '.join(f.name for f in vision.FAMILIES)}) on rows with images, or drop the "
                        "images")


@dataclass
class VisionRun:
    template: VisionTemplate
    family: vision.VisionFamily
    freeze_vision_tower: bool
    freeze_aligner: bool
    packing: bool = False  # decided at the start: the data stage packs before preflight decides anything

    @classmethod
    def start(cls, cfg: Any, template: Any, base_folder: Path) -> VisionRun | None:
        vt = vision_template(cfg, template, base_folder)
        if vt is None:
            for key in ("vision_lr", "aligner_lr"):
                if getattr(cfg, key, None):
                    raise ConfigError(f"{key}: {cfg.model} is a text model, with no vision tower or aligner to "
                                      f"train at its own rate; drop --{key.replace('_', '-')}")
            return None
        family = vision.family_of(base_folder)
        adapter_tuner = cfg.tuner not in ("full", "galore", "lisa", "freeze")
        tower = cfg.freeze_vision_tower if cfg.freeze_vision_tower is not None else True
        aligner = cfg.freeze_aligner if cfg.freeze_aligner is not None else adapter_tuner
        run = cls(vt, family, tower, aligner, packing=bool(cfg.packing))
        run.check(cfg)
        return run

    def check(self, cfg: Any) -> None:
        if cfg.truncation in ("left", "right"):
            raise ConfigError(f"truncation: {cfg.truncation} would cut through a row's image tokens; a "
                              f"vision-language model ({self.family.name}) takes error or drop")
        if cfg.packing and self.family.packing:
            raise ConfigError(f"packing: refused for {self.family.name}: {self.family.packing}")
        if cfg.tuner not in LORA_TUNERS and cfg.tuner != "full":
            raise ConfigError(f"tuner: {cfg.tuner} is not supported for vision-language models yet; use lora, qlora, "
                              "dora or full")

    def recorded(self) -> dict[str, Any]:
        return {"vision": {"family": self.family.name, "freeze_vision_tower": self.freeze_vision_tower,
                           "freeze_aligner": self.freeze_aligner}}

    # -------------------------------------------------------------------------
    # Data

    def tokenize(self, rows: list, loss_on: str, max_length: int, cuts: Any = None) -> tuple[Any, list[Problem]]:
        """A datasets.Dataset with input_ids, labels and image_refs per row (cached by content, image files' sizes and
        times included); too-long rows are problems (error) or left out and counted (drop)."""
        from tunesmith.train.tokenize import _cached, _key

        payload = [[r.messages, r.extra.get("tools"), _stats(images_of(r.messages))] for r in rows]
        processor = self.template.processor  # its settings decide how many tokens a picture becomes
        # the whole processor's settings: LLaVA's patch_size, say, lives on the processor, not its image processor
        settings = [type(processor).__name__, processor.to_json_string()]
        key = _key("sft-vision", [settings, payload], self.template, loss_on)

        def build() -> dict[str, list]:
            ids, labels = [], []
            for row in rows:
                pictures = [open_image(ref) for ref in images_of(row.messages)]
                i, l = self.template.render_images(row.messages, pictures, loss_on, tools=row.extra.get("tools"))
                ids.append(i)
                labels.append(l)
            return {"input_ids": ids, "labels": labels}

        table = _cached(key, build)
        problems: list[Problem] = []
        keep: dict[str, list] = {"input_ids": [], "labels": [], "image_refs": []}
        for n, row in enumerate(rows):
            ids, labels = table["input_ids"][n], table["labels"][n]
            if all(label == IGNORE for label in labels):
                problems.append(Problem(row.source, row.line, "messages", "no trained tokens (every turn has loss: "
                                        "false)"))
                continue
            if len(ids) > max_length:
                if cuts is not None:
                    cuts.too_long += 1
                if cuts is not None and cuts.mode == "drop":
                    cuts.dropped += 1
                    continue
                problems.append(length_problem(row, ids, self.template.vision_token_ids, max_length))
                continue
            keep["input_ids"].append(ids)
            keep["labels"].append(labels)
            keep["image_refs"].append(images_of(row.messages))
        import datasets

        return datasets.Dataset.from_dict(keep), problems

    def pack(self, ds: Any, max_length: int) -> Any:
        """Samples in rows of at most max_length tokens (first fit, longest first), each row keeping its samples'
        lengths and image counts so the collator can restart positions and split image grids per sample."""
        import datasets

        order = sorted(range(len(ds)), key=lambda i: -len(ds[i]["input_ids"]))
        bins: list[list[int]] = []
        room: list[int] = []
        for i in order:
            size = len(ds[i]["input_ids"])
            slot = next((b for b, free in enumerate(room) if free >= size), None)
            if slot is None:
                bins.append([i])
                room.append(max_length - size)
            else:
                bins[slot].append(i)
                room[slot] -= size
        rows: dict[str, list] = {"input_ids": [], "labels": [], "image_refs": [], "seq_lengths": [], "image_counts": []}
        for members in bins:
            samples = [ds[i] for i in sorted(members)]
            rows["input_ids"].append([t for s in samples for t in s["input_ids"]])
            rows["labels"].append([t for s in samples for t in s["labels"]])
            rows["image_refs"].append([r for s in samples for r in s["image_refs"]])
            rows["seq_lengths"].append([len(s["input_ids"]) for s in samples])
            rows["image_counts"].append([len(s["image_refs"]) for s in samples])
        return datasets.Dataset.from_dict(rows)

    # -------------------------------------------------------------------------
    # Model

    def load_trainable(self, cfg: Any, folder: Path) -> tuple[Any, str, Any]:
        """The model (AutoModelForImageTextToText), vision tower and aligner frozen as asked, LoRA adapters on the
        language model (and on the tower / aligner where those train), unless lora.targets names modules itself."""
        from tunesmith.models import load as models
        from tunesmith.train import tuners

        device = models.pick_device(cfg.device)
        dtype = models.pick_dtype(cfg.dtype, device)
        model = models.load_model(folder, dtype=dtype, device=device, quantize_4bit=cfg.tuner == "qlora")
        if cfg.tuner == "qlora":
            import torch

            if dtype != torch.bfloat16:
                from peft import prepare_model_for_kbit_training

                model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(cfg.gradient_checkpointing))
        vision.freeze_parts(model, self.freeze_vision_tower, self.freeze_aligner)
        if cfg.tuner in LORA_TUNERS and cfg.lora.targets == "all-linear" and not cfg.adapters:
            targets = vision.lora_target_regex(model, vision=not self.freeze_vision_tower,
                                               aligner=not self.freeze_aligner)
            cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"targets": targets})})
        return tuners.make_trainable(cfg, model), device, dtype

    def trainer_cls(self, model: Any, packing: bool) -> Any:
        """SFTTrainer with this run's collator (TRL's own vision collator re-renders rows from messages)."""
        from trl import SFTTrainer

        return partial(SFTTrainer, data_collator=VisionCollator(self.template, packing, rope_index_of(model)
                                                                if self.family.name in M_ROPE else None))

    @staticmethod
    def args(args: Any) -> Any:
        """TRL arguments for pre-tokenized rows with image references: no preparation, no column removal (the
        collator needs image_refs), packing done here."""
        args.remove_unused_columns = False
        args.dataset_kwargs = {"skip_prepare_dataset": True}
        args.packing = False
        args.padding_free = False
        return args


def length_problem(row: Any, ids: list[int], vision_token_ids: Any, max_length: int) -> Problem:
    """A row too long for max_length, its vision tokens counted (named `images` when they are most of it)."""
    pictures = sum(1 for t in ids if t in vision_token_ids)
    field = "images" if pictures * 2 > len(ids) else "messages"
    return Problem(row.source, row.line, field, (
        f"{len(ids)} tokens ({pictures} of them for {len(images_of(row.messages))} image(s)) > max_length "
        f"{max_length}; raise max_length, make the images smaller (the processor's max_pixels) or shorten the row"))


def _stats(refs: list[str]) -> list:
    """What changes when an image file changes: its size and modification time (data URIs are their own content)."""
    out = []
    for ref in refs:
        path = Path(ref) if not ref.startswith("data:") else None
        if path is not None and path.is_file():
            stat = path.stat()
            out.append([ref, stat.st_size, stat.st_mtime_ns])
        else:
            out.append(ref)
    return out


def rope_index_of(model: Any) -> Any:
    """The model's M-RoPE position function (Qwen2-VL's get_rope_index), wherever peft wrapped it."""
    return next((m.get_rope_index for m in model.modules() if hasattr(m, "get_rope_index")), None)


class VisionCollator:
    """Batches of pre-tokenized rows: the images opened and turned into pixels by the processor (checked against the
    image tokens in the ids), then padded rows, or with packing one padding-free row whose positions restart per
    sample."""

    def __init__(self, template: VisionTemplate, packing: bool, rope_index: Any = None):
        self.template, self.packing, self.rope_index = template, packing, rope_index
        self.pad_id = template.tokenizer.pad_token_id

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        import torch

        refs = [r for f in features for r in f["image_refs"]]
        pixels = self.template.image_inputs([open_image(r) for r in refs])
        expected = pixels.pop("num_image_tokens", 0)
        found = sum(f["input_ids"].count(self.template.processor.image_token_id) for f in features)
        if found != expected:
            raise DataError(f"a batch holds {found} image tokens for {len(refs)} image(s), but the processor gives "
                            f"them {expected}: an image file changed while the run was starting; run again")
        batch = self._packed(features, pixels) if self.packing else self._padded(features)
        batch.update({k: v for k, v in pixels.items() if isinstance(v, torch.Tensor)})
        return batch

    def _padded(self, features: list[dict]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        out: dict[str, list] = {"input_ids": [], "labels": [], "attention_mask": []}
        extras: dict[str, list] = {}
        for f in features:
            pad = width - len(f["input_ids"])
            out["input_ids"].append(f["input_ids"] + [self.pad_id] * pad)
            out["labels"].append(f["labels"] + [IGNORE] * pad)
            out["attention_mask"].append([1] * len(f["input_ids"]) + [0] * pad)
            for k, v in self.template.text_inputs(f["input_ids"]).items():
                extras.setdefault(k, []).append(v + [0] * pad)
        return {k: torch.tensor(v) for k, v in {**out, **extras}.items()}

    def _packed(self, features: list[dict], pixels: dict) -> dict[str, Any]:
        """All samples of the batch in one row, padding-free: no attention mask, positions restarting per sample."""
        import torch

        ids, labels, positions, extras, mrope = [], [], [], {}, []
        grids = pixels.get("image_grid_thw")
        used = 0
        for f in features:
            lengths = f.get("seq_lengths") or [len(f["input_ids"])]
            counts = f.get("image_counts") or [len(f["image_refs"])]
            start = 0
            for size, count in zip(lengths, counts):
                sample = f["input_ids"][start: start + size]
                sample_labels = list(f["labels"][start: start + size])
                sample_labels[0] = IGNORE  # the previous sample's last token does not predict this one's first
                start += size
                ids += sample
                labels += sample_labels
                positions += list(range(size))
                text = self.template.text_inputs(sample)
                for k, v in text.items():
                    extras.setdefault(k, []).extend(v)
                if self.rope_index is not None:
                    grid = grids[used: used + count] if grids is not None and count else None
                    types = torch.tensor([text["mm_token_type_ids"]])
                    pos, _ = self.rope_index(torch.tensor([sample]), mm_token_type_ids=types, image_grid_thw=grid)
                    mrope.append(pos)
                used += count
        out = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels])}
        text_positions = torch.tensor([positions])
        if self.rope_index is not None:  # [text positions (for the block mask); temporal; height; width]
            out["position_ids"] = torch.cat([text_positions[None], torch.cat(mrope, dim=-1)], dim=0)
        else:
            out["position_ids"] = text_positions
        out.update({k: torch.tensor([v]) for k, v in extras.items()})
        # transformers isolates the samples only without an attention mask and without a KV cache (a cache makes it
        # read the positions as a continuation): training needs none
        out["use_cache"] = False
        return out


# -----------------------------------------------------------------------------
# Preference pairs (dpo): image prompts, text answers


def render_vision_pairs(rows: list, template: VisionTemplate, max_length: int, problems: list[Problem],
                        cuts: Any = None) -> Any:
    """prompt_ids / chosen_ids / rejected_ids as train/preference.py's render_pairs gives them, the prompt with its
    images' tokens, plus image_refs; the answers are the ids the whole conversation renders after the prompt."""
    import datasets

    from tunesmith.train.truncate import Cuts

    cuts = cuts or Cuts("error", max_length, template.stop_token_ids)
    table: dict[str, list] = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "image_refs": []}
    for row in rows:
        refs = images_of(row.prompt)
        pictures = [open_image(r) for r in refs]
        prompt = template.render_prompt_images(row.prompt, pictures)
        answers = []
        for text in (row.chosen, row.rejected):
            ids, labels = template.render_images(row.prompt + [{"role": "assistant", "content": text}], pictures,
                                                 loss_on="last")
            answers.append([i for i, label in zip(ids[len(prompt):], labels[len(prompt):]) if label != IGNORE])
        kept = cuts.pair(row, prompt, answers, problems, "chosen/rejected")
        if kept is None:
            continue
        prompt, answers = kept
        table["prompt_ids"].append(prompt)
        table["chosen_ids"].append(answers[0])
        table["rejected_ids"].append(answers[1])
        table["image_refs"].append(refs)
    return datasets.Dataset.from_dict(table)


class VisionPreferenceCollator:
    """TRL's preference collator (chosen rows, then rejected rows, padded), plus the pixels of each pair's images
    for both halves and the family's per-token inputs (mm_token_type_ids)."""

    def __init__(self, template: VisionTemplate, pad_token_id: int):
        from trl.trainer.dpo_trainer import DataCollatorForPreference

        self.template = template
        self.text = DataCollatorForPreference(pad_token_id=pad_token_id)

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        import torch

        refs = [r for f in features for r in f["image_refs"]]
        batch = self.text([{k: f[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for f in features])
        pictures = [open_image(r) for r in refs]
        pixels = self.template.image_inputs(pictures + pictures)  # chosen half, then rejected half
        pixels.pop("num_image_tokens", None)
        batch.update(pixels)
        extras: dict[str, list] = {}
        for row in batch["input_ids"].tolist():
            for k, v in self.template.text_inputs(row).items():
                extras.setdefault(k, []).append(v)
        batch.update({k: torch.tensor(v) for k, v in extras.items()})
        return batch


# -----------------------------------------------------------------------------
# Unpaired answers (kto): image prompts, text answers labelled desirable or not


def render_vision_unpaired(rows: list, template: VisionTemplate, max_length: int, problems: list[Problem],
                           cuts: Any = None) -> Any:
    """prompt_ids / completion_ids / label as train/kto.py's tokenize_unpaired gives them (a pair: two rows), the
    prompt with its images' tokens, plus image_refs."""
    import datasets

    from tunesmith.train.truncate import Cuts

    cuts = cuts or Cuts("error", max_length, template.stop_token_ids)
    table: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "label": [], "image_refs": []}
    for row in rows:
        refs = images_of(row.prompt)
        pictures = [open_image(r) for r in refs]
        prompt = template.render_prompt_images(row.prompt, pictures)
        answers = ([(row.chosen, True), (row.rejected, False)] if isinstance(row, Preference)
                   else [(row.completion, row.label)])
        for text, label in answers:
            ids, labels = template.render_images(row.prompt + [{"role": "assistant", "content": text}], pictures,
                                                 loss_on="last")
            completion = [i for i, lab in zip(ids[len(prompt):], labels[len(prompt):]) if lab != IGNORE]
            kept = cuts.pair(row, prompt, [completion], problems, "completion" if len(answers) == 1 else
                             "chosen/rejected")
            if kept is None:
                break
            kept_prompt, (completion,) = kept
            table["prompt_ids"].append(kept_prompt)
            table["completion_ids"].append(completion)
            table["label"].append(label)
            table["image_refs"].append(refs)
    return datasets.Dataset.from_dict(table)


class VisionUnpairedCollator:
    """TRL's KTO collator (prompt + completion rows, and with KL the prompt + the previous row's completion), plus
    the pixels of each row's images (one set serves both: the KL rows keep their own prompt) and the family's
    per-token inputs for each (KL_ prefixed for the KL rows, as KTOTrainer reads them)."""

    def __init__(self, template: VisionTemplate, pad_token_id: int):
        from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

        self.template = template
        self.text = DataCollatorForUnpairedPreference(pad_token_id=pad_token_id)

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        import torch

        keys = ("prompt_ids", "completion_ids", "KL_completion_ids", "label")
        batch = self.text([{k: f[k] for k in keys if k in f} for f in features])
        pixels = self.template.image_inputs([open_image(r) for f in features for r in f["image_refs"]])
        pixels.pop("num_image_tokens", None)
        batch.update(pixels)
        for prefix in ("", "KL_") if "KL_input_ids" in batch else ("",):
            extras: dict[str, list] = {}
            for row in batch[f"{prefix}input_ids"].tolist():
                for k, v in self.template.text_inputs(row).items():
                    extras.setdefault(k, []).append(v)
            batch.update({prefix + k: torch.tensor(v) for k, v in extras.items()})
        return batch


# -----------------------------------------------------------------------------
# GRPO: image prompts through TRL's VLM path


def vision_grpo_trainer(base: type, template: VisionTemplate, conversations: list[list[dict]]) -> type:
    """train/grpo.py's RenderedPrompts trainer for a VLM. Each prompt TRL draws is replaced by its row's messages
    with the pictures in their parts (the Arrow dataset holds only text), so TRL's VLM path has them for the rollouts
    and for the loss pass, and the row index (ROW_KEY) still rides in the last message for the reward functions.
    TRL encodes those prompts itself with the processor; each encoding is checked to be exactly the ids tunesmith's
    renderer gives (what infer and deploy send), and a difference stops the run naming the row."""
    from tunesmith.errors import TemplateError
    from tunesmith.train.rewards.registry import ROW_KEY

    class VisionPrompts(base):
        def _generate_and_score_completions(self, inputs: list[dict]) -> dict:
            for x in inputs:
                x["prompt"] = _prompt_with_images(template, conversations, x["prompt"][-1][ROW_KEY])
            return super()._generate_and_score_completions(inputs)

        def _tokenize_prompts(self, prompts: list) -> tuple:
            ids, images, fields = super(base, self)._tokenize_prompts(prompts)  # TRL's own, with the processor
            for p, got in zip(prompts, ids):
                row = p[-1][ROW_KEY]
                if list(got) != list(self.prompt_ids[row]):
                    raise TemplateError(f"prompt row {row}: TRL's encoding of the prompt with its images differs from "
                                        "tunesmith's renderer for this chat template, so the rollouts would not be "
                                        "what deploy serves; train this model with sft or dpo")
            return ids, images, fields

    VisionPrompts.__name__ = f"Vision{base.__name__}"
    return VisionPrompts


def _prompt_with_images(template: VisionTemplate, conversations: list[list[dict]], row: int) -> list[dict]:
    """Row `row`'s prompt as TRL's VLM path takes it: the template's system prompt added, every content a list of
    parts, PIL images in the image parts, the row index in the last message."""
    out = []
    for m in template._with_system(conversations[row]):
        content = m.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        parts = [{"type": "image", "image": open_image(p["image"])} if p.get("type") == "image"
                 else {"type": "text", "text": p.get("text", "")} for p in content or []]
        out.append({"role": m["role"], "content": parts})
    from tunesmith.train.rewards.registry import ROW_KEY

    out[-1][ROW_KEY] = row
    return out
