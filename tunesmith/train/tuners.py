"""How each `tuner` makes a loaded model trainable, and what it adds to the trainer (optimizer, callbacks).

    model = make_trainable(cfg, model)                 # adapters attached, or the right weights left trainable
    optimizer = build_optimizer(cfg, model, device)    # LoRA+ and LISA build their own; None: the Trainer's
    callbacks = tuner_callbacks(cfg)                   # LISA's layer sampling, AdaLoRA's rank budget, PiSSA's start
    initialize_from_data(cfg, trainer)                 # EVA: LoRA's A from the first training batches' activations

Adapter tuners (lora, qlora, dora and peft's other methods by name) leave the base weights frozen and save an
adapter folder; reft too, with its interventions in final/reft/ (models/reft.py); the whole-model tuners (full, galore, lisa, freeze) save the whole model. GaLore is an optimizer
(transformers' galore_adamw over galore-torch): its TrainingArguments come from `optimizer_args`.
"""

from __future__ import annotations

import importlib.util
import logging
import random
import warnings
from itertools import islice
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from tunesmith.config.commands import LORA_TUNERS
from tunesmith.errors import ConfigError
from tunesmith.models import load as models
from tunesmith.train import longlora

log = logging.getLogger("tunesmith")
# PiSSA and OLoRA move the adapter's start into the base weights (W - B0 A0). The start is kept here so that the final
# adapter can be converted to one that applies to the untouched base (peft's path_initial_model_for_weight_conversion).
INITIAL_ADAPTER = "initial-adapter"


def make_trainable(cfg: Any, model: Any) -> Any:
    if cfg.tuner == "galore" and importlib.util.find_spec("galore_torch") is None:
        raise ConfigError("tuner: galore needs galore-torch; pip install 'tunesmith[galore]'")
    if cfg.tuner == "full" or cfg.tuner == "galore":
        return model
    if cfg.tuner == "freeze":
        _freeze_all_but(model, cfg.freeze.trainable_layers, cfg.freeze.modules)
        return model
    if cfg.tuner == "lisa":
        LisaSampler(cfg.lisa.layers, cfg.lisa.interval, cfg.seed).activate(model, interval_index=0)
        return model
    if cfg.tuner == "reft":  # the base frozen, interventions hooked on the chosen layers
        import torch

        from tunesmith.models import reft

        torch.manual_seed(cfg.seed)  # R's initial orthonormal rows
        try:
            reft.attach(model, cfg.reft.model_dump())
        except ValueError as err:
            raise ConfigError(str(err)) from None
        return model
    from peft import get_peft_model

    if cfg.adapters:
        return models.attach_adapters(model, cfg.adapters, trainable=True)
    if cfg.tuner == "longlora":  # + embeddings and norms; its S2-Attn is the training attention (train/speed.py)
        return get_peft_model(model, longlora.lora_config(cfg, model))
    if cfg.tuner in LORA_TUNERS:
        import torch

        torch.manual_seed(cfg.seed)  # PiSSA's randomised SVD: a resumed run must rebuild the same residual base
        with warnings.catch_warnings():  # EVA: peft suggests creating the adapters on the meta device; ours are real
            warnings.filterwarnings("ignore", message="lora with eva initialization")
            return get_peft_model(model, models.lora_config(cfg.lora, cfg.tuner, model))
    return get_peft_model(model, peft_method_config(cfg.tuner, cfg.peft.args))


def peft_method_config(tuner: str, args: dict) -> Any:
    """peft's config for one of its other methods, with peft's defaults (its target modules per model type) under the
    user's `peft.args`. AdaLoRA's schedule needs the run's length, which the trainer sets when it starts (AdaLoraBudget);
    until then it holds a placeholder."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    config_cls = PEFT_TYPE_TO_CONFIG_MAPPING[tuner.upper()]
    fields = set(config_cls.__dataclass_fields__)
    unknown = sorted(set(args) - fields)
    if unknown:
        raise ConfigError(f"peft.args: {', '.join(unknown)} not a field of peft's {config_cls.__name__}; it has "
                          f"{', '.join(sorted(f for f in fields if not f.startswith('_'))[:30])}, ...")
    values = {"task_type": "CAUSAL_LM", **({"total_step": 1_000_000} if tuner == "adalora" else {}), **args}
    return config_cls(**values)


def optimizer_args(cfg: Any) -> dict[str, Any]:
    """TrainingArguments of the tuners whose optimizer transformers builds (GaLore)."""
    if cfg.tuner != "galore":
        return {}
    g = cfg.galore
    return {"optim": "galore_adamw_layerwise" if g.layerwise else "galore_adamw",
            "optim_target_modules": g.targets,
            "optim_args": f"rank={g.rank}, update_proj_gap={g.update_interval}, scale={g.scale}"}


def build_optimizer(cfg: Any, model: Any, device: str) -> Any:
    """The optimizer when the tuner needs its own (else None and the Trainer builds AdamW): LoRA+ gives B a learning
    rate plus_ratio times A's (peft's create_loraplus_optimizer); LISA's AdamW holds every weight, trainable now or
    later, and keeps states only for the layers that train (LisaSampler drops the others')."""
    import torch

    fused = {"fused": True} if device == "cuda" else {}
    if cfg.trains_adapter and cfg.lora.plus_ratio:
        from peft.optimizers import create_loraplus_optimizer

        return create_loraplus_optimizer(model, torch.optim.AdamW, lr=cfg.learning_rate,
                                         loraplus_lr_ratio=cfg.lora.plus_ratio, weight_decay=cfg.weight_decay, **fused)
    if getattr(cfg, "vision_lr", None) or getattr(cfg, "aligner_lr", None):
        return part_lr_optimizer(cfg, model, fused)
    if cfg.tuner == "lisa":
        weights = [p for p in model.parameters() if p.ndim >= 2]
        others = [p for p in model.parameters() if p.ndim < 2]  # norms and biases: no weight decay, as the Trainer
        groups = [{"params": weights, "weight_decay": cfg.weight_decay}, {"params": others, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, **fused)
    return None


def part_lr_optimizer(cfg: Any, model: Any, fused: dict) -> Any:
    """AdamW with one learning rate per part of a VLM (ms-swift's vit_lr / aligner_lr): the vision tower's trained
    weights at vision_lr, the aligner's at aligner_lr, the rest at learning_rate; each part's norms and biases without
    weight decay, as the Trainer's own AdamW. The scheduler scales every group alike, so the ratios hold all run."""
    import torch

    from tunesmith.models.vision import trainable_by_part

    parts = trainable_by_part(model)
    if parts is None:
        raise ConfigError("vision_lr/aligner_lr: the model has no vision tower or aligner (a text model); drop them")
    rates = {"language": None, "vision_tower": cfg.vision_lr, "aligner": cfg.aligner_lr}  # the first group's rate
    # is the one the Trainer logs
    groups = []
    for part, named in parts.items():
        if rates[part] and not named:  # the config check knows the flags; this is what actually trains
            raise ConfigError(f"{'vision_lr' if part == 'vision_tower' else 'aligner_lr'}: no weight of the "
                              f"{part.replace('_', ' ')} trains in this run")
        lr = rates[part] or cfg.learning_rate
        for decay, params in ((cfg.weight_decay, [p for _, p in named if p.ndim >= 2]),
                              (0.0, [p for _, p in named if p.ndim < 2])):
            if params:
                groups.append({"params": params, "lr": lr, "weight_decay": decay, "part": part})
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, **fused)


def tuner_callbacks(cfg: Any) -> list[Any]:
    if cfg.tuner == "lisa":
        return [LisaSampler(cfg.lisa.layers, cfg.lisa.interval, cfg.seed)]
    if cfg.tuner == "adalora" and not cfg.adapters:
        return [AdaLoraBudget()]
    if cfg.tuner in LORA_TUNERS and cfg.lora.init in ("pissa", "olora") and not cfg.adapters:
        return [KeepInitialAdapter()]
    return []


def uses_eva(cfg: Any) -> bool:
    return cfg.tuner in LORA_TUNERS and cfg.lora.init == "eva" and not cfg.adapters


def initialize_from_data(cfg: Any, trainer: Any) -> dict[str, int]:
    """EVA (Paischer et al. 2024, peft's initialize_lora_eva_weights): each adapter's A becomes the top principal
    components of its layer's inputs on the first `lora.eva_batches` batches of the run's own train dataloader (answer
    tokens only, as the loss sees them), B stays 0 so training starts at the base model; ranks move between layers by
    explained variance (at most rho x rank each, the total kept) and are saved in the adapter's rank_pattern, so the
    adapter loads as any LoRA. A resumed run recomputes the same start (same batches), then loads its checkpoint.
    Returns the rank per adapted layer."""
    from peft.tuners.lora.eva import forward_fn_dict, initialize_lora_eva_weights

    model = getattr(trainer.model, "module", trainer.model)
    batches = list(islice(trainer.get_train_dataloader(), cfg.lora.eva_batches))
    components = round(cfg.lora.rank * cfg.lora.eva_rho)
    # peft cycles the batches until every layer's components converge, skipping a batch with fewer tokens than
    # components: such a batch would never converge, so it is refused here.
    tokens = min(int(((b["labels"] != -100) & b.get("attention_mask", b["labels"] == b["labels"]).bool()).sum())
                 for b in batches)
    if tokens < components:
        raise ConfigError(f"lora.init: eva needs at least rank x eva_rho = {components} answer tokens per batch to "
                          f"decompose, and a batch has {tokens}; raise batch_size or lower lora.rank/lora.eva_rho")
    limit = 50 * len(batches)
    calls = [0]

    def forward(model: Any, inputs: Any) -> Any:
        calls[0] += 1
        if calls[0] > limit:
            raise ConfigError(f"lora.init: eva's components did not converge in 50 passes over {len(batches)} "
                              "batches; raise lora.eva_batches or batch_size")
        return forward_fn_dict(model, inputs)

    initialize_lora_eva_weights(model, dataloader=batches, forward_fn=forward, show_progress_bar=False)
    ranks = {name: module.r["default"] for name, module in model.named_modules()
             if hasattr(module, "lora_A") and "default" in getattr(module, "r", {})}
    log.info("eva: adapters initialised from %d batches (%d passes); ranks %d-%d over %d layers", len(batches),
             calls[0], min(ranks.values()), max(ranks.values()), len(ranks))
    return ranks


def finish_final(cfg: Any, model: Any, folder: Path, run_dir: Path) -> None:
    """What final/ holds beyond what the Trainer saved: LongLoRA's merged model (train/longlora.py), PiSSA/OLoRA's
    adapter for the untouched base, LoReFT's interventions folder in place of the Trainer's model files."""
    if cfg.tuner == "longlora":
        longlora.save_merged(model, folder)
    elif cfg.tuner == "reft":
        from tunesmith.models import reft

        reft.save(model, folder, cfg.model)
    else:
        save_adapter_for_base(model, folder, run_dir)


def save_adapter_for_base(model: Any, folder: Path, run_dir: Path) -> None:
    """Rewrite a PiSSA/OLoRA run's saved adapter so that it applies to the original base weights (peft converts
    W - B0 A0 + B A into W + B' A' with rank 2r); other runs' folders are left as the Trainer saved them."""
    initial = run_dir / INITIAL_ADAPTER
    if not initial.exists():
        return
    unwrapped = getattr(model, "module", model)
    unwrapped.save_pretrained(str(folder), path_initial_model_for_weight_conversion=str(initial))


# -----------------------------------------------------------------------------
# Whole-model tuners: which weights train


def decoder_layers(model: Any) -> Any:
    """The model's list of decoder layers (model.model.layers on most families)."""
    import torch

    count = model.config.get_text_config().num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"no list of {count} decoder layers found in {type(model).__name__}")


def _freeze_all_but(model: Any, last_layers: int, patterns: list[str]) -> None:
    layers = decoder_layers(model)
    keep = {id(p) for layer in list(layers)[len(layers) - last_layers:] for p in layer.parameters()} if last_layers else set()
    for name, param in model.named_parameters():
        param.requires_grad = id(param) in keep or any(pattern in name for pattern in patterns)


class LisaSampler(TrainerCallback):
    """LISA (Pan et al. 2024): every `interval` optimizer steps, `layers` decoder layers drawn at random train and the
    others freeze; embeddings, final norm and LM head always train. The draw for interval k is a function of (seed, k),
    so a resumed run trains the layers the interrupted one would have. Layers leaving training drop their Adam states
    (the memory LISA saves); a layer drawn again starts fresh states."""

    def __init__(self, layers: int, interval: int, seed: int):
        self.layers, self.interval, self.seed = layers, interval, seed
        self.history: list[tuple[int, list[int]]] = []  # (first step, layers drawn): what each interval trained

    def draw(self, total: int, interval_index: int) -> list[int]:
        return sorted(random.Random(f"{self.seed}:{interval_index}").sample(range(total), min(self.layers, total)))

    def activate(self, model: Any, interval_index: int, optimizer: Any = None) -> list[int]:
        layers = decoder_layers(model)
        chosen = self.draw(len(layers), interval_index)
        layer_params = {id(p) for layer in layers for p in layer.parameters()}
        active = {id(p) for i in chosen for p in layers[i].parameters()}
        states = getattr(optimizer, "optimizer", optimizer).state if optimizer is not None else {}
        for param in model.parameters():
            param.requires_grad = id(param) not in layer_params or id(param) in active
            if not param.requires_grad:
                param.grad = None
                states.pop(param, None)
        return chosen

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if state.global_step % self.interval == 0 and (not self.history or self.history[-1][0] != state.global_step):
            chosen = self.activate(model, state.global_step // self.interval, optimizer)
            self.history.append((state.global_step, chosen))
            log.info("lisa: layers %s train for steps %d-%d", chosen, state.global_step + 1,
                     state.global_step + self.interval)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        # A resumed run starts inside an interval: train that interval's layers, as the interrupted run did.
        if state.global_step % self.interval:
            chosen = self.activate(model, state.global_step // self.interval, optimizer)
            self.history.append((state.global_step, chosen))


class AdaLoraBudget(TrainerCallback):
    """AdaLoRA reallocates ranks between modules from the gradients of each step, on a schedule over the run's length:
    the length is set once the trainer knows it, and the reallocation runs after each optimizer step (before the
    gradients are zeroed), as peft's update_and_allocate asks."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        tuner = _peft_tuner(model)
        config = tuner.peft_config[tuner.trainable_adapter_name]
        config.total_step = state.max_steps
        if config.tinit >= config.total_step - config.tfinal:
            raise ConfigError(f"peft.args: AdaLoRA's tinit ({config.tinit}) + tfinal ({config.tfinal}) leave no steps "
                              f"to reallocate ranks in a run of {state.max_steps} steps; lower them or train longer")
        tuner.rankallocator.set_total_step(state.max_steps)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        _peft_tuner(model).update_and_allocate(state.global_step)


class KeepInitialAdapter(TrainerCallback):
    """Saves the PiSSA/OLoRA adapter as it starts (once; a resumed run keeps the first), for save_adapter_for_base."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        folder = Path(args.output_dir) / INITIAL_ADAPTER
        if folder.exists() or not state.is_world_process_zero:
            return
        peft_model = getattr(model, "module", model)
        config = peft_model.peft_config["default"]
        init = config.init_lora_weights
        config.init_lora_weights = True  # loads as a plain adapter: peft redoes no SVD when it reads it back
        try:
            peft_model.save_pretrained(str(folder))
        finally:
            config.init_lora_weights = init


def _peft_tuner(model: Any) -> Any:
    return getattr(model, "module", model).base_model
