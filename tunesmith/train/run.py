"""The run folder, held for the run's life: `with open_run(cfg) as run:` in every training recipe.

runs/NAME/
  config.yaml     every default filled in, plus what was resolved and the library versions
  metrics.jsonl   loss.png   tb/ (TensorBoard)   train.log
  checkpoint-N/   HF Trainer layout + tunesmith_manifest.json once complete
  final/          adapter (or full model) + tokenizer + chat template + lineage.json (tunesmith/lineage.py)
  .lock           held (flock) while a run writes here; a second run on the same folder stops at once
  logs/rank-N.log with several processes (train/launch.py): what each rank other than 0 logged

Opening a run takes the lock, decides whether the folder may be written (resume, overwrite, or refuse), finds the
checkpoint to resume, and mirrors the log into train.log; closing it detaches the log handlers and releases the lock,
so a second run in the same process (the wizard fine-tunes, then aligns) logs only into its own train.log.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from tunesmith import lineage
from tunesmith.train import continued
from tunesmith.config.local_paths import with_absolute_paths
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.train.callbacks import MANIFEST, GracefulStop, checkpoints, is_complete
from tunesmith.train.launch import LAUNCHED, is_main, rank
from tunesmith.train.resume_checks import check_resume, processes_now, written_by
from tunesmith.train.tuners import finish_final
from tunesmith.versions import installed_versions

log = logging.getLogger("tunesmith")
# whose versions config.yaml records
TRAINING_PACKAGES = ("tunesmith", "torch", "transformers", "trl", "peft", "accelerate", "datasets")
# the loggers whose records train.log keeps
LOGGERS = ("tunesmith", "transformers", "trl", "peft")
LOCK = ".lock"
FSDP_MODEL_FOLDER = "pytorch_model_fsdp_0"  # accelerate's torch distributed checkpoint of an FSDP2 model


@dataclass
class RunResult:
    run_dir: Path
    final_dir: Path
    steps: int
    first_loss: float | None
    last_loss: float | None
    skipped_rows: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False  # SIGTERM ended it early (train/callbacks.py GracefulStop): saved, --resume continues


@dataclass
class Run:
    """An open run folder: where it is, which checkpoint to resume from, and what it writes at its milestones."""

    cfg: Any
    dir: Path
    resume_from: str | None

    def save_config(self, **resolved: Any) -> None:
        if is_main():
            save_config(self.cfg, self.dir, **resolved)
            self.resolved = resolved

    def add_resolved(self, **values: Any) -> None:
        """Record what is known only once training ends (e.g. the privacy spent) in config.yaml."""
        self.save_config(**{**getattr(self, "resolved", {}), **values})

    def save_final(self, trainer: Any, template: Any) -> Path:
        """final/: written to a staging folder and renamed, so it is either whole or absent. With several processes
        every rank takes part in saving (FSDP and ZeRO-3 gather their shards into one consolidated folder); rank 0
        writes it."""
        final, staging = self.dir / "final", self.dir / ".final-staging"
        if is_main():
            shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while saving
            staging.mkdir()
        _barrier()
        # PPO's own loop hands a trainer-like object without an accelerator: nothing sharded there.
        plugin = getattr(getattr(getattr(trainer, "accelerator", None), "state", None), "fsdp_plugin", None)
        if plugin is not None:  # checkpoints were FSDP2 shards; final/ is one plain HF/peft folder
            plugin.set_state_dict_type("FULL_STATE_DICT")
        trainer.save_model(str(staging))
        _barrier()
        if is_main():
            finish_final(self.cfg, trainer.model, staging, self.dir)  # PiSSA/OLoRA's adapter for the base, LongLoRA merged
            drop_reference_copy(staging)  # before lineage.json lists final/'s files
            template.save(staging)
            shutil.copy(self.dir / "config.yaml", staging / "config.yaml")
            continued.forget_untrained_rows(self.dir, trainer.state.epoch or 0.0)  # max_steps stopped mid-epoch
            lineage.write_for_run(staging, self.dir, self.cfg)  # data, template and config hashes; the parent
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
        _barrier()
        return final

    def result(self, trainer: Any, final: Path, skipped: int) -> RunResult:
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        summary = next((h for h in reversed(trainer.state.log_history) if "train_loss" in h), {})
        callbacks = getattr(getattr(trainer, "callback_handler", None), "callbacks", [])
        stopped = any(isinstance(c, GracefulStop) and c.asked for c in callbacks)
        return RunResult(self.dir, final, trainer.state.global_step, losses[0] if losses else None,
                         losses[-1] if losses else None, skipped, summary, stopped)


def drop_reference_copy(folder: Path) -> None:
    """Continuing an adapter (--adapters, --continue-from), TRL's DPO, KTO, GRPO and RLOO trainers keep a frozen copy
    of the starting adapter as a second peft adapter, "ref", the reference policy; peft saves it into ref/ beside the
    trained one. Checkpoints need it to resume; the result does not (every later command loads the default adapter)."""
    ref = folder / "ref"
    if (ref / "adapter_config.json").exists():
        shutil.rmtree(ref)


@contextlib.contextmanager
def open_run(cfg: Any) -> Iterator[Run]:
    """Lock the run folder, prepare it, log into it; on the way out (also on error) undo the logging and unlock.
    With several processes, rank 0 locks and prepares (or the launching process did: train/launch.py), and each
    other rank logs into logs/rank-N.log."""
    generated = cfg.output_dir is None
    if generated:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        cfg.output_dir = f"runs/{cfg.command}-{stamp}"
    path = Path(cfg.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    held_by_launcher = os.environ.get(LAUNCHED) == str(path.resolve())
    owner = is_main() and not held_by_launcher
    log_file = path / "train.log" if is_main() else path / "logs" / f"rank-{rank()}.log"
    try:
        with _locked(path) if owner else contextlib.nullcontext():
            if owner:
                _check_writable(cfg, path)
            log_file.parent.mkdir(exist_ok=True)
            with _logging_into(log_file, console=is_main()):
                checkpoint = checkpoint_to_resume(cfg, path, set_aside=owner)
                if owner and cfg.resume:
                    check_resume(cfg, path, checkpoint)  # before config.yaml is rewritten or a step trains
                yield Run(cfg, path, checkpoint)
    except TunesmithError:
        if generated and owner and not (path / "config.yaml").exists():
            # bad data or a model not found, said on stderr, before anything of the run was written: a folder named
            # after the time with only train.log in it would be left per attempt
            shutil.rmtree(path, ignore_errors=True)
        raise


def _check_writable(cfg: Any, path: Path) -> None:
    """Refuses to write over an earlier run unless asked to resume or overwrite (which empties the folder)."""
    has_run = any(path.glob("checkpoint-*")) or (path / "final").exists()
    if has_run and not cfg.resume and not cfg.overwrite:
        raise ConfigError(f"output_dir: {path} already holds a run; pass --resume to continue it, --overwrite to "
                          "start over, or choose another --output-dir")
    if has_run and cfg.overwrite and not cfg.resume:
        for item in path.iterdir():
            if item.name != LOCK:
                shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on runs/NAME/.lock for the run's life. The kernel drops it when the process dies, so a lock
    file left by a killed run is stale: it is named and taken over. Only the process that trains takes it (a
    multi-process launch takes it on rank 0)."""
    import fcntl

    lock = path / LOCK
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(f"output_dir: {path} is in use by another tunesmith run ({holder}); wait for it to "
                              "finish, or choose another --output-dir") from None
        stale = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if stale:
            log.warning("output_dir: %s has a stale lock from a run that did not finish (%s); taking it over", path,
                        stale)
        os.ftruncate(fd, 0)
        started = datetime.datetime.now().isoformat(timespec="seconds")
        os.pwrite(fd, f"pid {os.getpid()}, started {started}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # an empty lock file is a clean end; flock is released by close below
    finally:
        os.close(fd)


@contextlib.contextmanager
def _logging_into(file: Path, console: bool = True) -> Iterator[None]:
    """Mirror tunesmith's and the training libraries' log records into `file` while the run is open. Consoles keep
    warnings only meanwhile (the progress bar shows the rest); both are restored afterwards. console=False (ranks
    other than 0) keeps only warnings on the shared console too: rank 0 speaks for the run."""
    handler = logging.FileHandler(file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = []
    root = logging.getLogger()
    roots = [(h, h.level) for h in root.handlers]
    if not console:
        for h in root.handlers:
            h.setLevel(max(h.level, logging.WARNING))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, [(h, h.level) for h in logger.handlers]))
        for stream in logger.handlers:
            stream.setLevel(max(stream.level, logging.WARNING))
        logger.addHandler(handler)
        logger.setLevel(min(logger.level or logging.INFO, logging.INFO))
    try:
        yield
    finally:
        for logger, level, handlers in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)
            for stream, stream_level in handlers:
                stream.setLevel(stream_level)
        for stream, stream_level in roots:
            stream.setLevel(stream_level)
        handler.close()


def checkpoint_to_resume(cfg: Any, run_dir: Path, set_aside: bool = True) -> str | None:
    """true -> the newest complete checkpoint; a path -> that. Partial checkpoints in the run folder (a run killed
    while saving) are removed first, by one process (set_aside). A checkpoint written by another number of processes
    than this run's is refused when its engine shards the state (FSDP, DeepSpeed)."""
    if not cfg.resume:
        return None
    if isinstance(cfg.resume, str) and not is_complete(Path(cfg.resume)):
        raise ConfigError(f"resume: {cfg.resume} is not a complete checkpoint (no valid {MANIFEST})")
    if set_aside:
        remove_incomplete(run_dir)
    if isinstance(cfg.resume, str):
        return cfg.resume
    complete = [p for p in checkpoints(run_dir) if is_complete(p)]
    if complete:
        check_world_size(cfg, complete[-1])
        return str(complete[-1])
    log.warning("resume: no complete checkpoint in %s; starting from step 0", run_dir)
    return None


def remove_incomplete(run_dir: Path) -> None:
    """Delete the checkpoint folders without a matching manifest written after the newest complete one: a save cut
    off by a kill or Ctrl-C (the manifest is written last). They cannot be resumed, and the Trainer's
    save_total_limit would count them. Also the incomplete-checkpoint-N-PID folders that earlier releases set aside
    instead. An older folder without a manifest is no save of this run's that was cut off (a copied-in checkpoint):
    it is left alone."""
    found = checkpoints(run_dir)
    last_complete = max((i for i, p in enumerate(found) if is_complete(p)), default=-1)
    partial = [p for p in found[last_complete + 1:] if not is_complete(p)]
    partial += sorted(p for p in run_dir.glob("incomplete-checkpoint-*") if p.is_dir())
    for path in partial:
        log.warning("%s is incomplete (killed while saving); removing it", path)
        shutil.rmtree(path)


def check_world_size(cfg: Any, checkpoint: Path) -> None:
    """A checkpoint resumes on the engine that wrote it. FSDP2's (torch distributed checkpoint: each rank's shards plus
    a plan of the whole tensors) resume at any world size, DCP resharding them as they load; DeepSpeed's at the same
    one."""
    written, now = written_by(checkpoint), processes_now(cfg)
    sharded = (checkpoint / FSDP_MODEL_FOLDER).is_dir()
    if sharded and not cfg.fsdp:
        raise ConfigError(f"resume: {checkpoint} holds FSDP2 shards (torch distributed checkpoint); resume it with "
                          "--fsdp (any number of processes)")
    if cfg.fsdp and not sharded:
        raise ConfigError(f"resume: {checkpoint} was written without --fsdp; resume it without --fsdp (FSDP2 resumes "
                          "only its own sharded checkpoints)")
    if written == now:
        return
    if cfg.fsdp:
        log.info("resume: %s was written by %d process(es), this run has %d: torch distributed checkpoint reshards the "
                 "weights and optimizer states as they load", checkpoint, written, now)
        return
    if cfg.deepspeed:
        raise ConfigError(f"resume: {checkpoint} was written by {written} process(es), this run has {now}; DeepSpeed's "
                          f"sharded optimizer states resume at the same world size: --nproc-per-node {written} (x nodes)")
    log.warning("resume: %s was written by %d process(es), this run has %d: the weights and optimizer resume, the "
                "data order of the rest of the epoch differs", checkpoint, written, now)


def result_from_folder(run_dir: Path) -> RunResult:
    """The result of a run that other processes trained (train/launch.py): from its metrics and config."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in rows if isinstance(r.get("loss"), (int, float))]
    resolved = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("_resolved", {})
    return RunResult(run_dir, run_dir / "final", max((r.get("step", 0) for r in rows), default=0),
                     losses[0] if losses else None, losses[-1] if losses else None, resolved.get("skipped_rows", 0))


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_config(cfg: Any, run_dir: Path, **resolved: Any) -> None:
    """config.yaml: the validated config with every default, plus what was resolved and the library versions."""
    # relative paths written absolute: the config reruns, and later commands find its data, from any directory
    data = with_absolute_paths(cfg, cfg.model_dump(mode="json"), Path.cwd())
    data["_resolved"] = resolved | {"versions": installed_versions(TRAINING_PACKAGES), "command": cfg.command}
    _atomic_write(run_dir / "config.yaml", yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
