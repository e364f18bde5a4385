"""The inference engine that `infer` (and later `deploy`, `eval` and RL rollouts) share.

    engine = Engine.load(adapters="runs/prd/final")
    answers = engine.chat([[{"role": "user", "content": "..."}]], GenerationCfg(max_tokens=200))

Prompts are rendered by the same Template that training used (read from the run's final/ folder), so the text the
model sees at inference is the text it was trained on.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tunesmith.config import DEFAULT_MODEL, GenerationCfg
from tunesmith.models import load as models
from tunesmith.models.runs import read_run_output
from tunesmith.templates import Template


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length"


class Engine:
    """transformers backend: batched `generate` with left padding."""

    def __init__(self, model: Any, template: Template, device: str, name: str):
        self.model, self.template, self.device, self.name = model, template, device, name
        self.tokenizer = template.tokenizer
        self.lock = threading.Lock()  # one generate at a time: concurrent calls on one model thrash

    @classmethod
    def load(cls, model: str | None = None, adapters: str | None = None, device: str = "auto", dtype: str = "auto",
             system: str | None = None) -> "Engine":
        device = models.pick_device(device)
        torch_dtype = models.pick_dtype(dtype, device)
        if adapters:
            run = read_run_output(adapters)
            base_folder = models.resolve(model or run.base_model) if run.is_adapter else run.folder
            net = models.load_model(base_folder, dtype=torch_dtype, device=device)
            if run.is_adapter:
                # One adapter: fold it into the weights (exact up to float rounding), so every token costs what the
                # base model costs instead of running the LoRA branches beside each layer.
                net = models.attach_adapters(net, run.folder, trainable=False).merge_and_unload()
            template = Template.load(run.folder)
            name = run.folder.parent.name if run.folder.name == "final" else run.folder.name
        else:
            folder = models.resolve(model or DEFAULT_MODEL)
            net = models.load_model(folder, dtype=torch_dtype, device=device)
            template = Template.load(folder)
            name = Path(model or DEFAULT_MODEL).name
        if system is not None:
            template.default_system = system
        net.eval()
        return cls(net, template, device, name)

    # -------------------------------------------------------------------------

    def chat(self, requests: list[list[dict]], config: GenerationCfg, tools: list | None = None) -> list[Answer]:
        """Answer a batch of conversations (each ends with a user turn)."""
        import torch

        prompts = [self.template.render_prompt(m, tools=tools) for m in requests]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.model.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.model.device)
        with self.lock, torch.inference_mode():
            if config.seed is not None:
                torch.manual_seed(config.seed)
            out = self.model.generate(input_ids=input_ids, attention_mask=attention, **self._generate_kwargs(config))
        return [self._answer(row[width:].tolist(), len(p), config) for row, p in zip(out, prompts)]

    def stream(self, messages: list[dict], config: GenerationCfg) -> Iterator[str]:
        """Yield text pieces of one answer as they are generated."""
        import torch
        from transformers import TextIteratorStreamer

        prompt = self.template.render_prompt(messages)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        ids = torch.tensor([prompt], device=self.model.device)

        def run() -> None:
            with self.lock, torch.inference_mode():
                if config.seed is not None:
                    torch.manual_seed(config.seed)
                self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                                    **self._generate_kwargs(config))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        text = ""
        for piece in streamer:
            before = len(text)
            text += piece
            cut = _first_stop(text, config.stop)
            if cut is not None:
                yield text[before:cut]
                break
            yield piece
        thread.join()

    def _generate_kwargs(self, config: GenerationCfg) -> dict[str, Any]:
        sample = config.temperature > 0
        return {
            "max_new_tokens": config.max_tokens,
            "do_sample": sample,
            "temperature": config.temperature if sample else None,
            "top_p": config.top_p if sample else None,
            "top_k": None,
            "eos_token_id": self.template.stop_token_ids,
            "pad_token_id": self.tokenizer.pad_token_id,
        }

    def _answer(self, new_ids: list[int], prompt_tokens: int, config: GenerationCfg) -> Answer:
        stops = set(self.template.stop_token_ids)
        end = next((i for i, t in enumerate(new_ids) if t in stops), None)
        kept = new_ids if end is None else new_ids[:end]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        cut = _first_stop(text, config.stop)
        finish = "stop" if end is not None or cut is not None else "length"
        if cut is not None:
            text = text[:cut]
        completion = len(kept) + (1 if end is not None else 0)
        return Answer(text, prompt_tokens, completion, finish)


def _first_stop(text: str, stops: list[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None
