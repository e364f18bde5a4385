"""The only place that talks to the model hub. Offline, a hub id fails at once with what to do, never a hang."""

from __future__ import annotations

import os
import socket

from tunesmith.errors import ModelNotFoundError

HUB_HOST = "huggingface.co"
MODELSCOPE_HOST = "www.modelscope.cn"


def hub_reachable(timeout: float = 3.0, host: str = HUB_HOST) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def cached_snapshot(repo_id: str, kind: str = "model") -> str | None:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, repo_type=kind, local_files_only=True)
    except Exception:  # not cached (huggingface_hub raises several types for this)
        return None


def require_hub_or_cache(repo_id: str, kind: str = "model") -> None:
    if cached_snapshot(repo_id, kind) or hub_reachable():
        return
    raise ModelNotFoundError(
        f"{kind} {repo_id!r} is not a local folder, not a tunesmith registry name, not in the hub cache, and the hub "
        f"cannot be reached from here. Run {download_command(repo_id, kind)} on a machine with internet access (or "
        f"copy the folder here and pass its path)."
    )


def download_command(repo_id: str, kind: str, hub: str = "") -> str:
    """The `tunesmith download` that fetches `repo_id`. A dataset is always asked for as one (a dataset spec, or
    --kind dataset), but "model" is also download's default kind, which a dataset id given without --kind gets:
    then both commands are named."""
    flags = f" --hub {hub}" if hub else ""
    if kind == "dataset":
        return f"`tunesmith download --kind dataset {repo_id}{flags}`"
    return (f"`tunesmith download {repo_id}{flags}` (a model; for a dataset: "
            f"`tunesmith download --kind dataset {repo_id}{flags}`)")


def download(repo_id: str, kind: str = "model") -> str:
    """Fetch a model or dataset snapshot (with progress) or return the cached one."""
    cached = cached_snapshot(repo_id, kind)
    if cached:
        return cached
    require_hub_or_cache(repo_id, kind)
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, repo_type=kind)


def download_modelscope(repo_id: str, kind: str = "model") -> str:
    """The same from ModelScope (its package shows the progress). Offline it fails at once, as for the HF hub."""
    import importlib.util

    from tunesmith.errors import ConfigError

    if importlib.util.find_spec("modelscope") is None:
        raise ConfigError("hub: modelscope needs its package: pip install modelscope (or use --hub huggingface)")
    if not hub_reachable(host=MODELSCOPE_HOST):
        raise ModelNotFoundError(
            f"{kind} {repo_id!r}: ModelScope ({MODELSCOPE_HOST}) cannot be reached from here (or HF_HUB_OFFLINE is "
            f"set). Run {download_command(repo_id, kind, hub='modelscope')} on a machine with internet access and "
            "copy the folder here.")
    from modelscope import snapshot_download

    return snapshot_download(repo_id, repo_type=kind)
