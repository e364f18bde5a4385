"""The admin API (`tunesmith deploy --admin-key KEY`): change what is served without a restart. Only the admin key
opens it, and it opens nothing else (keys.py); without --admin-key these routes do not exist.

    GET    /admin/models                         what is served: versions, split, stable version, running requests
    POST   /admin/models/{model}/versions        {"version": "v3", "path": "runs/c/final"}: load a version (0 % traffic)
    DELETE /admin/models/{model}/versions/{v}    unload a version that has no traffic left
    PUT    /admin/models/{model}/traffic         {"traffic": {"v1": 50, "v2": 50}}
    POST   /admin/models/{model}/rollback        {} or {"to": "v1"}: 100 % to the version before (versions.py)
    POST   /admin/adapters                       {"name": "dao", "path": "runs/dao/final"}: serve an adapter by name
    DELETE /admin/adapters/{name}

A load reads the adapter (and its base only when no served model holds it yet) in a worker thread while requests go
on. An unload takes the name out of routing at once, waits for the requests running on it to finish, then frees it:
a request ends on the version it started on. A split change or rollback is a change of numbers on the event loop:
nothing is loaded, and it applies from the next request.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import anyio
from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from tunesmith.errors import TunesmithError
from tunesmith.infer.types import EngineError
from tunesmith.serve.errors import APIError
from tunesmith.serve.openapi import answers
from tunesmith.serve.protocol import Strict
from tunesmith.serve.serving import Serving
from tunesmith.serve.versions import VersionError

router = APIRouter(prefix="/admin", tags=["admin"])
NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"  # config/serving.py's NAME, in ASCII: JSON Schema's \w is not Python's
NamePath = Annotated[str, Path(pattern=NAME_PATTERN, max_length=128)]
NameField = Annotated[str, Field(pattern=NAME_PATTERN, max_length=128)]
UNLOAD_POLL_S = 0.05


# -----------------------------------------------------------------------------
# Schemas


class VersionIn(Strict):
    version: NameField
    path: str = Field(..., min_length=1, description="Run folder (runs/NAME/final), adapter or model folder.")
    base: str | None = Field(None, description="The adapter's base (default: the model's, else the run's own).")
    traffic: dict[str, Annotated[float, Field(ge=0, le=100)]] | None = Field(
        None, description="The new split, this version included (default: the split stays, 0 % for it).")


class TrafficIn(Strict):
    traffic: dict[str, Annotated[float, Field(ge=0, le=100)]] = Field(..., description="Percent per version, "
                                                                      "summing to 100; versions left out get 0.")


class RollbackIn(Strict):
    to: NameField | None = Field(None, description="The version to send all traffic to (default: the one before).")


class AdapterIn(Strict):
    name: NameField
    path: str = Field(..., min_length=1, description="Run folder (runs/NAME/final) or adapter folder.")
    base: str | None = Field(None, description="The adapter's base (default: the one its run recorded).")


class VersionState(BaseModel):
    path: str
    traffic: float
    running: int  # requests generating on it now


class ModelState(BaseModel):
    versions: dict[str, VersionState]
    stable: str
    rollback_to: str | None  # where POST .../rollback would send all traffic now
    sticky_by: str


class AdminState(BaseModel):
    models: dict[str, ModelState]
    adapters: list[str]  # served by name, without versions
    weight_loads: int | None  # models read from disk since start (a rollback never adds one); None: unknown


# -----------------------------------------------------------------------------
# Routes


def _serving(request: Request) -> Serving:
    return request.app.state.serving


@router.get("/models", response_model=AdminState, responses=answers(ok=AdminState))
async def state(request: Request) -> AdminState:
    return _state(_serving(request))


@router.post("/models/{model}/versions", response_model=AdminState,
             responses=answers(400, 404, 409, 500, ok=AdminState))
async def load_version(model: NamePath, body: VersionIn, request: Request) -> AdminState:
    serving = _serving(request)
    versions = _versions(serving)
    if model in serving.names:
        raise APIError(409, f"{model} is served without versions (an adapter or the base model); name the versioned "
                       "model differently", param="model", code="conflict")
    current = versions.models.get(model)
    if current is not None and body.version in current.paths:
        raise APIError(409, f"{model} has a version {body.version} already ({current.paths[body.version]}); unload it "
                       "first or pick another name", param="version", code="conflict")
    base = body.base or (current.base if current is not None else None)
    name = f"{model}:{body.version}"
    await _load(serving, name, body.path, base)
    try:
        versions.add(model, body.version, body.path, base, body.traffic)
    except VersionError as err:  # the split was invalid: the version does not stay loaded
        await anyio.to_thread.run_sync(serving.engine.remove_model, name)
        raise _api(err, "traffic") from None
    return _state(serving)


@router.delete("/models/{model}/versions/{version}", response_model=AdminState,
               responses=answers(400, 404, 409, 500, ok=AdminState))
async def unload_version(model: NamePath, version: NamePath, request: Request) -> AdminState:
    serving = _serving(request)
    versions = _versions(serving)
    try:
        m = versions.remove(model, version)
    except VersionError as err:
        raise _api(err, "version") from None
    await _unload(serving, m.engine_name(version))
    return _state(serving)


@router.put("/models/{model}/traffic", response_model=AdminState, responses=answers(400, 404, ok=AdminState))
async def set_traffic(model: NamePath, body: TrafficIn, request: Request) -> AdminState:
    serving = _serving(request)
    try:
        _versions(serving).set_traffic(model, body.traffic)
    except VersionError as err:
        raise _api(err, "traffic") from None
    return _state(serving)


@router.post("/models/{model}/rollback", response_model=AdminState, responses=answers(400, 404, 409, ok=AdminState))
async def rollback(model: NamePath, request: Request, body: RollbackIn | None = None) -> AdminState:
    serving = _serving(request)
    try:
        _versions(serving).rollback(model, body.to if body else None)
    except VersionError as err:
        raise _api(err, "to") from None
    return _state(serving)


@router.post("/adapters", response_model=AdminState, responses=answers(400, 409, 500, ok=AdminState))
async def load_adapter(body: AdapterIn, request: Request) -> AdminState:
    serving = _serving(request)
    taken = set(serving.names) | set(serving.encoders) | set(serving.versions.models if serving.versions else ())
    if body.name in taken:
        raise APIError(409, f"{body.name} is served already; unload it first or pick another name", param="name",
                       code="conflict")
    await _load(serving, body.name, body.path, body.base)
    serving.names[body.name] = body.name
    return _state(serving)


@router.delete("/adapters/{name}", response_model=AdminState, responses=answers(400, 404, 409, 500, ok=AdminState))
async def unload_adapter(name: NamePath, request: Request) -> AdminState:
    serving = _serving(request)
    if name not in serving.names:
        raise APIError(404, f"no adapter {name!r} here; adapters: {', '.join(_adapters(serving)) or 'none'}",
                       param="name", code="model_not_found")
    if name == serving.default or serving.names[name] == serving.engine.model_names()[0]:
        raise APIError(409, f"{name} is the default model; it stays", param="name", code="conflict")
    engine_name = serving.names.pop(name)
    await _unload(serving, engine_name)
    return _state(serving)


# -----------------------------------------------------------------------------
# Loading and unloading


async def _load(serving: Serving, name: str, path: str, base: str | None) -> None:
    if name in serving.loading:
        raise APIError(409, f"{name} is being loaded already", code="conflict")
    serving.loading.add(name)
    try:
        await anyio.to_thread.run_sync(serving.engine.add_model, name, path, base)
    except NotImplementedError as err:
        raise APIError(400, str(err)) from None
    except EngineError as err:
        raise APIError(500, f"loading {path} failed: {err}", type="server_error") from None
    except TunesmithError as err:  # no such folder, no base recorded, ...
        raise APIError(400, f"path: {err}", param="path") from None
    except (OSError, ValueError) as err:  # weights that do not load, an adapter that does not fit its base
        raise APIError(400, f"path: {path} does not load: {type(err).__name__}: {err}", param="path") from None
    finally:
        serving.loading.discard(name)


async def _unload(serving: Serving, name: str) -> None:
    """`name` is out of routing already: wait for its running requests, then free it. Shielded, so a client that
    hangs up does not leave a model loaded that nothing can reach."""

    async def drain_then_free() -> None:
        while serving.slots.by_model.get(name, 0) > 0:
            await asyncio.sleep(UNLOAD_POLL_S)
        await anyio.to_thread.run_sync(serving.engine.remove_model, name)

    await asyncio.shield(asyncio.ensure_future(drain_then_free()))


# -----------------------------------------------------------------------------
# State


def _versions(serving: Serving):
    if serving.versions is None:
        from tunesmith.serve.versions import Versions

        serving.versions = Versions({}, serving.metrics.registry)  # the first versioned model comes by the admin API
    return serving.versions


def _adapters(serving: Serving) -> list[str]:
    return [n for n in serving.names if n != serving.default]


def _state(serving: Serving) -> AdminState:
    models = {}
    for name, m in (serving.versions.models if serving.versions else {}).items():
        s = m.state()
        s["versions"] = {v: {**info, "running": serving.slots.by_model.get(m.engine_name(v), 0)}
                         for v, info in s["versions"].items()}
        models[name] = s
    return AdminState(models=models, adapters=_adapters(serving), weight_loads=getattr(serving.engine, "loads", None))


def _api(err: VersionError, param: str) -> APIError:
    code = {404: "model_not_found", 409: "conflict"}.get(err.status)
    return APIError(err.status, str(err), param=param if err.status == 400 else None, code=code)
