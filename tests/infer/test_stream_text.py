"""Engine.stream_text, the synchronous stream the terminal chat reads (ui/chat.py): Ctrl-C while a step runs reaches
the caller as a KeyboardInterrupt and the engine's stream ends through its own cleanup (the batch drops the
request). It used to end in "aclose(): asynchronous generator is already running", the request generating on, and
the chat hung instead of exiting."""

import asyncio
import os
import signal
import threading

import pytest

from tunesmith.infer.types import Delta, Engine, SamplingParams


class SlowEngine(Engine):
    """One piece of text, then a step that never ends (until cancelled)."""

    def __init__(self):
        self.cleaned_up = False

    def model_names(self):
        return ["slow"]

    def count_prompt_tokens(self, request):
        return 1

    async def stream(self, request):
        try:
            yield Delta(0, "Once")
            await asyncio.sleep(3600)
        finally:
            self.cleaned_up = True


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals reach the main thread")
def test_ctrl_c_during_a_step_interrupts_and_ends_the_engines_stream(ctrl_c_raises):
    engine = SlowEngine()
    pieces = engine.stream_text([{"role": "user", "content": "hi"}], SamplingParams())
    assert next(pieces) == "Once"
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))  # Ctrl-C while the next step runs
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        next(pieces)
    timer.join()
    assert engine.cleaned_up


def test_a_caller_that_stops_reading_ends_the_engines_stream():
    engine = SlowEngine()
    pieces = engine.stream_text([{"role": "user", "content": "hi"}], SamplingParams())
    assert next(pieces) == "Once"
    pieces.close()
    assert engine.cleaned_up
