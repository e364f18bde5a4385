"""`tunesmith models`: the registered model families and what is proven for each."""

from __future__ import annotations

import warnings
from typing import ClassVar

from pydantic import Field

from tunesmith.config.sections import Section

# `--json` as in `tunesmith plan`: the field shadows pydantic's deprecated v1 `.json()`, which nothing calls; without
# this filter every command printed the warning, since the CLI imports every config.
warnings.filterwarnings("ignore", message='Field name "json" in "ModelsConfig" shadows', category=UserWarning)


class ModelsConfig(Section):
    """The registered model families: template source, tool-call format, reasoning, MoE, and what the tests prove
    for each. Run: tunesmith models [--json]"""

    family: str | None = Field(None, description="Show one family in full (its template source and notes).")
    json: bool = Field(False, description="Print the families as JSON.")
    command: ClassVar[str] = "models"
