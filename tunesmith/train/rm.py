"""Reward-model training on preference pairs: a sequence classifier with one output learns to score chosen above
rejected (Bradley-Terry loss, TRL's RewardTrainer). Run: tunesmith rlhf --method rm --dataset pairs.jsonl

The model is the base (or the SFT run given with --adapters, merged in first) with its LM head replaced by a fresh
`score` head. With LoRA the head trains in full beside the adapter (peft's modules_to_save). Each side is the whole
conversation rendered by our Template, the text TRL's GRPOTrainer later scores (see models/reward.py).

final/ is a plain transformers folder, the adapter merged in, so later commands load it directly:
AutoModelForSequenceClassification.from_pretrained("runs/NAME/final"), or GRPO's --rewards.model runs/NAME/final.
With qlora the merged weights are dequantized from 4-bit after the merge, so they differ from the trained ones by
4-bit rounding.
"""

from __future__ import annotations

from typing import Any

from tunesmith.config.rlhf import RLHFConfig
from tunesmith.data.rows import Preference, Problem
from tunesmith.models import load as models
from tunesmith.models.reward import load_reward_base
from tunesmith.templates import Template
from tunesmith.train.preflight import load_template, preflight, trainable_report
from tunesmith.train.run import RunResult, open_run
from tunesmith.train.preference import load_preference_data
from tunesmith.train.setup import common_args, run_trainer
from tunesmith.train.truncate import Cuts


def rm(cfg: RLHFConfig, callbacks: list[Any] | None = None) -> RunResult:
    from trl import RewardConfig, RewardTrainer

    with open_run(cfg) as run:
        template, base_folder = load_template(cfg)
        data = load_preference_data(cfg, "preference", template, tokenize_scored_pairs)  # bad pairs stop the run here
        plan = preflight(cfg, base_folder, rows=len(data.train))
        model, device, dtype = load_scorer(cfg, base_folder, template.tokenizer.pad_token_id)
        run.save_config(base_model_folder=str(base_folder), train_pairs=len(data.train), skipped_rows=data.skipped,
                        **data.record,
                        **plan.recorded(), **trainable_report(cfg, model))
        args = RewardConfig(**common_args(cfg, run.dir, device, dtype, has_eval=data.eval is not None))
        trainer = run_trainer(cfg, run.dir, model, template.tokenizer, data.train, data.eval, device, dtype,
                              run.resume_from, callbacks, trainer_cls=RewardTrainer, args=args)
        trainer.model = merged(trainer.model)  # so final/ is a plain sequence-classification folder
        final = run.save_final(trainer, template)
        return run.result(trainer, final, data.skipped)


def tokenize_scored_pairs(rows: list[Preference], template: Template, max_length: int, problems: list[Problem],
                          cuts: Cuts | None = None) -> Any:
    """chosen_ids / rejected_ids: prompt and answer rendered as one conversation (RewardTrainer's processed layout)."""
    import datasets

    cuts = cuts or Cuts("error", max_length, template.stop_token_ids)
    table: dict[str, list] = {"chosen_ids": [], "rejected_ids": []}
    for row in rows:
        sides = [template.render(row.prompt + [{"role": "assistant", "content": a}], loss_on="last")[0]
                 for a in (row.chosen, row.rejected)]
        sides = cuts.whole(row, sides, problems, "chosen/rejected")
        if sides is None:
            continue
        table["chosen_ids"].append(sides[0])
        table["rejected_ids"].append(sides[1])
    return datasets.Dataset.from_dict(table)


def load_scorer(cfg: RLHFConfig, folder, pad_token_id: int) -> tuple[Any, str, Any]:
    """(sequence classifier ready to train, device, dtype): full weights, or LoRA with the score head saved whole."""
    device = models.pick_device(cfg.device)  # as preflight picked them
    dtype = models.pick_dtype(cfg.dtype, device)
    model = load_reward_base(folder, dtype, device, pad_token_id, quantize_4bit=cfg.tuner == "qlora")
    if cfg.tuner == "full":
        return model, device, dtype
    from peft import PeftConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    if cfg.adapters:  # start from the SFT policy: its adapter folded into the base the score head sits on
        sft = PeftConfig.from_pretrained(models.check_adapter_folder(cfg.adapters))
        sft.task_type = None  # a causal-LM adapter on a classifier: plain PeftModel, no generation wrapper
        model = PeftModel.from_pretrained(model, cfg.adapters, config=sft).merge_and_unload()
    if cfg.tuner == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    lora = models.lora_config(cfg.lora, cfg.tuner)
    lora.task_type, lora.modules_to_save = "SEQ_CLS", ["score"]
    model = get_peft_model(model, lora)
    if cfg.tuner == "qlora":
        # RewardTrainer casts QLoRA's trainable weights to bf16 (as the QLoRA paper does). LoRA layers cast their
        # input to match; the score head, trained whole, does not, so its input is cast here.
        head = next(m for name, m in model.named_modules() if name.endswith("score.modules_to_save.default"))
        head.register_forward_pre_hook(lambda module, args: (args[0].to(module.weight.dtype), *args[1:]))
    return model, device, dtype


def merged(model: Any) -> Any:
    """The trained adapter folded into the weights (4-bit weights dequantized), for a plain transformers folder."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    if getattr(model, "is_loaded_in_4bit", False):
        model = model.dequantize()
    return model
