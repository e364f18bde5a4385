"""`tunesmith deploy`: the FastAPI app around chat.py, completion.py (and embeddings.py, rerank.py, classify.py for
embedding, reranker and classifier models), and uvicorn to run it.

    tunesmith deploy --adapters prd=runs/prd/final dao=runs/dao/final --api-key KEY --port 8000
    tunesmith deploy --encoders embed=runs/emb/final rerank=runs/rr/final   # no chat model: only those two
    app = build_app(engine, DeployConfig())        # for tests and for mounting in another ASGI server

Here: the API key check, the body size limit, request metrics and the drain (one Gate middleware, pure ASGI so
streams pass through untouched), every error as OpenAI's JSON, and the server's life: warm up, print how to call
it, and on SIGTERM drain: new requests are answered 503 with Retry-After (so load balancers move on) while running
ones finish (up to GRACEFUL_SHUTDOWN_S); then close the engine and exit 0.

What is open: with --api-key, every path needs `Authorization: Bearer KEY` (the API, /openapi.json, /docs, /redoc)
except /health, for probes, and /metrics, for scrapers, as vLLM leaves it; --metrics-require-key closes /metrics too.
Without --api-key everything is open. /health answers 503 while draining and when the engine cannot generate.
"""

from __future__ import annotations

import logging
import re
import signal
import socket
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tunesmith.config import DeployConfig
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.infer.common import refuse_hidden_adapter
from tunesmith.infer.types import Engine, EngineError, GenerationRequest, SamplingParams, UnknownModelError
from tunesmith.serve.context import BODY_SEND, RequestContext, enter, leave
from tunesmith.serve.errors import APIError, error_body, validation_message
from tunesmith.serve.keys import KeyRing
from tunesmith.serve.metrics import Metrics
from tunesmith.serve.openapi import OPEN_PATHS, document
from tunesmith.serve.routes import router
from tunesmith.serve.serving import Serving

log = logging.getLogger("tunesmith")
GRACEFUL_SHUTDOWN_S = 60  # running requests get this long to finish after SIGTERM; then they are cancelled
ENDPOINTS = {"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/messages",
             "/v1/messages/count_tokens", "/v1/embeddings", "/v1/rerank", "/v1/score", "/v1/classify"}


def build_app(engine: Engine, cfg: DeployConfig, warmup: bool = False, encoders: dict | None = None) -> FastAPI:
    """The app serving `engine` (and `encoders`: embedding, reranker and classifier models by name, from
    infer/encoders.py); it closes the engine when it shuts down. warmup=True generates one token with the
    default model before accepting requests: a backend's first generation can take seconds (the transformers one
    starts its batching loop and KV cache). Other models start on their first request, so adapters nobody asks
    for cost no cache memory."""
    metrics = Metrics()
    serving = Serving(engine, cfg, metrics, encoders)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            if warmup and engine.model_names():
                log.info("warming up %s", engine.model_names()[0])
                await engine.generate(GenerationRequest(prompt="Hello", params=SamplingParams(max_tokens=1)))
            vision = [n for n in serving.engine_names if engine.accepts_images(n)]
            print(banner(cfg, serving.public_names(), {n: m.task for n, m in serving.encoders.items()}, vision),
                  server_stack(), where_the_engine_runs(engine), sep="\n", flush=True)
            yield
        finally:
            log.info("closing the engine")
            await engine.close()

    app = FastAPI(title="tunesmith", summary="OpenAI-compatible API over tunesmith models and adapters",
                  lifespan=lifespan)
    app.state.serving = serving
    app.state.drain = Drain()
    app.include_router(router)
    if cfg.admin_key is not None:  # the admin API exists only behind its own key
        from tunesmith.serve.admin import router as admin_router

        app.include_router(admin_router)
    app.openapi = lambda: document(app, cfg)
    _add_error_handlers(app)
    app.add_middleware(Gate, metrics=metrics, cfg=cfg, drain=app.state.drain, keys=KeyRing.build(cfg, metrics.registry))
    if cfg.allowed_origins:  # outermost: a browser's preflight carries no key, so it is answered before the Gate
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cfg.allowed_origins, allow_methods=["*"],
                           allow_headers=["*"])
    return app


# -----------------------------------------------------------------------------
# Gate: metrics, API key, body size, drain


class Drain:
    """After SIGTERM: new requests are refused with 503 while the `running` ones finish."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.running = 0

    def begin(self) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.info("draining: answering 503 to new requests while %d finish", self.running)

    @property
    def draining(self) -> bool:
        return self.since is not None

    def done(self) -> bool:
        return self.since is not None and (self.running == 0 or time.monotonic() - self.since > GRACEFUL_SHUTDOWN_S)


class Gate:
    """Counts and times every request, checks `Authorization: Bearer KEY` (see the module docstring for what stays
    open), answers 413 to bodies over max_body_bytes, by their Content-Length or, without one, as they arrive, and
    503 while draining (/metrics still answers, so scrapers see the drain)."""

    def __init__(self, app, metrics: Metrics, cfg: DeployConfig, drain: Drain, keys: KeyRing | None = None):
        self.app, self.metrics, self.drain = app, metrics, drain
        self.keys, self.max_body_bytes = keys, cfg.max_body_bytes  # keys: --api-key, --keys, --admin-key (keys.py)
        self.open_paths = OPEN_PATHS | (set() if cfg.metrics_require_key else {"/metrics"})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status, started = 500, time.perf_counter()
        # the request's context (context.py): its key, headers, and the model version that answers it
        ctx = RequestContext({k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]})
        token = enter(ctx)

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if ctx.version is not None:  # versions.py: which version of the model answers
                    message["headers"] = [*message.get("headers", []), (b"x-tunesmith-version", ctx.version.encode())]
            await send(message)

        try:
            refusal = self._refusal(scope, ctx)
            if refusal is not None:
                await refusal(scope, receive, send_status)
            else:
                self.drain.running += 1
                scope[BODY_SEND] = send  # a stream's body lines skip send_status, which only reads the start
                try:
                    await self.app(scope, self._limited(receive), send_status)
                finally:
                    self.drain.running -= 1
        finally:
            status = 499 if ctx.client_closed else status  # a stream the client left (routes.py SSEResponse)
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            if ctx.caller is not None and self.keys is not None:
                self.keys.requests.labels(ctx.caller.name, str(status)).inc()
            ctx.end()
            leave(token)

    def _refusal(self, scope, ctx: RequestContext) -> JSONResponse | None:
        path, headers = scope["path"], ctx.headers
        if self.drain.draining and path != "/metrics":
            retry = {"Retry-After": "5", "Connection": "close"}  # close: a keep-alive client reconnects elsewhere
            if path == "/health":
                return JSONResponse({"status": "draining"}, status_code=503, headers=retry)
            return _error(503, "the server is shutting down; retry on another replica or after Retry-After seconds",
                          type="service_unavailable", code="shutting_down", headers=retry)
        if self.keys is not None and path not in self.open_paths:
            ctx.caller, refused = self.keys.authenticate(path, headers)
            if refused is not None:
                return JSONResponse(refused.body(), status_code=refused.status, headers=refused.headers)
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return _too_large(int(length), self.max_body_bytes)
        return None

    def _limited(self, receive):
        seen = 0

        async def receive_limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:  # FastAPI re-raises HTTPException from body reading as is
                    raise HTTPException(413, f"request body over {self.max_body_bytes} bytes (--max-body-bytes)")
            return message

        return receive_limited


def _error(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
           code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type, param, code), status_code=status, headers=headers)


def _too_large(size: int, limit: int) -> JSONResponse:
    return _error(413, f"request body is {size} bytes, more than this server accepts ({limit} bytes); send less, "
                  "or restart the server with a higher --max-body-bytes", code="request_too_large")


# -----------------------------------------------------------------------------
# Errors: every one in OpenAI's shape, bad input never a 500


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if content_type and not _json_media_type(content_type):  # FastAPI then validates the raw bytes as the body
            return _error(400, f"the body must be JSON sent with the header Content-Type: application/json; this "
                          f"request said {content_type!r} (curl -d needs -H 'Content-Type: application/json')")
        message, param = validation_message(err.errors())
        return _error(400, message, param=param)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        if err.status_code == 404:
            return _error(404, f"no route {request.method} {request.url.path}; this server answers /v1/models, "
                          "/v1/chat/completions, /v1/completions, /v1/messages, /v1/messages/count_tokens, /v1/embeddings, "
                          "/v1/rerank, /v1/score, /v1/classify, /health and /metrics", code="not_found")
        return _error(err.status_code, str(err.detail), headers=getattr(err, "headers", None))

    @app.exception_handler(UnknownModelError)
    async def unknown_model(request: Request, err: UnknownModelError) -> JSONResponse:
        return _error(404, str(err), param="model", code="model_not_found")

    @app.exception_handler(EngineError)
    async def engine_error(request: Request, err: EngineError) -> JSONResponse:
        log.error("generation failed: %s", err)
        return _error(500, f"generation failed: {err}", type="server_error")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error: {type(err).__name__}: {err}", type="server_error")


def _json_media_type(content_type: str) -> bool:
    """What FastAPI reads as JSON: application/json or application/*+json, any parameters."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


# -----------------------------------------------------------------------------
# Running the server


def adapter_map(items: list[str], key: str = "adapters") -> dict[str, str]:
    """`name=path` pairs, or bare paths named after their run folder (runs/prd/final -> prd)."""
    out: dict[str, str] = {}
    for item in items:
        name, path = _given_name(item) or (_folder_name(item), item)
        if name in out:
            raise ConfigError(f"{key}: two models would be served as {name!r}; name them: NAME=PATH")
        out[name] = path
    return out


def named_adapters(items: list[str]) -> set[str]:
    """The adapters given a name of their own (NAME=PATH), not named after their folder."""
    return {given[0] for given in map(_given_name, items) if given}


def _given_name(item: str) -> tuple[str, str] | None:
    name, sep, path = item.partition("=")
    return (name, path) if sep and re.fullmatch(r"[\w.:-]+", name) else None


def _folder_name(item: str) -> str:
    folder = Path(item)
    return folder.parent.name if folder.name == "final" else folder.name


def engine_options(cfg: DeployConfig) -> dict[str, Any]:
    """What the deploy config asks of the engine beyond its models: versions, speculative decoding, stream chunks,
    the admission window, the layers' kernels."""
    options: dict[str, Any] = {"versions": _versions(cfg)} if cfg.model_versions else {}
    if cfg.speculative:
        options["speculative"] = cfg.speculative
    if cfg.stream_interval > 1:
        options["stream_interval"] = cfg.stream_interval
    if cfg.admit_window_ms is not None:
        options["admit_window_ms"] = cfg.admit_window_ms
    if cfg.kernels != "auto":
        options["kernels"] = cfg.kernels
    return options


def in_own_process(cfg: DeployConfig) -> bool:
    """--engine-process, or when unset: the transformers engine on a CUDA GPU, where a decode step's GPU work is short
    enough that the batching loop's Python and the event loop's per-token work, sharing one interpreter, were what
    limited deploy (docs/benchmarks.md). On a CPU the model's own work dominates and a second process only costs
    start-up time and memory."""
    if cfg.engine_process is not None:
        return cfg.engine_process
    from tunesmith.models.load import pick_device

    return cfg.backend == "transformers" and pick_device(cfg.device) == "cuda"


def _versions(cfg: DeployConfig) -> dict[str, tuple[str, str | None]]:
    """--model-versions as the engine loads them: MODEL:VERSION -> (run folder, base), checked before any weights."""
    from tunesmith.config.serving import load_model_config
    from tunesmith.models.runs import read_run_output

    models = load_model_config(cfg.model_versions)
    clash = sorted(set(models) & set(adapter_map(cfg.adapters)))
    if clash:
        raise ConfigError(f"{cfg.model_versions}: {', '.join(clash)} also names an adapter; name them apart")
    out = {}
    for name, m in models.items():
        for version, folder in m.versions.items():
            try:  # a missing folder is named now, not after the first models loaded
                read_run_output(folder)
            except TunesmithError as err:
                raise ConfigError(f"{cfg.model_versions}: {name}.versions.{version}: {err}") from None
            out[f"{name}:{version}"] = (folder, m.base)
    return out


def server_stack() -> str:
    """The event loop and HTTP parser answering (called on the server's loop). uvicorn takes uvloop and httptools when
    they are installed (the serve extra pins them) and asyncio and h11 otherwise: every streamed token crosses them
    once per stream, and at 64 streams the pure-Python pair cost ~3-4 % of deploy's throughput and a fifth of its
    time to first token (docs/benchmarks.md)."""
    import asyncio
    import importlib.util

    loop = "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
    parser = "httptools" if importlib.util.find_spec("httptools") else "h11"
    hint = "" if (loop, parser) == ("uvloop", "httptools") else " (pip install uvloop httptools for the faster pair)"
    return f"  event loop: {loop}, HTTP parser: {parser}{hint}"


def where_the_engine_runs(engine: Engine) -> str:
    from tunesmith.infer.engine_process import EngineProcess

    if isinstance(engine, EngineProcess):
        return f"  engine: its own process (pid {engine.process.pid}), beside the HTTP server's"
    return "  engine: the HTTP server's process"


def banner(cfg: DeployConfig, names: list[str], encoders: dict[str, str] | None = None,
           vision: list[str] | None = None) -> str:
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
    url = f"http://{host}:{cfg.port}/v1"
    key = '"<your --api-key>"' if cfg.api_key else '"none"'
    encoders = encoders or {}
    lines = [f"tunesmith deploy: serving at {url} (listening on {cfg.host}:{cfg.port})"]
    if names:
        lines.append(f"  models: {', '.join(names)} (the first is the default)")
    if cfg.speculative and names:
        how = ""
        if cfg.backend == "transformers":
            how = ("; text requests are answered one at a time (assisted generate(), no continuous batching)"
                   if cfg.speculative.startswith("draft=") else "; greedy requests verify proposals inside the batch")
        lines.append(f"  speculative decoding: {cfg.speculative}{how}")
    if encoders:
        lines.append("  encoders: " + ", ".join(f"{n} ({task})" for n, task in encoders.items())
                     + "; /v1/embeddings, /v1/rerank, /v1/score, /v1/classify")
    if vision:  # where image_url parts may come from (serve/images.py)
        local = f"files under {cfg.image_root}" if cfg.image_root else "no local files (--image-root)"
        remote = (("http(s) URLs from public hosts" + (f" and {', '.join(cfg.remote_image_hosts)}"
                                                       if cfg.remote_image_hosts else ""))
                  if cfg.allow_remote_images else "no URLs (--allow-remote-images)")
        lines.append(f"  images ({', '.join(vision)}): data: URIs, {local}, {remote}; up to {cfg.image_max_bytes:,} "
                     "bytes each")
    lines += ["  call it with the openai client:", "", "    from openai import OpenAI",
              f"    client = OpenAI(base_url=\"{url}\", api_key={key})"]
    if names:
        lines += [(f"    reply = client.chat.completions.create(model=\"{names[0]}\", "
                   "messages=[{\"role\": \"user\", \"content\": \"Hello!\"}])"),
                  "    print(reply.choices[0].message.content)"]
    embedders = [n for n, task in encoders.items() if task == "embedding"]
    if embedders:
        lines.append(f"    vectors = client.embeddings.create(model=\"{embedders[0]}\", input=[\"Hello!\"])")
    return "\n".join(lines + [""])


def run(cfg: DeployConfig) -> None:
    """Load the engine, serve until SIGTERM or Ctrl-C, drain (running requests finish, new ones get 503), then
    close the engine."""
    with listen_socket(cfg.host, cfg.port) as listening:  # a port in use is named before any weights are read
        serve(cfg, listening)


def serve(cfg: DeployConfig, listening: socket.socket) -> None:
    """run() on a bound socket."""
    import uvicorn

    from tunesmith.infer import load_engine
    from tunesmith.infer.attention import kv_heads_in_sdpa
    from tunesmith.infer.engine_process import start_engine_process

    class DrainingServer(uvicorn.Server):
        """uvicorn stops listening at the first SIGTERM, so a load balancer's next connection is refused at TCP.
        Here the first signal starts the drain instead; uvicorn's shutdown follows once it is done. A second
        signal is uvicorn's own: stop now (Ctrl-C twice)."""

        def handle_exit(self, sig: int, frame) -> None:
            if drain.draining:
                super().handle_exit(sig, frame)
            else:
                drain.begin()

        async def on_tick(self, counter: int) -> bool:
            if drain.done():
                self.should_exit = True
            return await super().on_tick(counter)

    if cfg.guardrails:  # a policy that does not load is named before any weights are read
        from prometheus_client import CollectorRegistry

        from tunesmith.serve.guardrails import Guards

        Guards.build(cfg.guardrails, CollectorRegistry())
    if cfg.keys:  # and a keys file that does not load
        from tunesmith.config.serving import load_keys

        load_keys(cfg.keys)
    refuse_hidden_adapter(cfg.model, adapter_map(cfg.adapters))  # before any weights load, in whichever process
    encoders = None
    if cfg.encoders:  # embedding, reranker and classifier models (infer/encoders.py), loaded before the chat engine
        from tunesmith.infer.encoders import load_encoders

        named = adapter_map(cfg.encoders, "encoders")
        clash = sorted(set(named) & set(adapter_map(cfg.adapters)))  # checked before loading anything (and the base
        if clash:                                                   # model's name by Serving, once it is known)
            raise ConfigError(f"encoders: {', '.join(clash)} also names an adapter; name them apart (NAME=PATH)")
        encoders = load_encoders(named, cfg.device, cfg.dtype)
    if encoders and cfg.model is None and not cfg.adapters:
        from tunesmith.infer.encoders import NoChatEngine

        engine = NoChatEngine()  # encoders only: no chat model is loaded
    else:
        load = start_engine_process if in_own_process(cfg) else load_engine
        engine = load(cfg.backend, cfg.model, adapter_map(cfg.adapters) or None, cfg.device, cfg.dtype, cfg.system,
                      chat_template_kwargs=cfg.chat_template_kwargs, **engine_options(cfg))
    app = build_app(engine, cfg, warmup=True, encoders=encoders)
    drain = app.state.drain
    server = DrainingServer(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="info",
                                           timeout_graceful_shutdown=5))
    # uvicorn re-raises a signal it handled to the handler it found installed once it has shut down; with the
    # default one the process would die by the signal after a clean shutdown. This one lets run() return: exit 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    with kv_heads_in_sdpa(getattr(engine, "device", None)):
        server.run(sockets=[listening])


def listen_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before the models load (uvicorn listens on it), as uvicorn would bind it: a port
    another server holds is refused at once, not after the weights loaded and the banner said "serving"."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise ConfigError(f"port: cannot listen on {host}:{port} ({err.strerror or err}); another server may hold it: "
                          "stop it, or pick another --port") from None
    sock.set_inheritable(True)
    return sock
