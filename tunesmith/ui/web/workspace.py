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

import yaml

from tunesmith.errors import ConfigError

LOCAL = "local"
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


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

    def check_values(self, values: dict, keys: tuple[str, ...] = ("dataset", "val_dataset", "output_dir", "adapters",
                                                                   "model", "output", "compare")) -> None:
        """Every path-like value of a form, checked before a job starts: relative, inside the workspace. Registry names
        and hub ids (org/name) pass; their files live in the shared cache, read-only to jobs."""
        for key in keys:
            value = values.get(key)
            for item in value if isinstance(value, list) else [value] if value else []:
                spec = str(item).split("=", 1)[-1].split("#", 1)[0]
                self.path(spec)
