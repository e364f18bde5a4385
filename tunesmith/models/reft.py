"""LoReFT (Wu et al. 2024, "ReFT: Representation Finetuning for Language Models"): the base model stays frozen and
chosen decoder layers' output hidden states h are edited at chosen token positions,

    LoReFT(h) = h + R^T (W h + b - R h)        R: rank x hidden with orthonormal rows, W: rank x hidden, b: rank

so the edit moves h only inside the rank-dimensional subspace spanned by R's rows, towards W h + b there.

    reft.attach(model, cfg.reft)              # base frozen; model.reft holds the interventions, hooks apply them
    reft.save(model, final)                   # final/reft/: interventions.safetensors + config.json
    model = reft.load_run(final, dtype, device)   # the run's base + its interventions (infer, deploy, eval)

Why our own module: pyreft 0.1.0, the authors' library, pins transformers==4.45.1 (and jupyter, wandb,
seaborn==0.12.2, ...), so it cannot be installed beside our transformers 5.23 by pip; peft 0.21 has no ReFT. Installed
with --no-deps, pyreft's forward and generate() do run on transformers 5.23 (checked), but its model wrapper (pyvene's
IntervenableModel) takes the positions as an argument of every call (unit_locations), which TRL's trainer, generate()
in our engine and the server never pass. The intervention itself is the formula above; here forward hooks apply it,
so the unchanged transformers model trains under TRL and generates in every path that runs a prompt in one forward.

Positions, in pyreft's notation: fN = the prompt's first N tokens, lN = its last N, fN+lN both, each at most half the
prompt (pyreft's get_intervention_locations); `all` = every token, prompt and answer, in training and generation.
With share_weights false (pyreft's default) fN+lN has two interventions per layer, one for the first and one for the
last positions. The prompt of a training sample is its tokens before the first supervised one (labels != -100), of
each packed sample on its own (position_ids restart at 0); in generation it is the whole prompt, at the prefill (the
decode steps add no prompt token, so only `all` edits them). A multi-turn row trained on every assistant turn takes
its first turn's prompt: train with loss_on last for the positions generation sees.

Where we depart from pyreft: W and b start at R and 0, so the run starts exactly at the base model (as LoRA's B = 0;
pyreft draws W at random); dropout drops parts of the edit, not of the whole hidden state at the position.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.config.sections import parse_reft_positions as parse_positions

log = logging.getLogger("tunesmith")
FOLDER, CONFIG, WEIGHTS = "reft", "config.json", "interventions.safetensors"
FORMAT = 1


def groups(spec: dict[str, Any]) -> list[str]:
    """The interventions of one layer: one per position group."""
    counts = parse_positions(spec["positions"])
    if counts is None:
        return ["all"]
    if all(counts) and not spec["share_weights"]:
        return ["first", "last"]
    return ["prompt"]


# -----------------------------------------------------------------------------
# The intervention


class LoReFT(nn.Module):
    """h + R^T (W h + b - R h). R is an nn.Linear's weight (rank x hidden) kept with orthonormal rows by torch's
    orthogonal parametrization; W h + b is `source`. Computed in float32 whatever the model's dtype."""

    def __init__(self, hidden: int, rank: int, dropout: float = 0.0):
        super().__init__()
        if rank > hidden:
            raise ValueError(f"reft.rank: {rank} exceeds the hidden size {hidden}")
        self.rotate = nn.utils.parametrizations.orthogonal(nn.Linear(hidden, rank, bias=False))
        self.source = nn.Linear(hidden, rank)
        with torch.no_grad():  # W = R, b = 0: the edit is zero, training starts at the base model
            self.source.weight.copy_(self.rotate.weight)
            self.source.bias.zero_()
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = h.to(self.source.weight.dtype)
        r = self.rotate.weight
        edit = (self.source(x) - x @ r.T) @ r
        return h + self.dropout(edit).to(h.dtype)


class Interventions(nn.Module):
    """The run's interventions, `layers[str(i)][group]`, registered on the model as `model.reft` (so the optimizer,
    .to() and the Trainer's checkpoints see them), and the positions of the forward in flight (`masks`)."""

    def __init__(self, spec: dict[str, Any], hidden: int):
        super().__init__()
        self.spec = dict(spec)
        self.counts = parse_positions(spec["positions"])
        self.groups = groups(spec)
        self.layers = nn.ModuleDict({str(i): nn.ModuleDict({g: LoReFT(hidden, spec["rank"], spec["dropout"])
                                                            for g in self.groups}) for i in spec["layers"]})
        self.masks: dict[str, torch.Tensor] = {}
        self.warned = False  # about training samples with several answers (once per run)

    def edit(self, index: int, output: Any) -> Any:
        """A decoder layer's output with its interventions applied at the positions of this forward."""
        h = output[0] if isinstance(output, tuple) else output
        for group, module in self.layers[str(index)].items():
            if group == "all":
                h = module(h)
                continue
            mask = self.masks.get(group)
            if mask is None:
                continue
            h = torch.where(mask.unsqueeze(-1), module(h), h)
        return (h, *output[1:]) if isinstance(output, tuple) else h

    def locate(self, kwargs: dict[str, Any], args: tuple) -> None:
        """Masks (batch x tokens) of the positions each group edits in this forward; none on decode steps."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs["inputs_embeds"][..., 0]
        past = kwargs.get("past_key_values")
        length = getattr(past, "get_seq_length", None)
        if past is not None and callable(length) and length() > 0:  # a decode step: no prompt token in it
            self.masks = {}
            return
        labels = kwargs.get("labels")
        first, last = prompt_masks(tuple(ids.shape), self.counts, labels, kwargs.get("attention_mask"),
                                   kwargs.get("position_ids"))
        if labels is not None and not self.warned and several_answers(labels, kwargs.get("position_ids")):
            self.warned = True
            log.warning("reft: a training sample holds several answers (multi-turn, loss_on assistant); its positions "
                        "come from the prompt before the first answer, while generation edits the whole "
                        "conversation's. Train with --loss-on last for the positions generation sees")
        masks = {"first": first, "last": last} if "first" in self.groups else {"prompt": first | last}
        self.masks = {group: mask.to(ids.device) for group, mask in masks.items()}


def several_answers(labels: torch.Tensor, position_ids: Any) -> bool:
    """True when a training sample's supervised tokens (labels != -100) form more than one span: a multi-turn row
    trained on every answer. Packed rows are read per sample (position_ids restart at 0)."""
    rows = labels.tolist()
    positions = position_ids.expand(len(rows), -1).tolist() if position_ids is not None else None
    for b, row in enumerate(rows):
        for s, e in _segments(positions[b] if positions is not None else None, len(row)):
            spans = sum(1 for t in range(s, e) if row[t] != -100 and (t == s or row[t - 1] == -100))
            if spans > 1:
                return True
    return False


def _segments(positions: list[int] | None, width: int) -> list[tuple[int, int]]:
    """[start, end) of each sample in a row: one, or one per restart of position_ids at 0 (packing)."""
    starts = [t for t, p in enumerate(positions) if p == 0] if positions is not None else []
    starts = starts or [0]
    return list(zip(starts, [*starts[1:], width]))


def prompt_masks(shape: tuple[int, int], counts: tuple[int, int], labels: Any, attention_mask: Any,
                 position_ids: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, last) masks: each sample's first and last prompt tokens, at most half its prompt each (pyreft). A row
    holds several samples where position_ids restart at 0 (packing); padding (attention_mask 0) is in none."""
    rows, width = shape
    first, last = torch.zeros(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)
    labels = labels.tolist() if labels is not None else None
    mask = attention_mask.tolist() if attention_mask is not None and attention_mask.dim() == 2 else None
    positions = position_ids.expand(rows, -1).tolist() if position_ids is not None else None
    for b in range(rows):
        for s, e in _segments(positions[b] if positions is not None else None, width):
            if mask is not None:  # left padding (generation) before the sample, right padding after it
                kept = [t for t in range(s, e) if mask[b][t]]
                if not kept:
                    continue
                s, e = kept[0], kept[-1] + 1
            end = next((t for t in range(s, e) if labels[b][t] != -100), e) if labels is not None else e
            n = end - s
            take_first, take_last = min(n // 2, counts[0]), min(n // 2, counts[1])
            first[b, s:s + take_first] = True
            last[b, end - take_last:end] = True
    return first, last


# -----------------------------------------------------------------------------
# On a model: attach, save, load


def decoder_layers(model: Any) -> nn.ModuleList:
    count = model.config.get_text_config().num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"no list of {count} decoder layers found in {type(model).__name__}")


def resolve_layers(spec: dict[str, Any], count: int) -> list[int]:
    layers = list(range(count)) if spec["layers"] == "all" else [int(i) for i in spec["layers"]]
    wrong = [i for i in layers if not 0 <= i < count]
    if wrong:
        raise ValueError(f"reft.layers: {wrong} not among the model's decoder layers 0-{count - 1}")
    return sorted(set(layers))


def attach(model: Any, spec: dict[str, Any]) -> Interventions:
    """Freeze the model, add the interventions (`model.reft`) and the hooks that apply them. The Trainer's checkpoints
    then save the interventions only (the base's keys are in _keys_to_ignore_on_save)."""
    layers = decoder_layers(model)
    spec = {**spec, "layers": resolve_layers(spec, len(layers))}
    base_keys = set(model.state_dict())
    for param in model.parameters():
        param.requires_grad = False
    hidden = model.config.get_text_config().hidden_size
    device = next(model.parameters()).device
    interventions = Interventions(spec, hidden).to(device)
    model.add_module("reft", interventions)
    for i in spec["layers"]:
        layers[i].register_forward_hook(lambda module, args, output, i=i: interventions.edit(i, output))
    if interventions.counts is not None:  # prompt positions: found from each forward's inputs
        model.register_forward_pre_hook(lambda module, args, kwargs: interventions.locate(kwargs, args),
                                        with_kwargs=True)
    model._keys_to_ignore_on_save = base_keys
    return interventions


def is_reft_run(folder: str | Path) -> bool:
    return (Path(folder) / FOLDER / CONFIG).exists()


def save(model: Any, folder: Path, base_model: str) -> None:
    """folder/reft/: the interventions' weights (safetensors, keys as in the Interventions module) and a JSON config
    (spec, hidden size, base model). The Trainer's whole-model files, which hold only these weights, go."""
    from safetensors.torch import save_file

    interventions = getattr(model, "module", model).reft
    out = folder / FOLDER
    out.mkdir(exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in interventions.state_dict().items()}
    save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
    hidden = interventions.layers[next(iter(interventions.layers))]
    config = {"format": FORMAT, "method": "loreft", **interventions.spec, "base_model": base_model,
              "hidden_size": next(iter(hidden.values())).source.in_features}
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    for name in ("model.safetensors", "config.json", "generation_config.json"):
        (folder / name).unlink(missing_ok=True)


def read_config(folder: str | Path) -> dict[str, Any]:
    return json.loads((Path(folder) / FOLDER / CONFIG).read_text())


def load_into(model: Any, folder: str | Path) -> Interventions:
    """The saved interventions of a run, attached to `model` (its base), for inference."""
    from safetensors.torch import load_file

    config = read_config(folder)
    hidden = model.config.get_text_config().hidden_size
    if config["hidden_size"] != hidden:
        raise ValueError(f"{folder}: its interventions are for hidden size {config['hidden_size']}, the model has "
                         f"{hidden}; serve it on the base it was trained on ({config['base_model']})")
    spec = {k: config[k] for k in ("layers", "rank", "positions", "share_weights", "dropout")}
    interventions = attach(model, spec)
    interventions.load_state_dict(load_file(str(Path(folder) / FOLDER / WEIGHTS)))
    interventions.to(next(model.parameters()).device).eval()
    return interventions


def load_run(folder: Path, dtype: Any, device: str) -> Any:
    """The run's base model (from its config.yaml) with its interventions."""
    from tunesmith.models import load as models
    from tunesmith.models.runs import read_run_output

    base = models.load_model(models.resolve(read_run_output(folder).base_model), dtype=dtype, device=device)
    load_into(base, folder)
    return base


def needs_whole_prompt(model: Any) -> bool:
    """True for a model with prompt-position interventions: its prompt must run in one forward of its own (generate()),
    which transformers' continuous batching (ragged, chunked prefills) does not give."""
    interventions = getattr(model, "reft", None)
    return isinstance(interventions, Interventions) and interventions.counts is not None
