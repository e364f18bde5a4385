"""`tunesmith deploy`: the FastAPI app around chat.py and completion.py, and uvicorn to run it.

    tunesmith deploy --adapters prd=runs/prd/final dao=runs/dao/final --api-key KEY --port 8000
    app = build_app(engine, DeployConfig())        # for tests and for mounting in another ASGI server

Here: the API key check, the body size limit, request metrics (one Gate middleware, pure ASGI so streams pass
through untouched), every error as OpenAI's JSON, /metrics, and the server's life: warm up, print how to call
it, stop accepting on SIGTERM, let running requests finish (up to GRACEFUL_SHUTDOWN_S), close the engine, exit 0.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import signal
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from tunesmith.config import DeployConfig
from tunesmith.errors import ConfigError
from tunesmith.infer.types import Engine, EngineError, GenerationRequest, SamplingParams, UnknownModelError
from tunesmith.serve.routes import router
from tunesmith.serve.errors import APIError, error_body
from tunesmith.serve.metrics import Metrics
from tunesmith.serve.serving import Serving

log = logging.getLogger("tunesmith")
GRACEFUL_SHUTDOWN_S = 60  # running requests get this long to finish after SIGTERM; then they are cancelled
ENDPOINTS = {"/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions"}


def build_app(engine: Engine, cfg: DeployConfig, warmup: bool = False) -> FastAPI:
    """The app serving `engine`; it closes the engine when it shuts down. warmup=True generates one token with the
    default model before accepting requests: a backend's first generation can take seconds (the transformers one
    starts its batching loop and KV cache). Other models start on their first request, so adapters nobody asks
    for cost no cache memory."""
    metrics = Metrics()
    serving = Serving(engine, cfg, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            if warmup:
                log.info("warming up %s", engine.model_names()[0])
                await engine.generate(GenerationRequest(prompt="Hello", params=SamplingParams(max_tokens=1)))
            print(banner(cfg, list(serving.names)), flush=True)
            yield
        finally:
            log.info("closing the engine")
            await engine.close()

    app = FastAPI(title="tunesmith", summary="OpenAI-compatible API over tunesmith models and adapters",
                  lifespan=lifespan)
    app.state.serving = serving
    app.include_router(router)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    _add_error_handlers(app)
    app.add_middleware(Gate, metrics=metrics, api_key=cfg.api_key, max_body_bytes=cfg.max_body_bytes)
    return app


# -----------------------------------------------------------------------------
# Gate: metrics, API key, body size


class Gate:
    """Counts and times every request, checks `Authorization: Bearer KEY` on /v1 routes (health and metrics stay
    open, for probes and scrapers), and answers 413 to bodies over max_body_bytes, by their Content-Length or,
    without one, as they arrive."""

    def __init__(self, app, metrics: Metrics, api_key: str | None, max_body_bytes: int):
        self.app, self.metrics, self.api_key, self.max_body_bytes = app, metrics, api_key, max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status, started = 500, time.perf_counter()

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send_status)
            else:
                await self.app(scope, self._limited(receive), send_status)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)

    def _refusal(self, scope) -> JSONResponse | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key is not None and scope["path"].startswith("/v1"):
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not given.strip():
                return _error(401, "missing API key: send the header `Authorization: Bearer KEY` (the OpenAI "
                              "client does this with api_key=KEY)", code="invalid_api_key",
                              headers={"WWW-Authenticate": "Bearer"})
            if not hmac.compare_digest(given.strip().encode(), self.api_key.encode()):
                return _error(401, "incorrect API key provided", code="invalid_api_key",
                              headers={"WWW-Authenticate": "Bearer"})
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
        message, param = validation_message(err.errors())
        return _error(400, message, param=param)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        if err.status_code == 404:
            return _error(404, f"no route {request.method} {request.url.path}; this server answers /v1/models, "
                          "/v1/chat/completions, /v1/completions, /health and /metrics", code="not_found")
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


# pydantic names the member of a union that failed (`str`, `list[str]`, `TextPart`): not part of the parameter's path
UNION_TAG = re.compile(r"^(str|int|float|bool|list|dict|none|function-.*|.*\[.*\]|[A-Z]\w*)$")


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """pydantic's report as one OpenAI-style line, and the parameter it names first."""
    problems: dict[str | None, list[str]] = {}
    given: dict[str | None, str] = {}
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p != "body" and not UNION_TAG.match(str(p))]
        param = re.sub(r"\.(\d+)", r"[\1]", ".".join(loc)) or None
        if e["type"] == "json_invalid":
            problems.setdefault(None, []).append(
                f"the body is not valid JSON ({e.get('ctx', {}).get('error', 'decode error')} at position "
                f"{loc[0] if loc else '?'})")
            continue
        if e["type"] == "extra_forbidden":
            msg = f"Unrecognized request argument supplied: {param}"
        elif e["type"] == "missing":
            msg = f"{param}: required" if param else "the request needs a JSON object as its body"
        else:
            msg = e["msg"] if param else "the body must be a JSON object"
            value = e.get("input")
            if param and isinstance(value, (str, int, float, bool, type(None))):
                given[param] = f" (got {json.dumps(value)[:80]})"
        problems.setdefault(param, []).append(msg)
    lines = []
    for param, msgs in problems.items():
        unique = list(dict.fromkeys(msgs))
        if param is None or unique[0].startswith(("Unrecognized", f"{param}: required")):
            lines += unique
        else:  # several messages for one parameter: the forms of a union it matched none of
            lines.append(f"{param}: {' or '.join(unique)}{given.get(param, '')}")
    return "; ".join(lines), next(iter(problems))


# -----------------------------------------------------------------------------
# Running the server


def adapter_map(items: list[str]) -> dict[str, str]:
    """`name=path` pairs, or bare paths named after their run folder (runs/prd/final -> prd)."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not re.fullmatch(r"[\w.:-]+", name):
            folder = Path(item)
            name, path = (folder.parent.name if folder.name == "final" else folder.name), item
        if name in out:
            raise ConfigError(f"adapters: two adapters would be served as {name!r}; name them: NAME=PATH")
        out[name] = path
    return out


def banner(cfg: DeployConfig, names: list[str]) -> str:
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::", "") else cfg.host
    url = f"http://{host}:{cfg.port}/v1"
    key = '"<your --api-key>"' if cfg.api_key else '"none"'
    return "\n".join([
        f"tunesmith deploy: serving at {url} (listening on {cfg.host}:{cfg.port})",
        f"  models: {', '.join(names)} (the first is the default)",
        "  call it with the openai client:",
        "",
        "    from openai import OpenAI",
        f"    client = OpenAI(base_url=\"{url}\", api_key={key})",
        f"    reply = client.chat.completions.create(model=\"{names[0]}\", "
        "messages=[{\"role\": \"user\", \"content\": \"Hello!\"}])",
        "    print(reply.choices[0].message.content)",
        "",
    ])


def run(cfg: DeployConfig) -> None:
    """Load the engine, serve until SIGTERM or Ctrl-C, then finish running requests and close the engine."""
    import uvicorn

    from tunesmith.infer import load_engine

    engine = load_engine(cfg.backend, cfg.model, adapter_map(cfg.adapters) or None, cfg.device, cfg.dtype, cfg.system)
    app = build_app(engine, cfg, warmup=True)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="info",
                                           timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S))
    # uvicorn handles SIGTERM itself (graceful shutdown), then re-raises it to the handler it found installed; with
    # the default one the process would die by the signal after a clean shutdown. This one lets run() return: exit 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run()
