"""The files `tunesmith deploy` reads beside its flags: scoped API keys (--keys), models with versions and a traffic
split (--model-config), and output guardrails per model (--guardrails). Imports no torch.

    keys = load_keys("keys.yaml")              # {name: KeyEntry}
    models = load_model_config("serving.yaml")  # {model: VersionedModelCfg}
    policy = load_guardrails("dao-guard.yaml")  # GuardrailPolicy

keys.yaml:
    keys:
      team-a:                         # the key's name: /metrics and logs show it, never the key itself
        key: sk-team-a-0f3c...        # or sha256: <hex digest of the key>, so the file holds no secret
        models: [prd, dao]            # default: every model
        requests_per_minute: 60
        tokens_per_minute: 20000
        expires: 2027-01-31           # a date (the key works through that day, UTC) or a date-time

serving.yaml:
    prd:
      versions: {v1: runs/a/final, v2: runs/b/final}
      traffic: {v1: 90, v2: 10}       # percent; default: all to the first version
      sticky_by: user                 # user (the request's `user`), header:X-User-Id, or none

guardrails.yaml (one model's policy):
    deny_regex: ["guaranteed (returns|profits?)"]
    deny_keywords: [idiot, scam]
    require_regex: ["0x[0-9a-f]{64}"]
    json_schema: {...}                # or a file next to this one
    classifier: guard.py:tone         # def tone(text: str) -> str | None: the reason to block, or None
    on_violation: refuse              # refuse (200, the refusal, finish_reason content_filter) or error (4xx)
    refusal: "I can't send that answer."
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunesmith.config.load import read_yaml, validate
from tunesmith.errors import ConfigError

NAME = re.compile(r"^[\w.-]+$")  # key, model and version names: no ':' (it joins model:version), no spaces


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -----------------------------------------------------------------------------
# Scoped API keys


class KeyEntry(Strict):
    key: str | None = Field(None, min_length=8, description="The key as clients send it (Bearer KEY).")
    sha256: str | None = Field(None, description="Hex SHA-256 of the key, instead of the key itself.")
    models: list[str] | Literal["*"] = Field("*", description="Models this key may call (a model's versions "
                                              "included); * = every model.")
    requests_per_minute: int | None = Field(None, ge=1, description="Requests in any 60 s; more get 429.")
    tokens_per_minute: int | None = Field(None, ge=1, description="Prompt + completion tokens in any 60 s.")
    expires: dt.datetime | dt.date | None = Field(None, description="Last day (UTC) or moment the key works.")

    @model_validator(mode="after")
    def _one_secret(self) -> KeyEntry:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("key: give exactly one of key and sha256")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", self.sha256):
            raise ValueError("sha256: 64 hex digits (sha256sum of the key)")
        return self

    def digest(self) -> bytes:
        return bytes.fromhex(self.sha256) if self.sha256 else hashlib.sha256(self.key.encode()).digest()

    def expires_at(self) -> dt.datetime | None:
        """The first moment the key no longer works (UTC)."""
        if self.expires is None:
            return None
        if isinstance(self.expires, dt.datetime):
            return self.expires if self.expires.tzinfo else self.expires.replace(tzinfo=dt.UTC)
        return dt.datetime.combine(self.expires + dt.timedelta(days=1), dt.time(), dt.UTC)


class KeysFile(Strict):
    keys: dict[str, KeyEntry] = Field(..., min_length=1)

    @field_validator("keys")
    @classmethod
    def _names(cls, keys: dict[str, KeyEntry]) -> dict[str, KeyEntry]:
        bad = [n for n in keys if not NAME.match(n)]
        if bad:
            raise ValueError(f"names are letters, digits, '_', '.' and '-' (got {bad[0]!r})")
        seen: dict[bytes, str] = {}
        for name, entry in keys.items():
            if entry.digest() in seen:
                raise ValueError(f"{name} and {seen[entry.digest()]} hold the same key; give each its own")
            seen[entry.digest()] = name
        return keys


def load_keys(path: str | Path) -> dict[str, KeyEntry]:
    values, lines = read_yaml(path)
    if values and "keys" not in values and all(isinstance(v, dict) for v in values.values()):  # entries, unnested
        first = next(iter(values))
        raise ConfigError(f"{path}:{lines.get(str(first), 1)}: {first}: the keys go under a top-level `keys:` "
                          "mapping; write `keys:` on a line of its own above them and indent them under it")
    return validate(KeysFile, values, source=str(path), lines=lines).keys


# -----------------------------------------------------------------------------
# Models with versions: --model-config serving.yaml


class VersionedModelCfg(Strict):
    versions: dict[str, str] = Field(..., min_length=1, description="version name -> run folder (runs/x/final), "
                                     "adapter or model folder")
    traffic: dict[str, float] | None = Field(None, description="Percent of requests per version, summing to 100 "
                                             "(default: all to the first version).")
    sticky_by: str | None = Field("user", description="user (OpenAI's `user` field), header:NAME, or none: random "
                                  "per request.")
    base: str | None = Field(None, description="Base model of adapter versions (default: the one each run "
                             "recorded, else deploy's --model).")

    @field_validator("versions")
    @classmethod
    def _version_names(cls, versions: dict[str, str]) -> dict[str, str]:
        bad = [v for v in versions if not NAME.match(str(v))]
        if bad:
            raise ValueError(f"version names are letters, digits, '_', '.' and '-' (got {bad[0]!r})")
        return {str(k): str(v) for k, v in versions.items()}

    @field_validator("sticky_by")
    @classmethod
    def _sticky(cls, value: str | None) -> str | None:
        if value in (None, "none"):
            return None
        if value == "user" or (value.startswith("header:") and re.fullmatch(r"[A-Za-z0-9-]+", value[7:])):
            return value if value == "user" else "header:" + value[7:].lower()
        raise ValueError(f"sticky_by: user, header:NAME (an HTTP header) or none (got {value!r})")

    @model_validator(mode="after")
    def _split(self) -> VersionedModelCfg:
        if self.traffic is None:
            first = next(iter(self.versions))
            self.traffic = {v: (100.0 if v == first else 0.0) for v in self.versions}
            return self
        self.traffic = check_traffic(self.traffic, list(self.versions))
        return self


def check_traffic(traffic: dict[str, float], versions: list[str]) -> dict[str, float]:
    """Percent per version, every version listed (missing = 0), summing to 100. ValueError naming the problem."""
    unknown = [v for v in traffic if v not in versions]
    if unknown:
        raise ValueError(f"traffic: {unknown[0]!r} is not a version of this model ({', '.join(versions)})")
    if any(not isinstance(p, (int, float)) or isinstance(p, bool) or p < 0 for p in traffic.values()):
        raise ValueError("traffic: each share is a percentage >= 0")
    total = sum(traffic.values())
    if abs(total - 100) > 1e-6:
        raise ValueError(f"traffic: the shares add up to {total:g}, not 100")
    return {v: float(traffic.get(v, 0.0)) for v in versions}


def load_model_config(path: str | Path) -> dict[str, VersionedModelCfg]:
    """`serving.yaml`: model name -> its versions and split, each problem as file:line: key: problem."""
    values, lines = read_yaml(path)
    out = {}
    for name, entry in values.items():
        if not NAME.match(str(name)):
            raise ConfigError(f"{path}:{lines.get(str(name), '?')}: {name}: model names are letters, digits, '_', "
                              "'.' and '-'")
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}:{lines.get(str(name), '?')}: {name}: expected a mapping with versions: "
                              "{v1: runs/a/final, ...}")
        sub = {k.split(".", 1)[1]: v for k, v in lines.items() if k.startswith(f"{name}.")}
        try:
            out[str(name)] = validate(VersionedModelCfg, entry, source=str(path), lines=sub)
        except ConfigError as err:
            raise ConfigError(str(err).replace("invalid configuration:", f"invalid model {name}:", 1)) from None
    if not out:
        raise ConfigError(f"{path}: no models; write one as prd: {{versions: {{v1: runs/a/final}}}}")
    return out


# -----------------------------------------------------------------------------
# Guardrails: one policy per model, --guardrails NAME=FILE


class GuardrailPolicy(Strict):
    deny_regex: list[str] = Field(default_factory=list, description="Patterns (Python regex, case-insensitive) the "
                                  "answer must never contain; streamed text is held back only while one may match.")
    deny_keywords: list[str] = Field(default_factory=list, description="Words or phrases never sent (whole words, "
                                     "case-insensitive).")
    require_regex: list[str] = Field(default_factory=list, description="Patterns each answer must contain (checked "
                                     "on the whole answer: a stream is held until it ends).")
    json_schema: dict[str, Any] | str | None = Field(None, description="The answer must be JSON valid against this "
                                                     "schema (inline, or a file next to the policy).")
    classifier: str | None = Field(None, description="FILE.py:FUNCTION or module:function; called with the whole "
                                   "answer, returns the reason to block it or None.")
    on_violation: Literal["refuse", "error"] = Field("refuse", description="refuse: answer with `refusal` and "
                                                     "finish_reason content_filter; error: HTTP `status`.")
    refusal: str = Field("I can't help with that request.", description="The text sent instead of a blocked answer.")
    status: int = Field(422, ge=400, le=499, description="The status of on_violation: error.")
    folder: str = Field("", exclude=True, description="Where the policy file is (set by load_guardrails).")

    @field_validator("deny_regex", "require_regex")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        import regex

        for p in patterns:
            try:
                regex.compile(p)
            except regex.error as err:
                raise ValueError(f"{p!r} is not a valid regular expression: {err}") from None
        return patterns

    @field_validator("classifier")
    @classmethod
    def _hook(cls, value: str | None) -> str | None:
        if value is not None and (":" not in value or not value.rsplit(":", 1)[1].isidentifier()):
            raise ValueError(f"classifier: FILE.py:FUNCTION or module:function (got {value!r})")
        return value

    def schema(self) -> dict[str, Any] | None:
        if not isinstance(self.json_schema, str):
            return self.json_schema
        path = Path(self.folder) / self.json_schema
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"json_schema: cannot read {path}: {err}") from None


def load_guardrails(path: str | Path) -> GuardrailPolicy:
    values, lines = read_yaml(path)
    policy = validate(GuardrailPolicy, values, source=str(path), lines=lines)
    policy.folder = str(Path(path).resolve().parent)
    policy.schema()  # a schema file that does not read fails now, not at the first answer
    return policy
