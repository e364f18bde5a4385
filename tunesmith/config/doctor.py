"""Config of `tunesmith doctor` and `tunesmith check`: this machine and its installed versions, checked."""

from __future__ import annotations

import warnings
from typing import ClassVar

from pydantic import Field

from tunesmith.config.sections import Section

# `--json` as users know it (see config/plan.py): the field shadows pydantic's deprecated v1 `.json()`
warnings.filterwarnings("ignore", message='Field name "json" in "DoctorConfig" shadows', category=UserWarning)
warnings.filterwarnings("ignore", message='Field name "json" in "CheckConfig" shadows', category=UserWarning)


class DoctorConfig(Section):
    """Check the environment against the versions tunesmith is tested with; each problem comes with the command that
fixes it. Exit 1 when something needed is broken. Run: tunesmith doctor [--json]"""

    output_dir: str = Field("runs", description="Where runs will be written: checked for write access and free space.")
    json: bool = Field(False, description="Print the report as JSON.")
    command: ClassVar[str] = "doctor"


class CheckConfig(Section):
    """Self-checks of training on this machine and these versions, in about a minute: batch x accumulation invariance,
packing, checkpoint resume, merge parity, bf16 drift, template parity. Run: tunesmith check [--model M]"""

    model: str | None = Field(None, description=(
        "Check template parity for this model (registry name, folder or hub id; default: the embedded model). The "
        "training checks run on a tiny random model of the same family, so they take seconds."))
    json: bool = Field(False, description="Print the results as JSON.")
    command: ClassVar[str] = "check"
