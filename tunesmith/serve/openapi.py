"""/openapi.json as this server answers: every status it sends, the SSE body of a stream, its own limits and key.

    app.openapi = lambda: document(app, cfg)       # app.py

Routes declare their answers with `answers(...)`; document() adds what depends on the deploy config: the largest
max_tokens, and with --api-key the bearer scheme and 401 on every operation that needs it. FastAPI's own 422 goes:
this server answers invalid bodies 400, in OpenAI's error shape. What the request schemas accept is what is served
(protocol.py's `documented`), so a client, or a fuzzer (tests/serve/test_openapi.py runs schemathesis), finds no
request the document allows and the server refuses, and no answer it does not list.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from pydantic import BaseModel

from tunesmith.config import DeployConfig
from tunesmith.serve.protocol import ErrorResponse

OPEN_PATHS = {"/health"}  # never behind the key: probes must reach them (and /metrics unless --metrics-require-key)
WHY = {
    400: "The request is invalid or asks for what this server does not do; `error.param` names the field.",
    401: "Missing, wrong or expired API key (`Authorization: Bearer KEY`).",
    403: "The key may not call this model (its scope in --keys), or it is the wrong kind of key for the route "
         "(the admin key opens /admin only).",
    404: "No such model here (`error.code` model_not_found).",
    409: "The change conflicts with what is served (a version that still has traffic, a name loaded already).",
    413: "The body is larger than --max-body-bytes.",
    429: "All --max-concurrent slots are taken, or the key used its requests or tokens per minute; retry after "
         "Retry-After seconds.",
    500: "Generation failed inside the engine; the server keeps serving.",
    503: "The server is shutting down (draining) or its engine cannot generate; retry elsewhere or after "
         "Retry-After seconds.",
}
# the encoder routes: their request schema and the tasks of the models that answer them (serve/embeddings.py, ...)
ENCODER_ROUTES = {"/v1/embeddings": ("EmbeddingRequest", ("embedding",)), "/v1/rerank": ("RerankRequest", ("reranker",)),
                  "/v1/score": ("ScoreRequest", ("reranker", "embedding")),
                  "/v1/classify": ("ClassificationRequest", ("classification",))}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}}


STREAMED: list[type[BaseModel]] = []  # chunk models that only events name: document() adds them to the components


def answers(*statuses: int, ok: Any = None, stream: type[BaseModel] | None = None) -> dict[int | str, dict[str, Any]]:
    """A route's `responses=`: its 200 (a model, and with `stream` the text/event-stream of those chunks) and its
    errors."""
    out: dict[int | str, dict[str, Any]] = {}
    if ok is not None:
        out[200] = {"model": ok}
    if stream is not None:
        STREAMED.append(stream)
        out[200]["content"] = {"text/event-stream": {"schema": _event(stream.__name__)}}
    for status in statuses:
        out[status] = {"model": ErrorResponse, "description": WHY[status]}
        if status in (429, 503):
            out[status]["headers"] = RETRY_AFTER
    return out


def _event(chunk: str) -> dict[str, Any]:
    """One server-sent event of a stream (OpenAPI 3.1 describes each event of text/event-stream): its data is a
    chunk, the error of a stream that failed after its 200, or the closing [DONE]."""
    json_data = {"type": "string", "contentMediaType": "application/json", "contentSchema": {"anyOf": [
        {"$ref": f"#/components/schemas/{chunk}"}, {"$ref": "#/components/schemas/ErrorResponse"}]}}
    return {"type": "object", "required": ["data"], "description": "`data: {chunk}` events when stream is true, "
            "then `data: [DONE]`.", "properties": {"data": {"anyOf": [{"const": "[DONE]"}, json_data]}}}


def document(app: FastAPI, cfg: DeployConfig) -> dict[str, Any]:
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    schemas = schema.get("components", {}).get("schemas", {})
    for model in STREAMED:
        found = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(found.pop("$defs", {}))
        schemas[model.__name__] = found
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for name in ("ChatCompletionRequest", "CompletionRequest", "MessagesRequest"):
        for field in ("max_tokens", "max_completion_tokens"):
            prop = schemas.get(name, {}).get("properties", {}).get(field)
            if prop is not None:  # --max-tokens-limit (MessagesRequest's is required: no anyOf with null)
                (prop["anyOf"][0] if "anyOf" in prop else prop)["maximum"] = cfg.max_tokens_limit
    _encoder_routes(schema, getattr(app.state, "serving", None))
    _image_parts(schemas, getattr(app.state, "serving", None))
    _tools(schemas, getattr(app.state, "serving", None))
    open_paths = OPEN_PATHS | (set() if cfg.metrics_require_key else {"/metrics"})
    secured = cfg.api_key is not None or cfg.keys is not None  # user keys (--api-key, --keys); /admin: keyed always
    if secured or getattr(cfg, "admin_key", None) is not None:
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            operation["responses"].pop("422", None)
            if (secured or path.startswith("/admin")) and path not in open_paths:
                operation["security"] = [{"bearer": []}]
                error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
                operation["responses"]["401"] = {"description": WHY[401], "content": error}
                if cfg.keys is not None or getattr(cfg, "admin_key", None) is not None:  # keys.py
                    operation["responses"]["403"] = {"description": WHY[403], "content": error}
    _drop_unused(schema)
    app.openapi_schema = schema
    return schema


def _encoder_routes(schema: dict[str, Any], serving: Any) -> None:
    """An encoder route is listed where a model answers it (tunesmith deploy --encoders), its `model` one of those
    models' names (any other is a 400 or 404), and embeddings' `dimensions` at most the largest embedding."""
    from tunesmith.serve.embeddings import dimensions_schema

    encoders = serving.encoders if serving is not None else {}
    schemas = schema.get("components", {}).get("schemas", {})
    for path, (request, tasks) in ENCODER_ROUTES.items():
        names = [n for n, m in encoders.items() if m.task in tasks]
        if not names:
            schema["paths"].pop(path, None)
            continue
        properties = schemas[request]["properties"]
        properties["model"] = {"anyOf": [{"enum": names}, {"type": "null"}], "default": None,
                               "description": "Left out: the first of them."}
        if path == "/v1/embeddings":
            accepted = dimensions_schema(encoders)
            properties["dimensions"] = {"anyOf": [accepted, {"type": "null"}]} if accepted else {"type": "null"}


def _image_parts(schemas: dict[str, Any], serving: Any) -> None:
    """Where a vision-language model is served, a user message's content parts may be image_url parts too
    (serve/images.py reads them; a text model answers them 400)."""
    from tunesmith.serve.protocol import IMAGE_PART, TEXT_PARTS

    engine = getattr(serving, "engine", None)
    if engine is None or not any(engine.accepts_images(name) for name in serving.engine_names):
        return
    content = schemas.get("UserMessage", {}).get("properties", {}).get("content", {})
    for i, option in enumerate(content.get("anyOf", [])):
        if option == TEXT_PARTS:
            content["anyOf"][i] = {"type": "array", "items": {"anyOf": [TEXT_PARTS["items"], IMAGE_PART]}}


def _tools(schemas: dict[str, Any], serving: Any) -> None:
    """Where no served chat model's template renders tools, tools go with tool_choice "none" only; where none renders
    an assistant turn's calls, earlier turns carry no tool_calls (chat.py refuses both by name: the model would never
    see them)."""
    engine = getattr(serving, "engine", None)
    if engine is None or not serving.engine_names:
        return
    templates = [engine.template_for(name) for name in serving.engine_names]
    if any(t is None for t in templates):
        return
    if not any(t.renders_tools for t in templates):
        schemas["ChatCompletionRequest"].setdefault("allOf", []).append({
            "if": {"properties": {"tools": {"type": "array", "minItems": 1}}, "required": ["tools"]},
            "then": {"properties": {"tool_choice": {"const": "none"}}, "required": ["tool_choice"]}})
    turn = schemas.get("AssistantTurn")
    if turn is not None and not any(t.renders_calls for t in templates):
        turn["properties"]["tool_calls"] = {"anyOf": [{"type": "array", "maxItems": 0}, {"type": "null"}]}
        turn.pop("anyOf", None)
        turn["required"] = [*turn.get("required", []), "content"]
        turn["properties"]["content"] = {**turn["properties"]["content"], "not": {"type": "null"}}


def _drop_unused(schema: dict[str, Any]) -> None:
    """Components nothing refers to (the parsed-but-refused forms that `documented` replaced) would only mislead."""
    components = schema.get("components", {}).get("schemas", {})
    used: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/components/schemas/") and (name := ref.rsplit("/", 1)[1]) not in used:
                used.add(name)
                walk(components.get(name))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema["paths"])
    for name in set(components) - used:
        del components[name]
