"""What the end-to-end tests share besides fixtures: the console script, running it, reading a run's metrics. A module
of its own (not conftest.py) so that `from e2e_cli import ...` names one file whatever other test folders' conftest
files pytest loaded first."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

TUNESMITH = shutil.which("tunesmith", path=str(Path(sys.executable).parent)) or "tunesmith"
WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "amber", "frost", "lemon", "orbit", "pearl", "quartz"]


def run_cli(*args, cwd=None, env=None, check=True, stdin=None, timeout=600):
    # One OpenMP thread: the tiny models' matmuls are microseconds, and a second thread mostly waits for a busy core
    # (helpers measured 2.5-5 s per training step with two threads vs 0.6 s with one on a loaded 2-core machine).
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
                **(env or {})}
    proc = subprocess.run([TUNESMITH, *map(str, args)], cwd=cwd, env=full_env, capture_output=True, text=True,
                          input=stdin, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"tunesmith {' '.join(map(str, args))} exited {proc.returncode}\n{proc.stderr[-4000:]}")
    return proc


def read_metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def assert_preflight_recorded(run_dir):
    """Every training command goes through train/preflight.py: the memory plan ran, and config.yaml records it, the
    speed choices and the parameter counts."""
    import yaml

    resolved = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())["_resolved"]
    assert resolved["memory_plan"]["needed_gib"] > 0 and resolved["memory_plan"]["available_gib"] > 0
    assert {"packing", "gradient_checkpointing", "checkpoint_every"} <= set(resolved["choices"])
    assert resolved["trainable_params"] > 0 and resolved["frozen_params"] >= 0
    assert resolved["device"] == "cpu" and resolved["dtype"] == "torch.float32"
