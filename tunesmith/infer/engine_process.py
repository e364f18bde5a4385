"""An engine in its own process, behind the Engine interface: the HTTP server's event loop and the engine's batching
loop then run in two Python interpreters instead of sharing one (the GIL), as vLLM splits its API server from its
engine core.

    engine = start_engine_process("transformers", "runs/prd/final", device="cuda")   # load_engine's arguments
    async for delta in engine.stream(request): ...                                     # as with any Engine

Why: at 64 streams on a GPU, a decode step of a 0.5B model needs ~2 ms of the batching thread's CPU and the event
loop needed ~2 ms more for the step's 64 SSE chunks (framing, ASGI sends, socket writes); in one process the two
take turns, and deploy lost ~30 % of the engine's throughput (docs/benchmarks.md). Here the engine's process keeps
what the engine alone does (the batching loop, detokenizing, stop strings) and the server's process keeps HTTP.

What crosses the pipe (a socket pair, multiprocessing's framing, pickled): requests with their prompt ids already rendered (the server
renders each prompt once, with copies of the served models' templates that the engine sent when it was ready), and
back the Deltas, all of one event-loop turn in one message (one batching step's outputs for every stream, ~5 us of
pickling at 64 streams). Other calls (health, loading a model through the admin API, a vision model's prompt) are
remote calls that block their caller, which is a worker thread where they take long.

The engine's process ignores Ctrl-C (the server drains first, then closes the engine) and exits when the server's
process goes away (its end of the pipe closes).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import dataclasses
import itertools
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, AsyncIterator

from tunesmith.errors import TunesmithError
from tunesmith.infer.common import pick_served, prompt_ids, reasoning_split
from tunesmith.infer.types import Delta, Engine, EngineError, GenerationRequest
from tunesmith.templates import Template

log = logging.getLogger("tunesmith")
CLOSE_TIMEOUT_S = 60.0  # how long close() waits for the engine's process to stop its loops and exit


@dataclass
class ModelFacts:
    """What the server asks about a served model on every request, answered on its side without a round trip."""

    template: Template
    context_length: int | None
    accepts_images: bool


@dataclass
class EngineFacts:
    names: list[str]
    models: dict[str, ModelFacts]
    device: str | None
    loads: int | None


def facts(engine: Engine) -> EngineFacts:
    names = engine.model_names()
    return EngineFacts(names, {n: ModelFacts(text_side(engine.template_for(n)), engine.context_length(n),
                                             engine.accepts_images(n)) for n in names},
                       getattr(engine, "device", None), getattr(engine, "loads", None))


def text_side(template: Template) -> Template:
    """The template as the server's side uses it: a vision model's processor stays in the engine's process, which
    encodes that model's prompts with their pictures (EngineProcess.prompt_ids); the server reads only the tokenizer
    and the chat template (tool calls, reasoning). Its processor's class, made when the model loads, would not
    unpickle there anyway."""
    if getattr(template, "processor", None) is None:
        return template
    light = copy.copy(template)
    light.processor = None
    return light


def portable(err: BaseException) -> BaseException:
    """The exception as it can cross the pipe: itself when it pickles and unpickles, else an EngineError with its
    text (an exception whose constructor takes other arguments than its message does not unpickle)."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return EngineError(f"{type(err).__name__}: {err}")


def start_engine_process(backend: str = "transformers", model: str | None = None,
                         adapters: dict[str, str] | None = None, device: str = "auto", dtype: str = "auto",
                         system: str | None = None, chat_template_kwargs: dict | None = None,
                         **options: Any) -> "EngineProcess":
    """load_engine() in a new process; returns once the models are loaded (or raises the error that stopped them).
    The process is a fresh interpreter running this module (not multiprocessing's spawn, which would run the caller's
    main script again in it: a script calling deploy without a __main__ guard would start itself twice)."""
    ours, theirs = socket.socketpair()
    command = [sys.executable, "-m", "tunesmith.infer.engine_process", str(theirs.fileno()),
               str(log.getEffectiveLevel())]
    process = subprocess.Popen(command, pass_fds=[theirs.fileno()])
    theirs.close()
    conn = Connection(ours.detach())
    try:
        conn.send(dict(backend=backend, model=model, adapters=adapters, device=device, dtype=dtype, system=system,
                       chat_template_kwargs=chat_template_kwargs, **options))
        kind, payload = conn.recv()
    except EOFError:
        raise EngineError(f"the engine's process exited while loading (exit code {process.wait()}); its log is "
                          "above") from None
    except BaseException:  # Ctrl-C while loading, say: the process goes too
        process.kill()
        raise
    if kind == "failed":
        process.wait(30)
        raise payload
    return EngineProcess(process, conn, payload)


class EngineProcess(Engine):
    """The server's side: an Engine whose work happens in the engine's process."""

    def __init__(self, process: Any, conn: Any, known: EngineFacts):
        self.process, self.conn = process, conn
        self.known = known
        self.send_lock = threading.Lock()
        self.ids = itertools.count()
        self.streams: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self.calls: dict[int, concurrent.futures.Future] = {}
        self.gone: str | None = None  # why the engine's process no longer answers
        self.lock = threading.Lock()  # new streams and calls against the reader's last sweep when the process goes
        self.reader = threading.Thread(target=self._read, name="tunesmith-engine-reader", daemon=True)
        self.reader.start()

    @property
    def device(self) -> str | None:
        return self.known.device

    @property
    def loads(self) -> int | None:
        return self.known.loads

    # -------------------------------------------------------------------------
    # Answered here, from the facts the engine sent

    def model_names(self) -> list[str]:
        return list(self.known.names)

    def _model(self, model: str | None) -> ModelFacts:
        return pick_served(self.known.models, self.known.names[0], model)

    def template_for(self, model: str | None) -> Template:
        return self._model(model).template

    def accepts_images(self, model: str | None = None) -> bool:
        return self._model(model).accepts_images

    def context_length(self, model: str | None = None) -> int | None:
        return self._model(model).context_length

    def reasoning(self, request: GenerationRequest) -> Any:
        return reasoning_split(self._model(request.model).template, request)

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        facts_ = self._model(request.model)
        if facts_.accepts_images:  # a vision model's processor encodes text and pictures together: the engine does
            return self._call("prompt_ids", request)
        if request.images:
            raise TunesmithError(f"{request.model or self.known.names[0]} reads text only; images need a "
                                 "vision-language model")
        return prompt_ids(facts_.template, request)

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return len(self.prompt_ids(request))

    # -------------------------------------------------------------------------
    # Done there

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        sid = next(self.ids)
        queue: asyncio.Queue = asyncio.Queue()
        with self.lock:
            if self.gone:
                raise EngineError(self.gone)
            self.streams[sid] = (asyncio.get_running_loop(), queue)
        finished = False
        try:
            self._send(("stream", sid, dataclasses.replace(request, encoded=None)))
            while True:
                kind, payload = await queue.get()
                if kind == "deltas":
                    for delta in payload:
                        yield delta
                elif kind == "end":
                    finished = True
                    return
                else:  # "error": raised here as the engine raised it
                    finished = True
                    raise payload
        finally:
            self.streams.pop(sid, None)
            if not finished and not self.gone:  # the client left, or a stop: the engine frees the request's slots
                with contextlib.suppress(EngineError):
                    self._send(("cancel", sid))

    def health(self) -> str | None:
        return self.gone or self._call("health")

    def open_streams(self) -> int:
        """Requests the engine's process is generating for now (a stream the server closed is gone there too)."""
        return 0 if self.gone else self._call("open_streams")

    def speculation_counts(self) -> dict[str, tuple[int, int, int | None]]:
        return {} if self.gone else self._call("speculation_counts")

    def add_model(self, name: str, folder: str, base: str | None = None) -> None:
        self.known = self._call("add_model", name, folder, base)

    def remove_model(self, name: str) -> None:
        self.known = self._call("remove_model", name)

    async def close(self) -> None:
        if not self.gone:
            try:
                await asyncio.wrap_future(self._start_call("close"))
            except EngineError as err:
                log.warning("closing the engine's process: %s", err)
        try:
            await asyncio.to_thread(self.process.wait, CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("the engine's process did not exit in %.0f s; stopping it", CLOSE_TIMEOUT_S)
            self.process.kill()
        self.gone = self.gone or "the engine was closed"

    # -------------------------------------------------------------------------

    def _send(self, message: tuple) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            with self.send_lock:
                self.conn.send_bytes(data)
        except OSError as err:  # the process went; the reader says how once it has seen it
            raise EngineError(self.gone or f"the engine's process no longer answers ({err})") from None

    def _start_call(self, method: str, *args: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        cid = next(self.ids)
        with self.lock:
            if self.gone:
                future.set_exception(EngineError(self.gone))
                return future
            self.calls[cid] = future
        try:
            self._send(("call", cid, method, args))
        except EngineError as err:
            self.calls.pop(cid, None)
            future.set_exception(err)
        return future

    def _call(self, method: str, *args: Any) -> Any:
        return self._start_call(method, *args).result()

    def _read(self) -> None:
        """The reader thread: each message from the engine holds one event-loop turn's outputs; a stream's go to its
        queue on its event loop, all of them in one callback per loop."""
        while True:
            try:
                data = self.conn.recv_bytes()
            except (EOFError, OSError):
                break
            try:
                messages = pickle.loads(data)
            except Exception:  # noqa: BLE001 - the child checked that what it sends unpickles (portable): a bug
                log.exception("a message from the engine's process could not be read; it is dropped")
                continue
            by_loop: dict[asyncio.AbstractEventLoop, list] = {}
            for message in messages:
                if message[0] == "result":
                    _, cid, ok, value = message
                    future = self.calls.pop(cid, None)
                    if future is not None:
                        future.set_result(value) if ok else future.set_exception(value)
                    continue
                kind, sid, payload = message
                target = self.streams.get(sid)
                if target is not None:
                    by_loop.setdefault(target[0], []).append((target[1], (kind, payload)))
            for loop, items in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_deliver, items)
                except RuntimeError:  # that event loop is closed: nobody reads these streams any more
                    pass
        try:
            code = self.process.wait(5)
        except subprocess.TimeoutExpired:  # it closed its end but runs on: nothing more can reach it
            self.process.kill()
            code = self.process.wait()
        with self.lock:
            self.gone = self.gone or f"the engine's process exited (exit code {code}); restart tunesmith deploy"
            calls, streams = list(self.calls.values()), list(self.streams.values())
            self.calls.clear()
        if code != 0:
            log.error("%s", self.gone)
        error = EngineError(self.gone)
        for future in calls:
            future.set_exception(error)
        for loop, queue in streams:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, ("error", error))
            except RuntimeError:
                pass


def _deliver(items: list[tuple[asyncio.Queue, tuple]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)


# -----------------------------------------------------------------------------
# The engine's process


def engine_main(conn: Connection, level: int) -> None:
    """The engine's process: load what the server sends, say what is served, then answer until told to close or the
    server goes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the server drains first
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(level)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from tunesmith.infer import load_engine
    from tunesmith.infer.attention import kv_heads_in_sdpa

    try:
        engine = load_engine(**conn.recv())
    except BaseException as err:  # noqa: BLE001 - every failure is the server's error to report
        conn.send(("failed", portable(err)))
        return
    conn.send(("ready", facts(engine)))
    with kv_heads_in_sdpa(getattr(engine, "device", None)):  # as deploy wraps its in-process engine
        asyncio.run(EngineServer(engine, conn).serve())


class EngineServer:
    """The engine's side: streams as tasks, calls in worker threads, outputs of one event-loop turn sent together."""

    def __init__(self, engine: Engine, conn: Any):
        self.engine, self.conn = engine, conn
        self.tasks: dict[int, asyncio.Task] = {}
        self.outbox: list[tuple] = []
        self.closed: asyncio.Event | None = None

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self.closed = asyncio.Event()
        reader = threading.Thread(target=self._read, args=(loop,), name="tunesmith-engine-requests", daemon=True)
        reader.start()
        await self.closed.wait()

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                message = pickle.loads(self.conn.recv_bytes())
            except (EOFError, OSError):  # the server's process is gone: stop generating and exit
                loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._close(None)))
                return
            loop.call_soon_threadsafe(self._handle, message)
            if message[0] == "call" and message[2] == "close":
                return

    def _handle(self, message: tuple) -> None:
        if message[0] == "stream":
            _, sid, request = message
            self.tasks[sid] = asyncio.ensure_future(self._stream(sid, request))
        elif message[0] == "cancel":
            task = self.tasks.pop(message[1], None)
            if task is not None:
                task.cancel()
        else:
            _, cid, method, args = message
            asyncio.ensure_future(self._close(cid) if method == "close" else self._call(cid, method, args))

    async def _stream(self, sid: int, request: GenerationRequest) -> None:
        stream = self.engine.stream(request)
        try:
            async for delta in stream:
                self._post(("deltas", sid, [delta]))
            self._post(("end", sid, None))
        except asyncio.CancelledError:
            pass
        except Exception as err:  # noqa: BLE001 - raised on the server's side as it was raised here
            self._post(("error", sid, portable(err)))
        finally:
            await stream.aclose()
            self.tasks.pop(sid, None)

    async def _call(self, cid: int, method: str, args: tuple) -> None:
        try:
            value = await asyncio.to_thread(self._run, method, args)
            self._post(("result", cid, True, value))
        except Exception as err:  # noqa: BLE001
            self._post(("result", cid, False, portable(err)))

    def _run(self, method: str, args: tuple) -> Any:
        if method == "open_streams":
            return len(self.tasks)
        value = getattr(self.engine, method)(*args)
        return facts(self.engine) if method in ("add_model", "remove_model") else value

    async def _close(self, cid: int | None) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        try:
            await self.engine.close()
        finally:
            if cid is not None:
                self._post(("result", cid, True, None))
                self._flush()
            self.closed.set()

    def _post(self, message: tuple) -> None:
        """Queue a message; the queue goes out once this event-loop turn has run every callback that was ready (one
        batching step's outputs wake every stream in the same turn)."""
        if not self.outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        if message[0] == "deltas" and self.outbox and self.outbox[-1][:2] == message[:2]:
            self.outbox[-1][2].extend(message[2])
            return
        self.outbox.append(message)

    def _flush(self) -> None:
        if self.outbox:
            messages, self.outbox = self.outbox, []
            try:
                self.conn.send_bytes(pickle.dumps(messages, protocol=pickle.HIGHEST_PROTOCOL))
            except (BrokenPipeError, OSError):  # the server's process is gone; the reader closes everything
                pass


if __name__ == "__main__":  # started by start_engine_process: the socket's descriptor and the log level
    from tunesmith.infer.engine_process import engine_main as main  # this module's names, as the server unpickles them

    main(Connection(int(sys.argv[1])), int(sys.argv[2]))
