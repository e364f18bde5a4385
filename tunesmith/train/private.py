"""Differentially private SFT (DP-SGD, Abadi et al. 2016) on Opacus: the run's data cannot be recovered from the model
beyond the (epsilon, delta) the accountant reports.

    trainer = train_private(cfg, run_dir, model, tokenizer, train_ds, eval_ds, device, dtype, resume_from, callbacks)

Opacus does the privacy: its hooks compute each sample's gradient, its DPOptimizer clips each to dp.max_grad_norm and
adds Gaussian noise, its accountant tracks the budget. The noise is chosen so that the whole run (its epochs or
max_steps at this sample rate) spends dp.epsilon. What is ours:
- batches drawn by Poisson sampling (each row joins a step's batch with probability batch_size / rows), the sampling
  the accountant's bound assumes; an empty draw becomes one all-masked row (no data, zero gradient, noise as usual);
- the loss is the mean over the batch of each sample's mean token loss, so that a sample's gradient depends on that
  sample alone (the usual token mean over the batch would scale it by the other samples' lengths);
- the accountant's history is written into each checkpoint, so a resumed run goes on spending the same budget;
- the epsilon spent is logged with every metrics line (dp_epsilon), recorded in config.yaml and in final/README.md.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import warnings
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback, TrainingArguments

from tunesmith.errors import ConfigError
from tunesmith.train.setup import common_args, run_trainer

log = logging.getLogger("tunesmith")
ACCOUNTANT_FILE = "dp_accountant.json"


def train_private(cfg: Any, run_dir: Path, model: Any, tokenizer: Any, train_ds: Any, eval_ds: Any, device: str,
                  dtype: Any, resume_from: str | None, callbacks: list[Any] | None) -> Any:
    try:
        from opacus import PrivacyEngine
        from opacus.accountants.utils import get_noise_multiplier
        from opacus.validators.errors import UnsupportedModuleError
    except ImportError:
        raise ConfigError("dp: needs Opacus; pip install 'tunesmith[privacy]'") from None
    import torch
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    dp, rows = cfg.dp, len(train_ds)
    if dp.delta >= 1 / rows:
        log.warning("dp.delta %.2g is not below 1/rows (%.2g): the guarantee is weak for a dataset this small",
                    dp.delta, 1 / rows)
    sample_rate = min(1.0, cfg.batch_size / rows)
    steps_per_epoch = max(1, round(1 / sample_rate))
    steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(cfg.epochs * steps_per_epoch)
    noise = get_noise_multiplier(target_epsilon=dp.epsilon, target_delta=dp.delta, sample_rate=sample_rate,
                                 steps=steps, accountant=dp.accountant)
    log.info("dp: noise multiplier %.3f for epsilon %g at delta %g over %d steps (Poisson sampling, rate %.4f)",
             noise, dp.epsilon, dp.delta, steps, sample_rate)

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampler = UniformWithReplacementSampler(num_samples=rows, sample_rate=sample_rate,
                                            generator=torch.Generator().manual_seed(cfg.seed))
    loader = torch.utils.data.DataLoader(train_ds, batch_sampler=sampler, collate_fn=lambda b: pad_batch(b, pad))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    # Opacus' notice that its noise comes from torch's generator (its secure_mode needs torchcsprng), said once here;
    # and torch's note that the first layer's backward hook sees no input gradient (the embeddings are frozen).
    log.info("dp: noise drawn from torch's generator (Opacus' secure_mode, which needs torchcsprng, is off)")
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with respect "
                                              "to module outputs")
    engine = PrivacyEngine(accountant=dp.accountant)
    model.train()  # Opacus validates a model in training mode (from_pretrained hands it over in eval mode)
    # wrap_model=False: Opacus' hooks go on the model's own layers, so the Trainer and peft keep their model class
    try:
        _, optimizer, _ = engine.make_private(module=model, optimizer=optimizer, data_loader=loader,
                                             noise_multiplier=noise, max_grad_norm=dp.max_grad_norm,
                                             poisson_sampling=False, wrap_model=False)
    except UnsupportedModuleError as err:
        raise ConfigError(f"dp: Opacus cannot compute per-sample gradients for this model with tuner {cfg.tuner} "
                          f"({err}); use --tuner lora") from None
    if resume_from:
        saved = Path(resume_from) / ACCOUNTANT_FILE
        if saved.exists():
            engine.accountant.history = [tuple(h) for h in json.loads(saved.read_text())]

    common = common_args(cfg, run_dir, device, dtype, has_eval=eval_ds is not None)
    common.pop("max_length")
    args = TrainingArguments(**common, max_grad_norm=0.0,  # Opacus clips each sample; a clip of the sum would add bias
                             remove_unused_columns=False)
    report = PrivacyReport(engine.accountant, dp.delta)

    def trainer_cls(**kwargs: Any) -> Trainer:
        return PrivateTrainer(loader=loader, report=report, pad=pad, **kwargs)

    trainer = run_trainer(cfg, run_dir, model, tokenizer, train_ds, eval_ds, device, dtype, resume_from,
                          [*(callbacks or []), report], trainer_cls=trainer_cls, args=args,
                          optimizers=(optimizer, None))
    trainer.privacy = {"dp_epsilon": report.epsilon(), "dp_delta": dp.delta, "dp_noise_multiplier": round(noise, 6),
                       "dp_sample_rate": sample_rate, "dp_max_grad_norm": dp.max_grad_norm, "dp_steps": steps,
                       "dp_accountant": dp.accountant}
    return trainer


def pad_batch(rows: list[dict], pad: int) -> dict:
    """Right-padded input_ids, attention_mask and labels (-100 where padded). An empty Poisson draw becomes one row of
    padding whose labels are all masked: it holds no data and contributes a zero gradient."""
    import torch

    rows = rows or [{"input_ids": [pad], "labels": [-100]}]
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(row["input_ids"]), torch.tensor(row["labels"]), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def per_sample_loss(logits: Any, labels: Any) -> Any:
    """Each sample's mean next-token loss over its labelled tokens (0 for a sample with none)."""
    import torch.nn.functional as F

    target = labels[:, 1:]
    tokens = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target, ignore_index=-100, reduction="none")
    counted = (target != -100).sum(1)
    return tokens.sum(1) / counted.clamp(min=1)


class PrivateTrainer(Trainer):
    """transformers' Trainer on Opacus' Poisson batches and per-sample loss; the epsilon spent goes into each log."""

    def __init__(self, *, loader: Any, report: PrivacyReport, pad: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.private_loader, self.report, self.pad = loader, report, pad

    def get_train_dataloader(self) -> Any:
        return self.private_loader  # as drawn: accelerate's re-batching would undo the Poisson sampling

    def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
        import torch

        data = eval_dataset if eval_dataset is not None else self.eval_dataset
        return torch.utils.data.DataLoader(data, batch_size=self.args.per_device_eval_batch_size,
                                           collate_fn=lambda b: pad_batch(b, self.pad))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = per_sample_loss(outputs.logits, labels).mean()  # Opacus' loss_reduction="mean"
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, *args: Any, **kwargs: Any) -> None:
        if "loss" in logs:
            logs["dp_epsilon"] = round(self.report.epsilon(), 4)
        logs.pop("grad_norm", None)  # the norm of the gradient before clipping and noise: not a private quantity
        super().log(logs, *args, **kwargs)


class PrivacyReport(TrainerCallback):
    """The accountant's epsilon for the run's delta; its history saved with every checkpoint (for a resume); Opacus'
    per-sample gradients cleared after each step."""

    def __init__(self, accountant: Any, delta: float):
        self.accountant, self.delta = accountant, delta

    def epsilon(self) -> float:
        return float(self.accountant.get_epsilon(delta=self.delta)) if self.accountant.history else 0.0

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        # The Trainer zeroes the model's .grad; Opacus' per-sample gradients are cleared by its optimizer only.
        optimizer.zero_grad(set_to_none=True)

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            (folder / ACCOUNTANT_FILE).write_text(json.dumps(self.accountant.history))


def record_privacy(run: Any, trainer: Any, final: Path) -> None:
    """The privacy spent, where a reader of the run looks: config.yaml (the run's and final/'s copy), metrics.jsonl
    and final/README.md."""
    privacy = trainer.privacy
    run.add_resolved(privacy=privacy)
    shutil.copy(run.dir / "config.yaml", final / "config.yaml")
    with (run.dir / "metrics.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps({"step": trainer.state.global_step, **privacy}) + "\n")
    readme = final / "README.md"
    line = (f"Trained with differential privacy (DP-SGD, Opacus): epsilon = {privacy['dp_epsilon']:.3f} at delta = "
            f"{privacy['dp_delta']:g}, per-sample gradients clipped to {privacy['dp_max_grad_norm']:g}, noise "
            f"multiplier {privacy['dp_noise_multiplier']:.3f}, {privacy['dp_steps']} steps at sample rate "
            f"{privacy['dp_sample_rate']:.4f} ({privacy['dp_accountant']} accountant).\n")
    readme.write_text((readme.read_text(encoding="utf-8") + "\n" if readme.exists() else "") + line, encoding="utf-8")
    log.info("dp: %s", line.strip())
    from tunesmith import lineage

    lineage.write_for_run(final, run.dir, run.cfg)  # final/ changed: its record follows (the privacy is in its config)
