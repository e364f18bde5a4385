"""deploy --admit-window-ms: requests that arrive while a batch is decoding join it together, not one by one.

    admission = Admission(0.008)
    await admission.wait(busy=batch_has_requests)   # then add the request to the batch

Why: a decode-only step of the continuous batch replays a CUDA graph; a step that also carries a prefill chunk runs
eagerly and costs more. Over HTTP, the next requests of many streams arrive spread over several milliseconds (each
client reads its answer's end, sends again, the server parses and renders), so each straggler's prefill lands in a
step of its own among the decoding ones. Held for a few milliseconds, the arrivals of one such spread join in the
same step or two. A request that finds the batch idle joins at once: a lone request waits for nothing.
"""

from __future__ import annotations

import asyncio


class Admission:
    """A gate per batch: the first request arriving while the batch is busy opens it for `window_s` seconds; every
    request arriving in that time waits for the same gate, and all pass it in the same event-loop turn."""

    def __init__(self, window_s: float):
        self.window_s = window_s
        self.gate: asyncio.Future | None = None

    async def wait(self, busy: bool) -> None:
        if self.window_s <= 0 or not busy:
            return
        loop = asyncio.get_running_loop()
        gate = self.gate
        if gate is None or gate.done() or gate.get_loop() is not loop:
            gate = self.gate = loop.create_future()
            loop.call_later(self.window_s, lambda: gate.done() or gate.set_result(None))
        await asyncio.shield(gate)  # a client that leaves while waiting cancels its own wait, not the gate
