"""A scripted Engine for testing serving.py without a model: each choice answers with given pieces of text, one
piece (= one token) per Delta, cut at stop strings as the real engine does. It records what it was asked, and how
often it rendered a prompt (a word = a token; prompt ids set on the request are used as given)."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from tunesmith.infer.types import Delta, Engine, EngineError, GenerationRequest, TokenLogprob, UnknownModelError


class ScriptedEngine(Engine):
    def __init__(self, pieces: list[str] | list[list[str]] = ("Hello", " there", "!"), names=("base", "prd"),
                 fail_at: int | None = None, delay: float = 0.0, context: int | None = None):
        # pieces: one script for every choice, or one per choice index
        self.scripts = [list(pieces)] if isinstance(pieces[0], str) else [list(p) for p in pieces]
        self.names = list(names)
        self.fail_at, self.delay = fail_at, delay  # raise EngineError before piece number fail_at
        self.context = context  # context_length(); None = unknown
        self.requests: list[GenerationRequest] = []
        self.renders = 0
        self.open_streams = 0
        self.closed = False

    def model_names(self) -> list[str]:
        return self.names

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return len(self.prompt_ids(request))

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        self._check(request)
        if request.prompt_ids is not None:
            return list(request.prompt_ids)
        self.renders += 1
        if request.messages is not None:
            return list(range(sum(len(m["content"].split()) + 3 for m in request.messages)))  # 3: a turn's header, end
        return list(range(len((request.prompt or "").split()) or 1))  # "": a start-of-text token, as the real ones

    def context_length(self, model: str | None = None) -> int | None:
        return self.context

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        self._check(request)
        self.requests.append(request)
        p = request.params
        prompt = len(self.prompt_ids(request))
        self.open_streams += 1
        try:
            texts, done = ["" for _ in range(p.n)], [False] * p.n
            for step in range(p.max_tokens):
                for i in range(p.n):
                    if done[i]:
                        continue
                    script = self.scripts[i % len(self.scripts)]
                    if self.fail_at is not None and step == self.fail_at:
                        raise EngineError("scripted failure")
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    piece = script[step] if step < len(script) else ""
                    finished = step + 1 >= len(script) or step + 1 >= p.max_tokens
                    reason = ("stop" if step + 1 >= len(script) else "length") if finished else None
                    new = texts[i] + piece
                    cut, stop = min(((new.find(s), s) for s in p.stop if s in new), default=(-1, None))
                    if cut >= 0:
                        piece, reason, finished = new[:cut][len(texts[i]):], "stop", True
                    texts[i] += piece
                    done[i] = finished
                    lp = [TokenLogprob(piece, -0.5, [(piece, -0.5), ("x", -1.5)][: p.top_logprobs])] if p.logprobs else []
                    yield Delta(i, piece, reason, lp, prompt_tokens=prompt, completion_tokens=step + 1, stop=stop)
                if all(done):
                    return
        finally:
            self.open_streams -= 1

    async def close(self) -> None:
        self.closed = True

    def _check(self, request: GenerationRequest) -> None:
        if request.model is not None and request.model not in self.names:
            raise UnknownModelError(f"model {request.model!r} is not served here")
