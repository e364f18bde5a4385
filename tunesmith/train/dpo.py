"""DPO on preference pairs: the policy learns to prefer `chosen` over `rejected` relative to a reference model.
Run: tunesmith rlhf --method dpo -c examples/prd-assistant/dpo.yaml

The reference, as DPO intends, is the policy at the start: TRL keeps a frozen copy of the starting adapter as peft's
second adapter "ref" (no second copy of the base): for a fresh LoRA, whose B is zero, that is the base itself;
continuing an adapter run (--adapters, --continue-from), the SFT model, so rewards/margins start at 0. Checkpoints
keep "ref" to resume; final/ leaves it out (train/run.py drop_reference_copy).
Prompt and answers are rendered by our Template, as in SFT, so the pairs are scored on exactly the tokens the served
model sees; TRL's DPOTrainer does the rest (losses by dpo.loss_type, dpo.beta, metrics such as rewards/margins).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from trl import DPOConfig, DPOTrainer

from tunesmith.config.rlhf import RLHFConfig
from tunesmith.train.preference import load_preference_data, render_pairs
from tunesmith.train.preflight import load_template, preflight, trainable_report
from tunesmith.train.run import RunResult, open_run
from tunesmith.train.setup import common_args, load_trainable, run_trainer
from tunesmith.train.vision import (
    VisionPreferenceCollator,
    VisionRun,
    render_vision_pairs,
)


def dpo(cfg: RLHFConfig, callbacks: list[Any] | None = None) -> RunResult:
    with open_run(cfg) as run:
        template, base_folder = load_template(cfg)
        vlm = VisionRun.start(cfg, template, base_folder)  # image prompts: train/vision.py
        render = render_pairs
        if vlm is not None:
            template = vlm.template
            render = render_vision_pairs
        data = load_preference_data(cfg, "preference", template, render)  # bad pairs stop the run here
        plan = preflight(cfg, base_folder, rows=len(data.train))
        model, device, dtype = vlm.load_trainable(cfg, base_folder) if vlm else load_trainable(cfg, base_folder)
        run.save_config(base_model_folder=str(base_folder), train_pairs=len(data.train), skipped_rows=data.skipped,
                        **data.record, **(vlm.recorded() if vlm else {}),
                        **plan.recorded(), **trainable_report(cfg, model))
        args = DPOConfig(**common_args(cfg, run.dir, device, dtype, has_eval=data.eval is not None),
                         beta=cfg.dpo.beta, loss_type=list(cfg.dpo.loss_type))
        trainer_cls: Any = RenderedDPOTrainer
        if vlm is not None:  # the image references reach the collator, which adds the pixels
            args.remove_unused_columns = False
            trainer_cls = partial(RenderedDPOTrainer, data_collator=VisionPreferenceCollator(
                template, template.tokenizer.pad_token_id))
        trainer = run_trainer(cfg, run.dir, model, template.tokenizer, data.train, data.eval, device, dtype,
                              run.resume_from, callbacks, trainer_cls=trainer_cls, args=args)
        final = run.save_final(trainer, template)
        return run.result(trainer, final, data.skipped)


class RenderedDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer re-tokenizes text with the chat template; ours arrives already rendered by Template (the
    renderer training and serving share), so dataset preparation has nothing left to do."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset
