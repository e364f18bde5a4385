"""What a run writes while it trains: metrics.jsonl, a console line per log, loss.png, checkpoint manifests.

Composed into TRL's trainers through `callbacks=`, never by subclassing them."""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

MANIFEST = "tunesmith_manifest.json"


def peak_memory_gb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class MetricsLog(TrainerCallback):
    """One JSON object per logging step: step/total, loss, learning rate, grad norm, tokens/s, peak memory,
    elapsed and ETA. Also prints it as one line, under the progress bar."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"
        self.start = time.time()
        self.last_time, self.last_tokens = self.start, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.last_time = time.time()
        self.first_tokens = self.last_tokens = state.num_input_tokens_seen or 0
        if state.is_world_process_zero:
            # The Trainer has loaded the checkpoint's state by now: global_step is the step resumed from (0 otherwise)
            drop_after(self.path, state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        # the last step is logged whatever logging_steps says: the curve and the end-of-run line end where the run
        # ended, not steps before (ppo's own loop, which passes no control, logs its last step itself)
        if control is not None and state.global_step == state.max_steps:
            control.should_log = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        now = time.time()
        tokens = state.num_input_tokens_seen or 0
        rate = (tokens - self.last_tokens) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_tokens = now, tokens
        elapsed = now - self.start
        if "train_runtime" in logs:  # the Trainer's summary, right after the last step's log: the whole run's rate
            rate = (tokens - getattr(self, "first_tokens", 0)) / max(elapsed, 1e-9)
        done = max(state.global_step, 1)
        record = {"step": state.global_step, "total_steps": state.max_steps, "epoch": round(state.epoch or 0, 4)}
        record |= {k: (round(v, 6) if isinstance(v, float) else v) for k, v in logs.items()}
        world = getattr(args, "world_size", 1)  # Trainer counts every process's tokens in num_input_tokens_seen
        record |= {"tokens_per_s": round(rate, 1), "tokens_per_s_per_gpu": round(rate / world, 1),
                   "processes": world, "peak_mem_gb": round(peak_memory_gb(), 3),
                   "elapsed_s": round(elapsed, 1), "eta_s": round(elapsed / done * (state.max_steps - state.global_step), 1)}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if "loss" in logs or "eval_loss" in logs:
            from tqdm.auto import tqdm

            tqdm.write(_line(record), file=sys.stderr)


def drop_after(path: Path, step: int) -> int:
    """Remove the lines of metrics.jsonl logged after `step`, and a line cut off mid-write. A resumed run trains
    those steps again (from its checkpoint) and logs them anew; kept, each would appear twice, in loss.png too.
    Rewritten by atomic rename; returns how many lines went."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            later = json.loads(line).get("step", 0) > step
        except (ValueError, AttributeError, TypeError):  # a line the kill cut short, or not a record
            later = True
        if later:
            dropped += 1
        else:
            kept.append(line + "\n")
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
        logging.getLogger("tunesmith").info("%s: dropped %d line(s) logged after step %d, which this run trains again",
                                            path, dropped, step)
    return dropped


def _line(r: dict) -> str:
    parts = [f"step {r['step']}/{r['total_steps']}"]
    for key, label, fmt in [("loss", "loss", ".4f"), ("eval_loss", "eval_loss", ".4f"), ("learning_rate", "lr", ".2e"),
                            ("grad_norm", "grad_norm", ".3f"), ("reward", "reward", ".3f"), ("reward_std", "reward_std", ".3f"),
                            ("kl", "kl", ".4f"), ("completions/mean_length", "len", ".1f"), ("tokens_per_s", "tok/s", ".0f"),
                            ("peak_mem_gb", "peak_mem", ".2f")]:
        if isinstance(r.get(key), (int, float)):
            parts.append(f"{label} {r[key]:{fmt}}" + (" GB" if key == "peak_mem_gb" else ""))
    parts.append(f"elapsed {r['elapsed_s']:.0f}s eta {r['eta_s']:.0f}s")
    return " | ".join(parts)


class ProgressBar(TrainerCallback):
    """One progress bar over optimizer steps (continuing from the resumed step)."""

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="training", unit="step",
                        disable=not state.is_world_process_zero, dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args, state, control, **kwargs):
        if hasattr(self, "bar"):  # also called when Ctrl-C came before training began (train/setup.py)
            self.bar.close()


class CheckpointManifest(TrainerCallback):
    """HF's Trainer writes checkpoint-N/ in place; a run killed mid-write leaves a partial folder. After the
    Trainer finishes a checkpoint we write a manifest (file names and sizes) by atomic rename: a checkpoint counts
    as complete only with a manifest that matches its files, and resume picks the newest complete one."""

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank has written its shard before the manifest vouches for them
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            write_manifest(folder, state.global_step, args.world_size)


def write_manifest(folder: Path, step: int, world_size: int = 1) -> None:
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"step": step, "world_size": world_size, "files": files}, indent=1))
    os.replace(tmp, folder / MANIFEST)


def is_complete(folder: Path) -> bool:
    path = folder / MANIFEST
    if not path.exists():
        return False
    try:
        files = json.loads(path.read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):  # a manifest that is not ours
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == size for name, size in files.items())


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint-N folders, oldest first (complete or not)."""
    found = [p for p in Path(run_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training (train/setup.py run_trainer), saying what a user needs to go on: the step reached and
    the newest complete checkpoint, which `--resume` continues. Still a KeyboardInterrupt for whoever catches one;
    `tunesmith` prints it and exits 130. `restart`: why the run cannot be resumed (ppo writes no checkpoints), said
    instead of --resume, which that recipe refuses: the same command runs again from step 0."""

    def __init__(self, run_dir: Path, step: int, restart: str | None = None):
        self.run_dir, self.step = Path(run_dir), step
        if restart is not None:
            self.checkpoint = None
            super().__init__(f"interrupted at step {step}; nothing was saved ({restart}): run the same command again "
                             "to start from step 0")
            return
        found = checkpoints(self.run_dir)
        complete = [p for p in found if is_complete(p)]
        self.checkpoint = complete[-1] if complete else None
        cut = [p for p in found if p not in complete and (self.checkpoint is None or found.index(p) > found.index(
            self.checkpoint))]  # the saves a kill cut off, which --resume removes (train/run.py remove_incomplete)
        partial = f" ({', '.join(map(str, cut))} cut off while saving: --resume removes it)" if cut else ""
        if self.checkpoint is None:
            message = (f"interrupted at step {step}; nothing was saved (no complete checkpoint in {self.run_dir} yet)"
                       f"{partial}: run the same command with --resume to start again from step 0")
        else:
            message = (f"interrupted at step {step}; the last checkpoint is {self.checkpoint}{partial}: run the same "
                       "command with --resume to continue")
        super().__init__(message)


class Watchdog(TrainerCallback):
    """With several processes a rank that stops (a deadlocked collective, a hung data loader, one rank asleep)
    stops every rank, silently, until NCCL's timeout (30 min by default) or forever. This one is separate from it:
    when a rank finishes no step, evaluation or save for `timeout` seconds, it writes every thread's Python stack to
    hang-rank-N.txt in the run folder and exits non-zero, so the launcher stops the others (which, waiting on the
    stuck rank, dump theirs too)."""

    def __init__(self, run_dir: Path, timeout: float, rank: int):
        self.path = run_dir / f"hang-rank-{rank}.txt"
        self.timeout, self.rank = timeout, rank
        self.last = time.monotonic()
        self.stopped = False

    def on_train_begin(self, args, state, control, **kwargs):
        import threading

        self.last = time.monotonic()
        threading.Thread(target=self._watch, name="tunesmith-watchdog", daemon=True).start()

    def _progress(self, *args, **kwargs):
        self.last = time.monotonic()

    on_step_end = on_substep_end = on_evaluate = on_save = on_log = _progress

    def on_train_end(self, args, state, control, **kwargs):
        self.stopped = True

    def _watch(self) -> None:
        import faulthandler

        while not self.stopped:
            time.sleep(min(5.0, self.timeout / 10))
            idle = time.monotonic() - self.last
            if idle > self.timeout and not self.stopped:
                with self.path.open("w") as f:
                    f.write(f"rank {self.rank}: no finished step for {idle:.0f} s (watchdog_timeout {self.timeout:g})\n")
                    f.flush()
                    faulthandler.dump_traceback(file=f, all_threads=True)
                logging.getLogger("tunesmith").error(
                    "rank %d made no progress for %.0f s: stacks in %s; stopping (watchdog_timeout)", self.rank, idle,
                    self.path)
                sys.stderr.flush()
                os._exit(3)


class ShardReport(TrainerCallback):
    """With FSDP2 each rank logs what it holds once the engine has sharded the model: its parameters' local bytes
    against the whole model's, how many are DTensor shards, and how many layers FSDP's activation checkpointing
    wrapped (train.log for rank 0, logs/rank-N.log for the others). A rank holding everything is not sharded."""

    def __init__(self, rank: int):
        self.rank = rank

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
        from transformers.modeling_layers import GradientCheckpointingLayer

        local, whole, shards = parameter_bytes(model)
        # FSDP's checkpoint wrapper (full weights) or transformers' per-layer checkpointing (adapters)
        wrapped = sum(isinstance(m, CheckpointWrapper) or (isinstance(m, GradientCheckpointingLayer) and
                                                          m.gradient_checkpointing) for m in model.modules())
        logging.getLogger("tunesmith").info(
            "fsdp2: rank %d holds %d of %d parameter bytes (%.1f %%), %d parameters as DTensor shards, %d layers under "
            "activation checkpointing", self.rank, local, whole, 100 * local / max(whole, 1), shards, wrapped)


def parameter_bytes(model) -> tuple[int, int, int]:
    """(bytes this rank stores, bytes of the whole model, parameters that are DTensors) over unique parameters."""
    from torch.distributed.tensor import DTensor

    local = whole = shards = 0
    for p in model.parameters():  # tied weights count once
        if isinstance(p, DTensor):
            shards += 1
            local += p.to_local().numel() * p.element_size()
        else:
            local += p.numel() * p.element_size()
        whole += p.numel() * p.element_size()
    return local, whole, shards


class GracefulStop(TrainerCallback):
    """SIGTERM (the web UI's Stop, a scheduler's preemption, `kill`) ends the run at the end of the current step with
    a checkpoint and final/, instead of losing everything since the last save; `--resume` continues from it. Ctrl-C
    stays an immediate stop (Interrupted names the checkpoint to resume from). One process only: with several, the
    launcher's SIGTERM means a rank failed."""

    def __init__(self):
        self.asked = False

    def on_train_begin(self, args, state, control, **kwargs):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._ask)

    def _ask(self, signum, frame):
        self.asked = True
        logging.getLogger("tunesmith").warning("SIGTERM: stopping after this step with a checkpoint (--resume continues)")

    def on_step_end(self, args, state, control, **kwargs):
        if self.asked:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        import signal

        if hasattr(self, "previous"):
            signal.signal(signal.SIGTERM, self.previous)


class LossPlot(TrainerCallback):
    """loss.png (train and eval loss against step) at the end of training."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_loss(self.run_dir)


def plot_loss(run_dir: Path) -> Path | None:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return plot_steps(run_dir / "loss.png", rows, {"loss": "loss", "eval_loss": "eval_loss"}, "loss", run_dir.name,
                      markers={"eval_loss"})


def plot_steps(out: Path, rows: list[dict], series: dict[str, str], ylabel: str, title: str,
               markers: set[str] | None = None, ylim: tuple[float, float] | None = None) -> Path | None:
    """A PNG of metrics.jsonl columns against the step: `series` maps each column to its legend label; `markers`
    names the columns drawn as points (all when None)."""
    try:
        import matplotlib
    except ImportError:  # a pinned dependency; only a hand-made environment lacks it
        logging.getLogger("tunesmith").warning(f"matplotlib is not installed: no {out.name} (pip install matplotlib)")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in series.items():
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if points:
            ax.plot(*zip(*points), marker="o" if markers is None or key in markers else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
