"""Where tunesmith keeps what it can rebuild: converted models and tokenized datasets."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$TUNESMITH_CACHE`, else `~/.cache/tunesmith`."""
    root = os.environ.get("TUNESMITH_CACHE") or Path.home() / ".cache" / "tunesmith"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
