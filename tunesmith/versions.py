"""The installed versions of named packages, for the records runs and benchmarks write (config.yaml, results)."""

from __future__ import annotations

from importlib import metadata


def installed_versions(names: tuple[str, ...]) -> dict[str, str]:
    """name -> version for each of `names` that is installed; the others are left out."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out
