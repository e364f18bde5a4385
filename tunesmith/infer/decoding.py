"""Generated ids to text, shared by the transformers engine's paths (continuous batching and generate()).

    decoder = Decoder(template, stops)      # per choice
    text, stopped = decoder.update(ids)     # the new text since the last call; stopped: a stop string was reached
    streamer = TokenStream(loop, queue)     # generate(streamer=...) in a worker thread -> ids on the caller's loop
    raw = token_bytes(tokenizer)            # id -> the token's own bytes, for logprobs (None: only its text is known)
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

from tunesmith.templates import Template

GREEDY_TEMPERATURE = 1e-6
GREEDY_BELOW = 1e-5  # temperatures under this are greedy (vLLM's _SAMPLING_EPS)


class Decoder:
    """Turns a growing list of generated ids into new text: cuts at the end-of-turn token and at stop strings,
    and holds back a trailing partial UTF-8 character.

    Each update decodes only the tokens that came since the text last ended in a whole character, with the chunk
    before them as context (vLLM's incremental detokenization: the context's own text is cut off the front, so a
    tokenizer that drops a leading space at the start of a decode drops it in both), and appends that to the settled
    text. The text is the whole decode of the kept ids at every update (tests/infer/test_decoding_incremental.py),
    at a cost that does not grow with the answer: decoding everything again at each of 64 streams' steps held the
    event loop, and the GIL the batching loop needs, ~30 us per stream per step for a 256-token answer."""

    def __init__(self, template: Template, stops: list[str]):
        self.tokenizer, self.stop_ids = template.tokenizer, set(template.stop_token_ids)
        self.stops = [s for s in stops if s]
        self.emitted, self.count, self.ended_by = "", 0, None
        self.stop_string: str | None = None  # the stop string the answer was cut at
        self.decode = text_decoder(self.tokenizer)
        self.kept: list[int] = []  # the ids before the end-of-turn token
        self.seen = 0  # ids of the growing list looked at
        self.settled = ""  # the text of kept[:read], ending in a whole character
        self.context = self.read = 0  # kept[context:read]: the chunk the next ids are decoded after

    def update(self, tokens: list[int], final: bool = False) -> tuple[str, bool]:
        """`tokens`: every id generated so far (the list of the previous call, extended)."""
        if self.ended_by is None:
            for t in tokens[self.seen:]:
                if t in self.stop_ids:
                    self.ended_by = "eos"
                    break
                self.kept.append(t)
        self.seen = len(tokens)
        kept = self.kept
        self.count = len(kept) + (1 if self.ended_by == "eos" else 0)
        text = self.text()
        # without stop strings, skip their searches: two generator expressions a token on the event loop
        cut, stop = min(((text.find(s), s) for s in self.stops if s in text), default=(-1, None)) if self.stops \
            else (-1, None)
        if cut >= 0:
            self.count = self._tokens_to_stop(kept)  # up to the token that completed the stop string
            text, self.ended_by, self.stop_string = text[:cut], "stop", stop
        elif self.ended_by is None and not final:
            text = text.removesuffix("\ufffd")  # half a multi-byte character: wait for the next token
            if self.stops:
                text = text[: len(text) - self._partial_stop(text)]
        new = text[len(self.emitted):] if text.startswith(self.emitted) else ""
        self.emitted = text if text.startswith(self.emitted) else self.emitted
        return new, self.ended_by == "stop"

    def text(self) -> str:
        """The decode of all kept ids (skipping special tokens), from the ids after the settled text."""
        kept = self.kept
        if self.read == len(kept):
            return self.settled
        decode = self.decode
        context = decode(kept[self.context:self.read]) if self.read > self.context else ""
        tail = decode(kept[self.context:])
        new = tail[len(context):] if tail.startswith(context) else None
        if new is None:  # the context decodes otherwise followed by these ids: decode everything this time
            return decode(kept)
        text = self.settled + new
        if new and not new.endswith("\ufffd"):
            self.settled, self.context, self.read = text, self.read, len(kept)
        return text

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


def text_decoder(tokenizer: Any) -> Any:
    """ids -> text as tokenizer.decode(ids, skip_special_tokens=True) gives it. For a tokenizers-backed tokenizer
    that cleans up no spaces (and overrides neither decode), the backend's own decode: the same text without
    transformers' Python around it (2.8 -> 0.6 us for a few ids, twice per update and stream)."""
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # another transformers layout: its decode as it is
        TokenizersBackend = PreTrainedTokenizerBase = None
    cls = type(tokenizer)
    if (TokenizersBackend is not None and cls.decode is PreTrainedTokenizerBase.decode
            and cls._decode is TokenizersBackend._decode and not tokenizer.clean_up_tokenization_spaces):
        backend = tokenizer.backend_tokenizer
        return lambda ids: backend.decode(ids, skip_special_tokens=True)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


def token_bytes(tokenizer: Any) -> Callable[[int], bytes | None]:
    """id -> the token's own bytes, for logprobs (OpenAI's `bytes`), or None where only its text is known.

    A byte-level BPE tokenizer (GPT-2's scheme: SmolLM2, Qwen, Llama 3) spells each token's bytes as characters of
    GPT-2's byte-to-unicode table, so a token holding part of a UTF-8 character gives that part, where decode()
    gives U+FFFD. Added tokens (<|im_end|>) are plain text. Other tokenizers: None (their decoded text)."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    if decoder is None or not _byte_level(json.loads(decoder.__getstate__() or "null")):
        return lambda token: None
    table, added = _BYTE_OF_CHAR, tokenizer.added_tokens_decoder

    def read(token: int) -> bytes | None:
        if token in added:
            return added[token].content.encode()
        piece = tokenizer.convert_ids_to_tokens(token)
        if piece is None or any(c not in table for c in piece):
            return None
        return bytes(table[c] for c in piece)

    return read


def _byte_level(decoder: dict | None) -> bool:
    """Whether a tokenizers decoder (its JSON) maps characters back to bytes with GPT-2's table."""
    if not decoder:
        return False
    if decoder.get("type") == "Sequence":
        return any(_byte_level(d) for d in decoder.get("decoders", []))
    return decoder.get("type") == "ByteLevel"


def _byte_of_char() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: printable bytes stand for themselves, the other 68 for U+0100 onwards in
    byte order (transformers 5 no longer exports the table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + k): b for k, b in enumerate(others)}}


_BYTE_OF_CHAR = _byte_of_char()


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
