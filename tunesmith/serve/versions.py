"""Served models with versions: a traffic split between them (gray release), sticky per user, changed while serving.

    versions = Versions(load_model_config("serving.yaml"), metrics.registry)    # deploy --model-config serving.yaml
    version = versions.pick("prd", user="u-42", headers={})                     # "v2"
    versions.set_traffic("prd", {"v1": 50, "v2": 50})
    versions.rollback("prd")                                                     # 100 % to the version before

The engine serves each version as MODEL:VERSION (adapters over one shared base: infer/transformers_engine.py), and a
request may name one directly (`prd:v1`). A request for `prd` gets a version by the split:
- Sticky: the request's key (OpenAI's `user` field, or a header with sticky_by: header:NAME) hashes to a point in
  [0, 100); the versions own consecutive ranges of that line in their listed order, each as wide as its share. A key
  sees one version while the split stands, and a new split moves only the keys whose point changes owner (v1 90 -> 80
  moves the keys in [80, 90) to v2). A request without a key draws its point at random.
- Stable version: the one the split was about before any canary: at start the largest share (the first listed on a
  tie); a split that gives one version 100 % makes it the stable one (a promotion) and remembers the one before.
- Rollback: when other versions have traffic, all of it goes back to the stable version; when the stable version
  has it all already (just promoted), to the stable version before it. A change of split, never a reload.

All changes happen on the event loop (the admin routes), so a request sees one split from start to end; the version
it was given stays served until it finishes (admin.py unloads a version only when its last request has ended).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge

from tunesmith.config.serving import VersionedModelCfg, check_traffic


class VersionError(ValueError):
    """A change the model's versions do not allow (admin.py answers 400 or 409 with the message)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class VersionedModel:
    name: str
    paths: dict[str, str]  # version -> run folder, in the order of the split's line
    traffic: dict[str, float]  # version -> percent, summing to 100
    sticky_by: str | None = "user"  # user | header:NAME | None
    base: str | None = None  # the adapters' base (None: each run's recorded base)
    stable: str = ""
    history: list[str] = field(default_factory=list)  # earlier stable versions, the last one first to come back

    def __post_init__(self) -> None:
        if not self.stable:
            self.stable = max(self.traffic, key=lambda v: (self.traffic[v], -list(self.traffic).index(v)))

    def engine_name(self, version: str) -> str:
        return f"{self.name}:{version}"

    def state(self) -> dict:
        return {"versions": {v: {"path": p, "traffic": self.traffic[v]} for v, p in self.paths.items()},
                "stable": self.stable, "rollback_to": self.rollback_target(), "sticky_by": self.sticky_by or "none"}

    def rollback_target(self) -> str | None:
        others = any(share > 0 for v, share in self.traffic.items() if v != self.stable)
        if others:
            return self.stable
        return next((v for v in reversed(self.history) if v in self.paths), None)


class Versions:
    def __init__(self, models: dict[str, VersionedModelCfg], registry) -> None:
        self.models = {name: VersionedModel(name, dict(m.versions), dict(m.traffic or {}), m.sticky_by, m.base)
                       for name, m in models.items()}
        self.requests = Counter("tunesmith_version_requests", "Requests routed to each version of a served model.",
                                ["model", "version"], registry=registry)
        self.share = Gauge("tunesmith_version_traffic_percent", "The traffic split: percent per version.",
                           ["model", "version"], registry=registry)
        self.rollbacks = Counter("tunesmith_version_rollbacks", "Rollbacks per model.", ["model"], registry=registry)
        for m in self.models.values():
            self._publish(m)

    def engine_names(self) -> dict[str, tuple[str, str | None]]:
        """Every version as the engine serves it: MODEL:VERSION -> (run folder, base)."""
        return {m.engine_name(v): (path, m.base) for m in self.models.values() for v, path in m.paths.items()}

    def split(self, name: str) -> tuple[str, str] | None:
        """("prd", "v1") for a request naming `prd:v1` when that version is served, else None."""
        model, sep, version = name.partition(":")
        if sep and model in self.models and version in self.models[model].paths:
            return model, version
        return None

    # -------------------------------------------------------------------------
    # Routing

    def pick(self, name: str, user: str | None, headers: dict[str, str], count: bool = True) -> str:
        """The version a request gets; counted in /metrics unless `count` is off (a request that generates nothing,
        such as /v1/messages/count_tokens)."""
        m = self.models[name]
        key = None
        if m.sticky_by == "user":
            key = user
        elif m.sticky_by is not None:
            key = headers.get(m.sticky_by.removeprefix("header:"))
        point = _point(name, key) if key else random.random() * 100
        live = [(v, share) for v, share in m.traffic.items() if share > 0]
        edge = 0.0
        for version, share in live:
            edge += share
            if point < edge:
                return self.count(name, version) if count else version
        version = live[-1][0]  # point at the top edge, or rounding of the shares
        return self.count(name, version) if count else version

    def count(self, model: str, version: str) -> str:
        self.requests.labels(model, version).inc()
        return version

    # -------------------------------------------------------------------------
    # Changes (admin.py)

    def set_traffic(self, name: str, traffic: dict[str, float]) -> VersionedModel:
        m = self._model(name)
        try:
            split = check_traffic(traffic, list(m.paths))
        except ValueError as err:
            raise VersionError(str(err)) from None
        whole = next((v for v, share in split.items() if share == 100), None)
        if whole is not None and whole != m.stable:  # a promotion: remember the version it replaces
            m.history.append(m.stable)
            m.stable = whole
        m.traffic = split
        self._publish(m)
        return m

    def rollback(self, name: str, to: str | None = None) -> VersionedModel:
        m = self._model(name)
        if to is not None and to not in m.paths:
            raise VersionError(f"{name} has no version {to!r}; its versions: {', '.join(m.paths)}", 404)
        target = to or m.rollback_target()
        if target is None:
            raise VersionError(f"{name}: nothing to roll back to: {m.stable} has all the traffic and no earlier "
                               "version is served", 409)
        # back past a promotion (or to a named version): the target is the stable one again, the one it replaces
        # is not remembered, so a second rollback goes further back instead of forth
        m.history = [v for v in m.history if v != target]
        m.stable = target
        m.traffic = {v: (100.0 if v == target else 0.0) for v in m.paths}
        self.rollbacks.labels(name).inc()
        self._publish(m)
        return m

    def add(self, name: str, version: str, path: str, base: str | None = None,
            traffic: dict[str, float] | None = None) -> VersionedModel:
        """Register a version the engine now serves. A new model starts with all traffic on it; a new version of an
        existing one with none, unless `traffic` says otherwise."""
        if name not in self.models:
            self.models[name] = VersionedModel(name, {version: path}, {version: 100.0}, "user", base)
            if traffic is not None:
                try:
                    self.set_traffic(name, traffic)
                except VersionError:
                    del self.models[name]
                    raise
            self._publish(self.models[name])
            return self.models[name]
        m = self.models[name]
        if version in m.paths:
            raise VersionError(f"{name} has a version {version} already ({m.paths[version]}); unload it first or "
                               "pick another name", 409)
        m.paths[version] = path
        m.traffic[version] = 0.0
        if traffic is not None:
            try:
                self.set_traffic(name, traffic)
            except VersionError:
                del m.paths[version], m.traffic[version]
                raise
        self._publish(m)
        return m

    def check_removable(self, name: str, version: str) -> VersionedModel:
        m = self._model(name)
        if version not in m.paths:
            raise VersionError(f"{name} has no version {version!r}; its versions: {', '.join(m.paths)}", 404)
        if m.traffic[version] > 0:
            raise VersionError(f"{name}:{version} still gets {m.traffic[version]:g} % of the traffic; move it "
                               "(PUT /admin/models/{model}/traffic) or roll back first", 409)
        if len(m.paths) == 1:
            raise VersionError(f"{version} is the only version of {name}; a model keeps at least one", 409)
        return m

    def remove(self, name: str, version: str) -> VersionedModel:
        m = self.check_removable(name, version)
        del m.paths[version], m.traffic[version]
        m.history = [v for v in m.history if v != version]
        if m.stable == version:
            m.stable = max(m.traffic, key=lambda v: m.traffic[v])
        self.share.remove(name, version)
        self._publish(m)
        return m

    def _model(self, name: str) -> VersionedModel:
        if name not in self.models:
            raise VersionError(f"no model {name!r} with versions here; models with versions: "
                               f"{', '.join(self.models) or 'none'}", 404)
        return self.models[name]

    def _publish(self, m: VersionedModel) -> None:
        for version, share in m.traffic.items():
            self.share.labels(m.name, version).set(share)


def _point(model: str, key: str) -> float:
    """Where a sticky key sits on [0, 100): the same on every replica and after every restart."""
    digest = hashlib.sha256(f"{model}\0{key}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100
