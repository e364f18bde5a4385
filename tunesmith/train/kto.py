"""KTO on answers labelled desirable or undesirable: no pairs needed. The policy lifts the reward (log-ratio to the
reference model) of desirable answers above a KL baseline and pushes undesirable ones below it.
Run: tunesmith rlhf --method kto --dataset answers.jsonl   (rows: prompt, completion, label: true/false)

Preference pairs are unpaired into one desirable and one undesirable row, as TRL does. Prompt and answer are rendered
by our Template, as in DPO. With LoRA there is no second model: TRL's KTOTrainer keeps a frozen copy of the adapter
as it was at the start (peft's second adapter "ref", in checkpoints; final/ leaves it out: train/run.py), so the
reference is the base model, or the SFT model when continuing a run with --adapters. Full fine-tuning loads a second copy of the weights as the reference. On a vision-language model the
prompts keep their images (train/vision.py renders them and its collator adds the pixels), as in DPO.

Departs from TRL: rows are shuffled once with the seed. TRL reads KTO data in order and estimates the KL baseline by
pairing each prompt with the previous row's answer; an unpaired pair left side by side would pair a prompt with its
own other answer.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from trl import KTOConfig, KTOTrainer

from tunesmith.config.rlhf import RLHFConfig
from tunesmith.data.rows import Preference, Problem, UnpairedPreference
from tunesmith.templates import Template
from tunesmith.train.preference import answer_ids, load_preference_data
from tunesmith.train.preflight import load_template, preflight, trainable_report
from tunesmith.train.run import RunResult, open_run
from tunesmith.train.setup import common_args, load_trainable, run_trainer
from tunesmith.train.truncate import Cuts
from tunesmith.train.vision import (
    VisionRun,
    VisionUnpairedCollator,
    render_vision_unpaired,
)

log = logging.getLogger("tunesmith")


def kto(cfg: RLHFConfig, callbacks: list[Any] | None = None) -> RunResult:
    with open_run(cfg) as run:
        template, base_folder = load_template(cfg)
        vlm = VisionRun.start(cfg, template, base_folder)  # image prompts: train/vision.py
        render = tokenize_unpaired
        if vlm is not None:
            template, render = vlm.template, render_vision_unpaired
        data = load_preference_data(cfg, "kto", template, render)  # bad rows stop the run here
        train_ds = data.train.shuffle(seed=cfg.seed)
        eval_ds = data.eval.shuffle(seed=cfg.seed) if data.eval is not None else None
        _check_balance(cfg, train_ds["label"])

        plan = preflight(cfg, base_folder, rows=len(train_ds))
        model, device, dtype = vlm.load_trainable(cfg, base_folder) if vlm else load_trainable(cfg, base_folder)
        run.save_config(base_model_folder=str(base_folder), train_rows=len(train_ds), skipped_rows=data.skipped,
                        **data.record, **(vlm.recorded() if vlm else {}),
                        **plan.recorded(), **trainable_report(cfg, model))
        args = KTOConfig(**common_args(cfg, run.dir, device, dtype, has_eval=eval_ds is not None), beta=cfg.kto.beta,
                         loss_type=cfg.kto.loss_type, desirable_weight=cfg.kto.desirable_weight,
                         undesirable_weight=cfg.kto.undesirable_weight)
        trainer_cls: Any = RenderedKTOTrainer
        if vlm is not None:  # the image references reach the collator, which adds the pixels
            args.remove_unused_columns = False
            trainer_cls = partial(RenderedKTOTrainer, data_collator=VisionUnpairedCollator(
                template, template.tokenizer.pad_token_id))
        trainer = run_trainer(cfg, run.dir, model, template.tokenizer, train_ds, eval_ds, device, dtype,
                              run.resume_from, callbacks, trainer_cls=trainer_cls, args=args)
        final = run.save_final(trainer, template)
        return run.result(trainer, final, data.skipped)


def tokenize_unpaired(rows: list[UnpairedPreference | Preference], template: Template, max_length: int,
                      problems: list[Problem], cuts: Cuts | None = None) -> Any:
    """prompt_ids / completion_ids / label; a pair gives two rows. The completion ends with the end-of-turn token."""
    import datasets

    cuts = cuts or Cuts("error", max_length, template.stop_token_ids)
    table: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "label": []}
    for row in rows:
        answers = ([(row.chosen, True), (row.rejected, False)] if isinstance(row, Preference)
                   else [(row.completion, row.label)])
        whole_prompt = template.render_prompt(row.prompt)
        for text, label in answers:
            completion = answer_ids(template, row.prompt, text, len(whole_prompt))
            field = "completion" if len(answers) == 1 else "chosen/rejected"
            kept = cuts.pair(row, whole_prompt, [completion], problems, field)
            if kept is None:
                break
            prompt, (completion,) = kept
            table["prompt_ids"].append(prompt)
            table["completion_ids"].append(completion)
            table["label"].append(label)
    return datasets.Dataset.from_dict(table)


def _check_balance(cfg: RLHFConfig, labels: list[bool]) -> None:
    """One warning when the weights leave the range the KTO paper recommends (its Eq. 8): desirable_weight x
    desirable rows / (undesirable_weight x undesirable rows) in [1, 4/3]."""
    good = sum(labels)
    bad = len(labels) - good
    if good == 0 or bad == 0:
        log.warning("kto: all %d rows are %s; KTO learns best from both kinds", len(labels),
                    "desirable" if bad == 0 else "undesirable")
        return
    ratio = cfg.kto.desirable_weight * good / (cfg.kto.undesirable_weight * bad)
    if not 1.0 <= ratio <= 4 / 3:
        log.warning("kto: %d desirable and %d undesirable rows give a weighted ratio of %.2f; the KTO paper keeps it "
                    "in [1, 1.33]: try --kto.desirable-weight %.2f", good, bad, ratio, cfg.kto.undesirable_weight * bad / good)


class RenderedKTOTrainer(KTOTrainer):
    """TRL's KTOTrainer extracts, unpairs and re-tokenizes text; ours arrives rendered by Template (the renderer
    training and serving share), so preparation only adds the KL completions: within each batch, every prompt gets
    the previous row's answer, exactly as TRL builds them."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if not self.calculate_KL:
            return dataset

        def shift(batch):
            return {"KL_completion_ids": batch["completion_ids"][-1:] + batch["completion_ids"][:-1]}

        return dataset.map(shift, batched=True, batch_size=args.per_device_train_batch_size)
