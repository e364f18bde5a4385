"""Every shipped YAML validates, and its datasets pass the data check."""

from pathlib import Path

import pytest

from tunesmith.config import SFTConfig, load
from tunesmith.config.rlhf import RLHFConfig
from tunesmith.data.load import load_rows

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "examples").rglob("*.yaml"))
KINDS = {"sft": (SFTConfig, "sft"), "dpo": (RLHFConfig, "preference")}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_config_validates_and_its_data_is_clean(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cls, kind = KINDS[path.stem]
    cfg = load(cls, ["-c", str(path)])
    data = load_rows(cfg.dataset, kind=kind)
    assert not data.problems and len(data.rows) >= 200
