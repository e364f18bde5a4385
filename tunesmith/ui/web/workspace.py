"""Users and their workspaces. With `--auth users.yaml` every user has a folder of their own (runs, uploads, exports,
jobs) that no other user can list, read or download; every path that comes from the browser is a relative path inside
it (no `..`, no absolute path), and jobs run with it as their working folder. Without --auth there is one local user
and the server listens on 127.0.0.1 only.

users.yaml:
    users:
      alice: "sha256:<hex of the password>"     # or the password itself, for a private machine
      bob: "s3cret"
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from tunesmith.config.local_paths import LABEL
from tunesmith.data.readers import SUFFIXES
from tunesmith.errors import ConfigError

LOCAL = "local"
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# The text fields of the forms that never name a file (dotted keys, as forms.py names the inputs). Every other text of
# a form is checked as a path: continue_from, resume, deepspeed, rewards.plugin, grpo.env, export's calib_dataset,
# deploy's keys and guardrails... A field marked local_path in the config (config/local_paths.py) must not be here.
NOT_PATHS = frozenset({
    # free text, where a leading "/" or a ".." is ordinary: a system prompt "/no_think", a regex, a stop string
    "system", "rewards.format_pattern", "generation.stop", "eval_gate", "model_name", "model_author",
    # names the code looks up, never on disk: modules, losses, schedulers, metrics, labels, encodings
    "lora.targets", "galore.targets", "freeze.modules", "longlora.trainable", "reft.positions", "reft.layers",
    "classification.labels", "embedding.matryoshka_dims", "lr_scheduler", "encoding", "report_to", "dpo.loss_type",
    "kto.loss_type", "cpo.loss_type", "simpo.loss_type", "rewards.funcs", "rewards.weights", "metrics", "eval_metrics",
    "benchmark", "k",
    # hosts, URLs, keys and served names
    "host", "master_addr", "judge_url", "judge_model", "judge_api_key", "api_key", "admin_key", "allowed_origins",
    "remote_image_hosts", "push_to_hub", "served_model_name",
    # settings handed on as they are (chat template variables, peft's own config arguments)
    "chat_template_kwargs", "peft.args",
})

# What each upload is for -> the file types the field it feeds reads. Checked when the file arrives: gradio's
# file_types only filters the browser's file picker, a script posts anything. Only a reward plugin may be Python.
UPLOADS = {
    "dataset": ("a dataset or eval data", SUFFIXES),    # what data/readers.py reads
    "deepspeed": ("a DeepSpeed config", (".json",)),
    "plugin": ("a reward plugin (rewards.plugin)", (".py",)),
}


def read_users(path: str) -> dict[str, str]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"auth: {path} not found (a YAML file: users: {{name: password or sha256:HEX}})")
    data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict) or not users:
        raise ConfigError(f"{path}: expected `users:` mapping names to passwords")
    for name in users:
        if not NAME.match(str(name)) or name == LOCAL:
            raise ConfigError(f"{path}: user name {name!r}: letters, digits, '.', '_' and '-' only (and not {LOCAL!r})")
    return {str(k): str(v) for k, v in users.items()}


def password_ok(users: dict[str, str], name: str, password: str) -> bool:
    stored = users.get(name)
    if stored is None:
        return False
    if stored.startswith("sha256:"):
        return hmac.compare_digest(stored[7:], hashlib.sha256(password.encode()).hexdigest())
    return hmac.compare_digest(stored.encode(), password.encode())


@dataclass
class Workspace:
    root: Path   # the server's folder; each user's workspace is root/<user>
    user: str
    isolated: bool  # with --auth: paths from the browser must stay inside

    @property
    def dir(self) -> Path:
        folder = self.root / self.user
        for sub in ("runs", "uploads", "jobs", "exports"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return folder

    def path(self, given: str) -> Path:
        """A path the browser named, inside this workspace (refused otherwise)."""
        text = str(given).strip()
        if self.isolated and (Path(text).is_absolute() or ".." in Path(text).parts or text.startswith("~")):
            raise ConfigError(f"{text}: paths are relative to your workspace (no absolute paths, no ..)")
        return (self.dir / text).resolve() if not Path(text).is_absolute() else Path(text)

    def keep_upload(self, file: str, kind: str) -> str:
        """An uploaded file copied into uploads/ when its type is one the field it is for reads (UPLOADS), else a
        ConfigError naming the file and the accepted types, and nothing kept. Returns the path relative to the
        workspace, as forms take it."""
        what, suffixes = UPLOADS[kind]
        source = Path(file)
        if source.suffix.lower() not in suffixes:
            raise ConfigError(f"{source.name}: not accepted as {what}; upload a {', '.join(suffixes)} file")
        target = self.dir / "uploads" / source.name
        target.write_bytes(source.read_bytes())
        return str(target.relative_to(self.dir))

    def check_values(self, cls: type[BaseModel], values: dict[str, Any], prefix: str = "") -> None:
        """Every value of a form for `cls` that may name a file, checked before a job starts: relative, inside the
        workspace. All text is taken for a path except the fields of NOT_PATHS, so a path field added to a config later
        is checked without anyone listing it here. Registry names and hub ids (org/name) pass; their files live in the
        shared cache, read-only to jobs."""
        fields = cls.model_fields
        for name, value in values.items():
            key = f"{prefix}{name}"
            section = fields[name].annotation if name in fields else None
            if isinstance(section, type) and issubclass(section, BaseModel) and isinstance(value, dict):
                self.check_values(section, value, f"{key}.")
            elif key not in NOT_PATHS:
                for text in _texts(value):
                    try:
                        self.path(text)
                        if label := LABEL.match(text):  # NAME=PATH (compare, deploy's adapters, draft=MODEL): PATH too
                            self.path(text[label.end():])
                    except ConfigError as err:  # the field named: it may sit folded under Advanced
                        raise ConfigError(f"{key}: {err}") from None


def _texts(value: Any) -> list[str]:
    """The strings in a form value: a text, the items of a list, the values of a mapping (resume: true has none)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [text for item in value for text in _texts(item)]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _texts(item)]
    return []
