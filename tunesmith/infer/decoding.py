"""Generated ids to text, shared by the transformers engine's paths (continuous batching and generate()).

    decoder = Decoder(template, stops)      # per choice
    text, stopped = decoder.update(ids)     # the new text since the last call; stopped: a stop string was reached
    streamer = TokenStream(loop, queue)     # generate(streamer=...) in a worker thread -> ids on the caller's loop
"""

from __future__ import annotations

import asyncio
from typing import Any

from tunesmith.templates import Template

GREEDY_TEMPERATURE = 1e-6
GREEDY_BELOW = 1e-5  # temperatures under this are greedy (vLLM's _SAMPLING_EPS)


class Decoder:
    """Turns a growing list of generated ids into new text: cuts at the end-of-turn token and at stop strings,
    and holds back a trailing partial UTF-8 character."""

    def __init__(self, template: Template, stops: list[str]):
        self.tokenizer, self.stop_ids = template.tokenizer, set(template.stop_token_ids)
        self.stops = [s for s in stops if s]
        self.emitted, self.count, self.ended_by = "", 0, None

    def update(self, tokens: list[int], final: bool = False) -> tuple[str, bool]:
        kept = list(tokens)
        for i, t in enumerate(kept):
            if t in self.stop_ids:
                kept, self.ended_by = kept[:i], "eos"
                break
        self.count = len(kept) + (1 if self.ended_by == "eos" else 0)
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        cut = min((text.find(s) for s in self.stops if s in text), default=-1)
        if cut >= 0:
            self.count = self._tokens_to_stop(kept)  # up to the token that completed the stop string
            text, self.ended_by = text[:cut], "stop"
        elif self.ended_by is None and not final:
            if text.endswith("\ufffd"):
                text = text[:-1]  # half a multi-byte character: wait for the next token
            text = text[: len(text) - self._partial_stop(text)]
        new = text[len(self.emitted):] if text.startswith(self.emitted) else ""
        self.emitted = text if text.startswith(self.emitted) else self.emitted
        return new, self.ended_by == "stop"

    def _tokens_to_stop(self, kept: list[int]) -> int:
        """The fewest leading tokens whose text holds a stop string: one step may bring several tokens (a queue drain,
        an accepted speculative run), and those past the stop string are not the answer's."""
        low, high = 1, len(kept)
        while low < high:
            mid = (low + high) // 2
            text = self.tokenizer.decode(kept[:mid], skip_special_tokens=True)
            if any(s in text for s in self.stops):
                high = mid
            else:
                low = mid + 1
        return high

    def _partial_stop(self, text: str) -> int:
        """Length of the longest tail of `text` that begins a stop string: held back until the next token decides."""
        return max((n for s in self.stops for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])),
                   default=0)

    def finish_reason(self, max_tokens: int) -> str:
        return "stop" if self.ended_by is not None or self.count < max_tokens else "length"


class TokenStream:
    """generate()'s streamer: the new token ids of each step, from the generating thread to the caller's loop (None
    at the end); `stop` ends generate() at its next step once `cancelled` is set."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        self.loop, self.queue, self.cancelled, self.prompt_seen = loop, queue, False, False
        self.on_step: Any = None  # called with each step's token count (assisted generation's accepted tokens)

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() sends the prompt first
            self.prompt_seen = True
            return
        ids = value.reshape(-1).tolist()
        if self.on_step is not None:
            self.on_step(len(ids))
        self._send(ids)

    def end(self) -> None:
        self._send(None)

    def _send(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the caller's loop is gone
            self.cancelled = True

    def stop(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.cancelled, dtype=torch.bool, device=input_ids.device)
