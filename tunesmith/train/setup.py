"""Model and TRL arguments for a training run, from the config. Shared by every training recipe."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from tunesmith.models import load as models
from tunesmith.train import longlora, tuners
from tunesmith.train.launch import engine_args, rank, world_size
from tunesmith.train.speed import padding_free, speed_args


def load_trainable(cfg: Any, folder: Path) -> tuple[Any, str, Any]:
    """(model made trainable by its tuner: adapters attached, or the weights that train left trainable, device,
    dtype)."""
    device = models.pick_device(cfg.device)  # as preflight picked them (the same pure choice)
    dtype = models.pick_dtype(cfg.dtype, device)
    if cfg.tensor_parallel > 1 and world_size() > 1:  # sharded as it loads (tuner full: config/commands.py)
        return tuners.make_trainable(cfg, models.load_tensor_parallel(folder, dtype, cfg.tensor_parallel)), device, dtype
    config = longlora.scaled_config(cfg, folder) if cfg.tuner == "longlora" else None  # RoPE to the target length
    model = models.load_model(folder, dtype=dtype, device=device, quantize_4bit=cfg.tuner == "qlora", config=config)
    import torch

    if cfg.tuner == "qlora" and dtype != torch.bfloat16:
        from peft import prepare_model_for_kbit_training

        # peft's preparation upcasts every weight that is not 4-bit (norms, embeddings, LM head) to fp32, which fp16
        # needs against overflow. bf16 skips it: the hidden states stay bf16 as with LoRA (half the activation memory,
        # no fp32 elementwise kernels), the matmuls ran in bf16 under autocast either way, and get_peft_model freezes
        # the base while the trainer lets checkpointing reach the adapters.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(cfg.gradient_checkpointing))
    return tuners.make_trainable(cfg, model), device, dtype


def common_args(cfg: Any, run_dir: Path, device: str, dtype: Any, has_eval: bool) -> dict[str, Any]:
    """The TrainingArguments every TRL trainer shares, from our config. Every value TRL sees is here or in the
    trainer-specific extras beside it."""
    import torch

    report_to = [r for r in cfg.report_to if r != "none"] or "none"
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tb")  # transformers 5 reads it from the environment
    return dict(
        output_dir=str(run_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a ratio of total steps, never all of them (warmup_short_of_the_whole_run)
        weight_decay=cfg.weight_decay,
        **speed_args(cfg, device),  # fused AdamW on CUDA; gradient checkpointing (on every checkpoint_every-th layer)
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=device == "cpu",
        max_length=cfg.max_length,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=cfg.eval_steps or cfg.save_steps,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=report_to,
        run_name=run_dir.name,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,  # our ProgressBar shows one bar plus one line per log
        **engine_args(cfg),  # several processes: DDP, or FSDP2 / DeepSpeed / sequence parallel when asked
        **tuners.optimizer_args(cfg),  # GaLore's optimizer
        neftune_noise_alpha=getattr(cfg, "neftune_alpha", None),
    )


def trl_args(cfg: Any, run_dir: Path, device: str, dtype: Any, has_eval: bool, own_collator: bool = False) -> Any:
    """TRL's SFTConfig for this run. `own_collator`: a VLM's collator makes the batches (train/vision.py), so TRL
    neither packs nor flattens them."""
    from trl import SFTConfig as TRLSFTConfig

    # packing: TRL's best-fit-decreasing bins, fed padding-free (one flattened row plus the sample boundaries);
    # unpacked batches of several rows go padding-free too where the varlen kernel runs (train/speed.py)
    flat = not own_collator and padding_free(cfg, device, dtype)
    args = common_args(cfg, run_dir, device, dtype, has_eval)
    if flat:  # TRL refuses max_length with unpacked padding-free rows: ours are cut to it already (train/truncate.py)
        args["max_length"] = None
    return TRLSFTConfig(**args, packing=bool(cfg.packing), padding_free=flat, dataset_kwargs={})


def run_trainer(cfg: Any, run_dir: Path, model: Any, tokenizer: Any, train_ds: Any, eval_ds: Any, device: str,
                dtype: Any, resume_from: str | None, callbacks: list[Any] | None, trainer_cls: Any = None,
                args: Any = None, optimizers: tuple[Any, Any] | None = None) -> Any:
    """A TRL trainer (SFTTrainer unless given) over our pre-tokenized data, with the run folder's callbacks."""
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTTrainer

    from tunesmith.models.patches.trl_lm_head import labelled_positions_only
    from tunesmith.train.callbacks import (CheckpointManifest, GracefulStop, Interrupted, LossPlot, MetricsLog,
                                           ProgressBar, ShardReport, Watchdog)

    ours = [MetricsLog(run_dir), ProgressBar(), CheckpointManifest(), LossPlot(run_dir)]
    if world_size() > 1 and cfg.watchdog_timeout:
        ours.append(Watchdog(run_dir, cfg.watchdog_timeout, rank()))
    if world_size() == 1:
        ours.append(GracefulStop())
    if cfg.fsdp:
        ours.append(ShardReport(rank()))
    if cfg.gradient_checkpointing == "offload" and device == "cuda":  # elsewhere activations live in host memory
        from tunesmith.train.offload import OffloadCheckpointInputs

        ours.append(OffloadCheckpointInputs())
    eva = tuners.uses_eva(cfg) and optimizers is None  # EVA may change adapter ranks: the optimizer comes after it
    args = args or trl_args(cfg, run_dir, device, dtype, has_eval=eval_ds is not None)
    parallelism = getattr(args, "parallelism_config", None)
    if hasattr(parallelism, "fsdp_plugin_args"):  # FSDP2 on CPU ranks (models/patches/accelerate_fsdp.py)
        parallelism.fsdp_plugin_args = args.fsdp_plugin_args
    trainer = (trainer_cls or SFTTrainer)(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=[*ours, *tuners.tuner_callbacks(cfg), *(callbacks or [])],
        optimizers=optimizers or (None if eva else tuners.build_optimizer(cfg, model, device), None),  # None: Trainer's
    )
    warmup_short_of_the_whole_run(trainer, cfg.warmup_ratio)
    if eva:
        tuners.initialize_from_data(cfg, trainer)  # LoRA's A from the run's first batches
        trainer.optimizer = trainer.callback_handler.optimizer = tuners.build_optimizer(cfg, model, device)
    # With its tqdm off, the Trainer prints every log dict; MetricsLog prints one line per log instead.
    trainer.remove_callback(PrinterCallback)
    try:
        with labelled_positions_only(device):  # CPU: TRL's LM head skips prompt and pad positions, as on CUDA
            trainer.train(resume_from_checkpoint=resume_from)
    except KeyboardInterrupt:
        # Ctrl-C: the Trainer stops where it is, without on_train_end; end what our callbacks started (the bar, the
        # SIGTERM handler, the watchdog thread), draw loss.png up to the step reached, and say which checkpoint
        # --resume continues from
        for callback in ours:
            if isinstance(callback, (ProgressBar, GracefulStop, Watchdog, LossPlot)):
                callback.on_train_end(trainer.args, trainer.state, trainer.control)
        raise Interrupted(run_dir, trainer.state.global_step) from None
    return trainer


def warmup_short_of_the_whole_run(trainer: Any, ratio: float) -> None:
    """warmup_ratio's steps as transformers counts them (rounded up), but never the whole run, once the Trainer knows
    its step count. Linear warmup starts at lr 0, so a 1-step run (a few new rows with --continue-from) trained
    nothing while recording its rows as seen."""
    create = trainer.create_scheduler

    def create_scheduler(num_training_steps: int, optimizer: Any = None) -> Any:
        trainer.args.warmup_steps = min(math.ceil(ratio * num_training_steps), num_training_steps - 1)
        return create(num_training_steps, optimizer)

    trainer.create_scheduler = create_scheduler
