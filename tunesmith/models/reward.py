"""Sequence-classification reward models: the base `tunesmith rlhf --method rm` trains, and a trained one to score
answers (GRPO's --rewards.model runs/rm/final).

    model, tokenizer = load_reward_model("runs/rm/final")
    scores = score(model, tokenizer, [ids, ...])   # one float per sequence, higher = better

A sequence is the whole conversation as the chat template writes it, prompt and answer, i.e. the ids of
Template.render(prompt + [{"role": "assistant", "content": answer}]): what rm trained on, and what TRL's GRPOTrainer
feeds a reward model (it renders the same text with the saved chat template). The score is read at the last token
that is not padding, as transformers' *ForSequenceClassification do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.errors import ModelNotFoundError
from tunesmith.models import load as models


def load_reward_base(folder: Path, dtype: Any, device: str, pad_token_id: int, quantize_4bit: bool = False) -> Any:
    """A causal LM folder (or an earlier reward model) as a sequence classifier with one output: the LM head is
    left out and a fresh `score` head (hidden -> 1) is added, which rm trains."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    kwargs: dict[str, Any] = {"dtype": dtype, "num_labels": 1, "pad_token_id": pad_token_id}
    if quantize_4bit:
        kwargs["quantization_config"] = models._nf4_config(dtype)
        kwargs["device_map"] = {"": 0} if device == "cuda" else {"": device}
    # transformers reports the new score head as missing and lm_head as unused: expected when turning an LM into a
    # classifier, so that one report is silenced.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(folder, **kwargs)
    finally:
        hf_logging.set_verbosity(level)
    return model if quantize_4bit else model.to(device)


def load_reward_model(path: str | Path, device: str = "auto", dtype: str = "auto") -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) from a reward-model folder such as runs/NAME/final of `--method rm`."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        adapter = (folder / "adapter_config.json").exists()
        hint = " (an adapter folder: was it trained with --method rm?)" if adapter else ""
        raise ModelNotFoundError(f"{folder}: not a reward-model folder, no config.json{hint}")
    if getattr(AutoConfig.from_pretrained(folder), "num_labels", None) != 1:
        raise ModelNotFoundError(f"{folder}: not a reward model (num_labels != 1); train one with "
                                 "tunesmith rlhf --method rm")
    device = models.pick_device(device)
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=models.pick_dtype(dtype, device))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id  # where each sequence ends, for the classifier
    return model.to(device).eval(), tokenizer


def score(model: Any, tokenizer: Any, sequences: list[list[int]], batch_size: int = 16) -> list[float]:
    """One reward per token-id sequence (see the module docstring for what a sequence holds)."""
    import torch

    out: list[float] = []
    for start in range(0, len(sequences), batch_size):
        batch = tokenizer.pad({"input_ids": sequences[start: start + batch_size]}, padding_side="right",
                              return_tensors="pt").to(model.device)
        with torch.inference_mode():
            out += model(**batch).logits[:, 0].float().tolist()
    return out
