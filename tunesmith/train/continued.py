"""Incremental retraining: `tunesmith sft --continue-from runs/A --dataset data/ [--replay 0.1]`.

    rows = Continuation.select(cfg, data.rows, read)   # the rows A (and what A continued from) never trained on
    ...                                                # + a replay share of the ones it did
    rows.save(cfg, trained_rows)                       # runs/B/seen_rows.json: what B saw, A's included

Every training run writes seen_rows.json beside its config.yaml: the content hash (data/rows.py content_hash) of each
row it trained on, plus those of the run it continued from, so a chain A -> B -> C skips everything seen along it. A
row is the same row in any file or format (an Alpaca row and the same OpenAI-messages conversation hash alike). The
continued run starts from A's final weights: its adapter (trained further, as --adapters does) or its full model.
Replay draws, with the seed, ceil(replay x new rows) old rows: from the dataset's rows A saw, else from the dataset A
recorded in its config.yaml (when data/ now holds only the new files).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunesmith.data.rows import content_hash
from tunesmith.errors import ConfigError, DataError
from tunesmith.train.launch import is_main

log = logging.getLogger("tunesmith")
SEEN_FILE = "seen_rows.json"


def run_folder(path: str | Path) -> Path:
    """runs/A from runs/A or runs/A/final."""
    path = Path(path).expanduser()
    if (path / "final").is_dir():
        return path
    if path.name == "final" and path.is_dir():
        return path.parent
    raise ConfigError(f"continue_from: {path} is not a finished run (no final/ in it); pass runs/NAME of a run that "
                      "completed")


def start_from(cfg: Any) -> None:
    """Point the config at the earlier run's final weights: its adapter (continued, as --adapters) or full model."""
    if not getattr(cfg, "continue_from", None):
        return
    parent = run_folder(cfg.continue_from)
    if cfg.continue_from != str(parent):  # ./runs/A or runs/A/final: the config's check compares adapters with it
        cfg.continue_from = str(parent)
    final = parent / "final"
    if (final / "adapter_config.json").exists():
        if not cfg.trains_adapter:
            raise ConfigError(f"continue_from: {final} is an adapter; continue it with an adapter tuner (lora), or "
                              "export it merged and continue from that with --model")
        if cfg.adapters != str(final):
            cfg.adapters = str(final)
    elif (final / "config.json").exists():
        cfg.model = str(final)
    else:
        raise ConfigError(f"continue_from: {final} holds neither an adapter nor a model")
    log.info("continue_from: starting from %s", final)


@dataclass
class Continuation:
    rows: list
    record: dict[str, Any] = field(default_factory=dict)
    inherited: set[str] = field(default_factory=set)

    @classmethod
    def select(cls, cfg: Any, rows: list, read: Callable[[list[str]], Any]) -> Continuation:
        """Rows not seen by the run continued from, plus the replay share; all rows when not continuing."""
        if not getattr(cfg, "continue_from", None):
            return cls(rows)
        parent = run_folder(cfg.continue_from)
        seen = read_seen(parent)
        new = [r for r in rows if content_hash(r) not in seen]
        old = [r for r in rows if content_hash(r) in seen]
        if not new:
            raise DataError(f"{', '.join(cfg.dataset)}: all {len(rows)} rows were seen by {parent}; nothing new to "
                            "train on (drop --continue-from to train on them again)")
        wanted = math.ceil(cfg.replay * len(new)) if cfg.replay else 0
        pool = old if len(old) >= wanted else old + _recorded_rows(parent, seen, old, read)
        replayed = random.Random(cfg.seed).sample(pool, min(wanted, len(pool)))
        if len(replayed) < wanted:
            log.warning("replay: %d old row(s) wanted, %d found (in the dataset and in %s's recorded dataset)", wanted,
                        len(replayed), parent)
        log.info("continue_from %s: %d row(s) seen before skipped, %d new, %d replayed", parent, len(old), len(new),
                 len(replayed))
        record = {"continued": {"from": str(parent), "seen_before": len(seen), "skipped_seen": len(old),
                                "new_rows": len(new), "replayed": len(replayed), "replay": cfg.replay}}
        return cls(new + replayed, record, seen)

    def save(self, cfg: Any, trained: list) -> None:
        """runs/NAME/seen_rows.json: the rows this run trains on and every row its ancestors saw."""
        if not is_main() or not cfg.output_dir:  # launch's pre-tokenizing pass runs before the folder is chosen
            return
        hashes = sorted(self.inherited | {content_hash(r) for r in trained})
        path = Path(cfg.output_dir) / SEEN_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"hash": "sha256 of the normalised row, first 20 hex digits (data/rows.py)",
                                   "continued_from": self.record.get("continued", {}).get("from"),
                                   "rows": hashes}) + "\n", encoding="utf-8")
        tmp.replace(path)


def forget_untrained_rows(run: Path, epochs_done: float) -> None:
    """A run that stopped before one whole pass (max_steps, Ctrl-C) saw an unknown part of its rows: seen_rows.json
    keeps only its ancestors' rows, so a run continuing from it trains on this run's rows again rather than skipping
    rows that were never trained on."""
    path = run / SEEN_FILE
    if round(epochs_done, 6) >= 1 or not path.exists():
        return
    record = json.loads(path.read_text(encoding="utf-8"))
    parent = record.get("continued_from")
    inherited = read_seen(Path(parent)) if parent else set()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**record, "rows": sorted(inherited), "stopped_at_epoch": round(epochs_done, 4)}) + "\n",
                   encoding="utf-8")
    tmp.replace(path)
    log.info("%s: stopped at %.2f of an epoch, so which rows it trained on is not known; a run continuing from it "
             "skips only the rows its ancestors saw", SEEN_FILE, epochs_done)


def read_seen(run: Path) -> set[str]:
    path = run / SEEN_FILE
    if not path.exists():
        raise ConfigError(f"continue_from: {run} has no {SEEN_FILE} (it was trained before tunesmith recorded the rows "
                          "a run saw); train it again, or use --adapters to continue it on all rows")
    return set(json.loads(path.read_text(encoding="utf-8"))["rows"])


def _recorded_rows(parent: Path, seen: set[str], have: list, read: Callable[[list[str]], Any]) -> list:
    """Rows of the dataset the earlier run recorded in config.yaml that it saw and `have` lacks (files still there)."""
    config = yaml.safe_load((parent / "config.yaml").read_text(encoding="utf-8")) or {}
    have_hashes = {content_hash(r) for r in have}
    try:
        rows = read(config.get("dataset") or []).rows
    except Exception as err:  # noqa: BLE001 - moved or deleted data only limits the replay
        log.warning("replay: cannot read %s's dataset again (%s)", parent, str(err).splitlines()[0][:200])
        return []
    found, out = set(), []
    for row in rows:
        h = content_hash(row)
        if h in seen and h not in have_hashes and h not in found:
            found.add(h)
            out.append(row)
    return out
