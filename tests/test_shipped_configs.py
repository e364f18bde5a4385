"""Every shipped YAML validates, and its datasets pass the data check."""

from pathlib import Path

import pytest

from tunesmith.config import SFTConfig, load
from tunesmith.config.rlhf import RLHFConfig
from tunesmith.data.load import load_rows

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "examples").rglob("*.yaml"))
# file stem -> config class, data kind, fewest rows worth shipping (GRPO prompts are sampled many times each); the
# encoder tasks' rows (sft --task embedding | reranker) are checked as that task's training reads them
KINDS = {"sft": (SFTConfig, "sft", 200), "dpo": (RLHFConfig, "preference", 200), "grpo": (RLHFConfig, "prompts", 40),
         "embed": (SFTConfig, "embedding", 200), "rerank": (SFTConfig, "reranker", 200)}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_config_validates_and_its_data_is_clean(path, monkeypatch):
    monkeypatch.chdir(ROOT)
    if path.stem == "guardrails":  # an output policy (deploy --guardrails MODEL=FILE): it loads, its hook included
        from prometheus_client import CollectorRegistry

        from tunesmith.serve.guardrails import Guards

        assert Guards.build([f"model={path}"], CollectorRegistry())["model"].classifier is not None
        return
    cls, kind, min_rows = KINDS[path.stem.removesuffix("-round2").removesuffix("-charts")]  # DAO: its chart step
    if path.stem.endswith("-round2"):  # a later round trains on one quarter's new rows (the DAO recipe's round 2)
        min_rows = 18
    cfg = load(cls, ["-c", str(path)])
    if cls is SFTConfig:  # the stem says which task's data the file ships
        assert cfg.task == (kind if kind != "sft" else "causal-lm")
    env = getattr(getattr(cfg, "grpo", None), "env", None)
    if env:  # an environment's rows are what its reset() reads: checked as training does
        from tunesmith.train import episodes

        rows = episodes.read_rows(cfg.dataset, cfg.seed)
        episodes.check_env(episodes.load_env(env), rows)
        assert len(rows) >= min_rows
        return
    data = load_rows(cfg.dataset, kind=kind)
    assert not data.problems and len(data.rows) >= min_rows
