"""Packages that share their name with an API function: tunesmith.infer, tunesmith.export, tunesmith.plan.

Importing any module of such a package makes Python bind `tunesmith.<name>` to the package, hiding the function that
tunesmith/__init__.py offers lazily: `from tunesmith import infer` then gave a module once anything had run inference.
Each of these packages makes itself callable as its function, so both spellings keep working."""

from __future__ import annotations

import sys
import types
from typing import Any


def callable_as_api_function(package: str) -> None:
    """Make the package module `package` (its __name__) call tunesmith.api's function of the same last name."""
    function = package.rsplit(".", 1)[-1]

    class CallablePackage(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            from tunesmith import api

            return getattr(api, function)(*args, **kwargs)

    sys.modules[package].__class__ = CallablePackage
