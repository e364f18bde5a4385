"""Who may call: --api-key (one key, every model), --keys keys.yaml (scoped keys: models, requests and tokens per
minute, expiry; config/serving.py) and --admin-key (the admin API only).

    ring = KeyRing.build(cfg, metrics)              # None when the server takes no key at all
    caller, refusal = ring.authenticate("/v1/chat/completions", headers)
    check_model("prd")                              # APIError 403 when the current request's key may not call prd

Keys arrive as `Authorization: Bearer KEY` (OpenAI's clients) or `x-api-key: KEY` (Anthropic's). A key is hashed
(SHA-256) and the digest compared with every known digest in constant time (hmac.compare_digest, no early exit), so
neither timing nor the file tells the key; logs and /metrics name keys by their name in keys.yaml, never the key.

Answers: 401 for a missing, unknown or expired key; 403 for a model outside the key's scope, a user key on /admin
or the admin key on the API (it reads /openapi.json and /docs, which document /admin); 429 with Retry-After once a
key has used its requests or tokens of the last 60 s. Tokens are charged when an answer ends (prompt + completion), so a request admitted under the limit finishes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import math
import time
from collections import deque
from dataclasses import dataclass, field

from prometheus_client import Counter

from tunesmith.config.serving import KeyEntry, load_keys
from tunesmith.serve.context import current
from tunesmith.serve.errors import APIError

WINDOW_S = 60.0
ADMIN_PREFIX = "/admin"
DOC_PATHS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}  # the admin key reads them too


@dataclass
class Caller:
    """One key: its name, scope, limits and the last minute of use."""

    name: str
    models: frozenset[str] | None = None  # None: every model
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    expires: dt.datetime | None = None
    admin: bool = False
    ring: KeyRing | None = None
    requests: deque = field(default_factory=deque)  # times of admitted requests
    tokens: deque = field(default_factory=deque)  # (time, tokens) of answered requests

    def may_call(self, model: str) -> bool:
        return self.models is None or model.split(":", 1)[0] in self.models

    def admit(self, now: float) -> APIError | None:
        """Count one request against the limits, or say when to retry."""
        while self.requests and self.requests[0] <= now - WINDOW_S:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= now - WINDOW_S:
            self.tokens.popleft()
        rpm, tpm = self.requests_per_minute, self.tokens_per_minute
        if rpm is not None and len(self.requests) >= rpm:
            return self._limited("requests", rpm, self.requests[len(self.requests) - rpm] + WINDOW_S - now)
        if tpm is not None:
            used = sum(n for _, n in self.tokens)
            if used >= tpm:
                # wait until enough of the window's tokens age out to bring it under the limit
                for t, n in self.tokens:
                    used -= n
                    if used < tpm:
                        return self._limited("tokens", tpm, t + WINDOW_S - now)
        self.requests.append(now)
        return None

    def charge(self, tokens: int) -> None:
        if tokens > 0:
            self.tokens.append((time.monotonic(), tokens))

    def _limited(self, what: str, limit: int, wait: float) -> APIError:
        if self.ring is not None:
            self.ring.limited.labels(self.name, what).inc()
        seconds = max(1, math.ceil(wait))
        return APIError(429, f"Rate limit reached for key {self.name}: {limit} {what} per minute. Retry after "
                        f"{seconds} s.", type="rate_limit_exceeded", code="rate_limit_exceeded",
                        headers={"Retry-After": str(seconds)})


class KeyRing:
    def __init__(self, entries: dict[str, KeyEntry], api_key: str | None, admin_key: str | None, registry):
        self.callers: list[tuple[bytes, Caller]] = []
        for name, e in entries.items():
            models = None if e.models == "*" else frozenset(e.models)
            self.callers.append((e.digest(), Caller(name, models, e.requests_per_minute, e.tokens_per_minute,
                                                    e.expires_at(), ring=self)))
        if api_key is not None:
            self.callers.append((_digest(api_key), Caller("api-key", ring=self)))
        if admin_key is not None:
            self.callers.append((_digest(admin_key), Caller("admin", admin=True, ring=self)))
        self.user_keys = any(not c.admin for _, c in self.callers)
        self.requests = Counter("tunesmith_key_requests", "Requests per API key name and status code.",
                                ["key", "status"], registry=registry)
        self.used_tokens = Counter("tunesmith_key_tokens", "Prompt and completion tokens answered per API key name.",
                                   ["key"], registry=registry)
        self.limited = Counter("tunesmith_key_rate_limited", "Requests refused 429 per API key name and limit.",
                               ["key", "limit"], registry=registry)

    @classmethod
    def build(cls, cfg, registry) -> KeyRing | None:
        entries = load_keys(cfg.keys) if getattr(cfg, "keys", None) else {}
        admin_key = getattr(cfg, "admin_key", None)
        if not entries and cfg.api_key is None and admin_key is None:
            return None
        return cls(entries, cfg.api_key, admin_key, registry)

    def find(self, given: str) -> Caller | None:
        digest, found = _digest(given), None
        for known, caller in self.callers:  # every one, so the time taken says nothing about which matched
            if hmac.compare_digest(digest, known):
                found = caller
        return found

    def authenticate(self, path: str, headers: dict[str, str]) -> tuple[Caller | None, APIError | None]:
        """The caller of a request to `path`, or the refusal. Paths outside /admin are open when no user key is
        configured (only --admin-key)."""
        admin_path = path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")
        if not admin_path and not self.user_keys:
            return None, None
        given = _given_key(headers)
        if given is None:
            return None, _unauthorized("missing API key: send the header `Authorization: Bearer KEY` (the OpenAI "
                                       "client does this with api_key=KEY)")
        caller = self.find(given)
        if caller is None:
            return None, _unauthorized("incorrect API key provided")
        if admin_path != caller.admin and not (caller.admin and path in DOC_PATHS):
            where = "the admin API (/admin)" if admin_path else "the model API; it opens /admin only"
            what = "this key is not the admin key" if admin_path else "the admin key is not a user key"
            return None, APIError(403, f"{what}: it cannot call {where}", type="permission_error",
                                  code="permission_denied")
        if caller.expires is not None and dt.datetime.now(dt.UTC) >= caller.expires:
            return None, _unauthorized(f"API key {caller.name} expired on {caller.expires.isoformat()}",
                                       code="expired_api_key")
        if not caller.admin:
            refusal = caller.admit(time.monotonic())
            if refusal is not None:
                return caller, refusal
        return caller, None

    def charge(self, caller: Caller, tokens: int) -> None:
        caller.charge(tokens)
        self.used_tokens.labels(caller.name).inc(tokens)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _given_key(headers: dict[str, str]) -> str | None:
    scheme, _, given = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and given.strip():
        return given.strip()
    other = headers.get("x-api-key", "").strip()
    return other or None


def _unauthorized(message: str, code: str = "invalid_api_key") -> APIError:
    return APIError(401, message, code=code, headers={"WWW-Authenticate": "Bearer"})


# -----------------------------------------------------------------------------
# For the layers under the Gate: the current request's key


def current_caller() -> Caller | None:
    ctx = current()
    return ctx.caller if ctx is not None else None


def check_model(model: str) -> None:
    """403 when the current request's key may not call `model` (a model's versions share its scope)."""
    caller = current_caller()
    if caller is not None and not caller.may_call(model):
        allowed = ", ".join(sorted(caller.models or ())) or "none"
        raise APIError(403, f"API key {caller.name} may not call the model `{model}`; it may call: {allowed}",
                       type="permission_error", param="model", code="model_not_allowed")


def visible(model: str) -> bool:
    """Whether /v1/models lists `model` to the current request's key."""
    caller = current_caller()
    return caller is None or caller.may_call(model)


def charge(caller: Caller | None, prompt_tokens: int, completion_tokens: int) -> None:
    if caller is not None and caller.ring is not None:
        caller.ring.charge(caller, prompt_tokens + completion_tokens)
