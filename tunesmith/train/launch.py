"""More than one process: the same recipe on every rank, started by torchrun, on the field's engines (DDP, PyTorch
FSDP2, DeepSpeed ZeRO, DeepSpeed's Ulysses sequence parallel, transformers' tensor parallel). The recipes do not
change.

    tunesmith sft -c x.yaml --nproc-per-node 8                    # this node's 8 GPUs: we start torchrun
    tunesmith sft -c x.yaml --nproc-per-node 8 --nnodes 2 --node-rank 0 --master-addr HOST    # the same on each node
    torchrun --nproc-per-node 8 -m tunesmith.cli.main sft -c x.yaml   # an outer launcher (torchrun, accelerate, srun)

What happens before any process starts, in this (the launching) process: the layout is checked (flags, else the
peers' environment variables NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT), so are the method and the
engine (what cannot shard says so now), every data row is checked and tokenized once into the cache, and the run
folder is locked for the whole run. Then torchrun starts the ranks; each runs the recipe with the cache warm, so no
rank waits on another's preprocessing. Rank 0 writes the run folder (config.yaml, metrics, checkpoints' manifests,
final/); every rank logs into logs/rank-N.log, rank 0 into train.log as a single run does.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunesmith.config.deepspeed import DEEPSPEED_PRESETS, deepspeed_config
from tunesmith.errors import ConfigError, TunesmithError

log = logging.getLogger("tunesmith")
LAUNCHED = "TUNESMITH_LAUNCHED"  # set by `launch` for its ranks: the run folder it holds locked
# The peers' variables for a layout, honoured when the flag is not given (LLaMA-Factory, ms-swift, torchrun's own).
ENVIRONMENT = {"nproc_per_node": "NPROC_PER_NODE", "nnodes": "NNODES", "node_rank": "NODE_RANK",
               "master_addr": "MASTER_ADDR", "master_port": "MASTER_PORT"}


@dataclass(frozen=True)
class Layout:
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = 29500

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


# -----------------------------------------------------------------------------
# Where this process stands


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    """Processes of this run: torchrun's, accelerate's or SLURM's (srun) WORLD_SIZE; 1 without a launcher."""
    adopt_slurm()
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return rank() == 0


def adopt_slurm() -> None:
    """`srun -n 8 tunesmith sft ...` starts every rank itself: give torch the variables torchrun would have set."""
    env = os.environ
    if "RANK" in env or "SLURM_PROCID" not in env or int(env.get("SLURM_NTASKS", 1)) < 2:
        return
    env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in env:  # the job's first node, as srun's own launchers pick it
        try:
            nodes = subprocess.run(["scontrol", "show", "hostnames", env.get("SLURM_JOB_NODELIST", "")],
                                   capture_output=True, text=True, check=False).stdout.split()
        except FileNotFoundError:
            nodes = []
        env["MASTER_ADDR"] = nodes[0] if nodes else env.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", "29500")


def layout(cfg: Any) -> Layout:
    """The layout asked for: a flag when given, else its environment variable, else one process."""
    values = {}
    for name, variable in ENVIRONMENT.items():
        if name in cfg.model_fields_set or variable not in os.environ:
            values[name] = getattr(cfg, name)
        else:
            raw = os.environ[variable]
            values[name] = raw if name == "master_addr" else int(raw)
    return Layout(**values)


def needs_launch(cfg: Any) -> bool:
    """True in the process a user started with a layout of several processes, or with --fsdp (FSDP2 runs in a
    process group, also of one process: its checkpoints are then the same at any world size); False in a rank (ours
    or an outer launcher's) and for a single process."""
    return world_size() == 1 and LAUNCHED not in os.environ and (layout(cfg).world_size > 1 or bool(cfg.fsdp))


# -----------------------------------------------------------------------------
# Before any process starts


def check(cfg: Any, lay: Layout) -> None:
    """Everything that would fail on every rank, said once, now."""
    if lay.node_rank >= lay.nnodes:
        raise ConfigError(f"node_rank: {lay.node_rank} with nnodes {lay.nnodes}; node ranks run 0..{lay.nnodes - 1}")
    if lay.nnodes > 1 and not lay.master_addr:
        raise ConfigError("master_addr: a job on several nodes needs the address of node 0 (--master-addr HOST or "
                          "MASTER_ADDR)")
    if cfg.command == "rlhf" and cfg.method == "ppo":
        raise ConfigError("ppo runs in one process (its loop is ours, not TRL's); drop --nproc-per-node, or use "
                          "--method grpo, which scales out")
    if lay.node_rank == 0 and not _port_free(lay.master_port):
        raise ConfigError(f"master_port: {lay.master_port} is in use on this machine; pass another --master-port")
    import torch

    if torch.cuda.is_available() and cfg.device != "cpu" and lay.nproc_per_node > torch.cuda.device_count():
        raise ConfigError(f"nproc_per_node: {lay.nproc_per_node} processes but {torch.cuda.device_count()} GPU(s) "
                          "are visible; one process per GPU")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def prepare_data(cfg: Any) -> None:
    """Check every row and tokenize once, before the ranks start: they find the cache warm and never wait on each
    other's preprocessing (a rank waiting in the process group for another's tokenizing times out)."""
    from tunesmith.data.limits import max_chars
    from tunesmith.data.load import load_rows
    from tunesmith.train.preflight import load_template

    if cfg.command == "rlhf" and cfg.grpo.env:
        return  # an environment's rows are checked by its reset(), on each rank before weights load
    template, _ = load_template(cfg)
    if cfg.command == "sft":
        from tunesmith.train.sft import sft_data

        sft_data(cfg, template)
    elif cfg.command == "pt":
        from tunesmith.train.pt import pt_data

        pt_data(cfg, template)
    else:
        kind = {"kto": "kto", "grpo": "prompts", "ppo": "prompts"}.get(cfg.method, "preference")
        for specs in (cfg.dataset, cfg.val_dataset):
            if specs:
                load_rows(specs, kind=kind, seed=cfg.seed, encoding=cfg.encoding,
                          max_chars=max_chars(template.tokenizer, cfg.max_length)).raise_if_bad(cfg.skip_bad_rows)


# -----------------------------------------------------------------------------
# Launching


def launch(cfg: Any) -> Any:
    """Start the ranks through torchrun and wait for them; returns the RunResult rank 0 left in the run folder."""
    from tunesmith.train.run import open_run, result_from_folder

    lay = layout(cfg)
    check(cfg, lay)
    check_engine(cfg, lay.world_size)
    prepare_data(cfg)
    if cfg.tensor_parallel > 1:
        from tunesmith.models.load import resolve

        check_tensor_parallel_model(resolve(cfg.model), cfg.tensor_parallel)
    with open_run(cfg) as run:  # held for the whole run: a second run on this folder stops at once
        config_file = run.dir / "launch.yaml"
        # what the user set (and the run folder): each rank validates it again into the same config
        config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_unset=True), sort_keys=False,
                                              allow_unicode=True))
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={lay.nproc_per_node}",
                   f"--nnodes={lay.nnodes}", f"--node-rank={lay.node_rank}",
                   f"--master-addr={lay.master_addr or '127.0.0.1'}", f"--master-port={lay.master_port}",
                   "-m", "tunesmith.cli.main", cfg.command, "-c", str(config_file)]
        log.info("launching %d process(es) on this node (%d in all): %s", lay.nproc_per_node, lay.world_size,
                 " ".join(command[2:]))
        env = {**os.environ, LAUNCHED: str(run.dir.resolve()), "TOKENIZERS_PARALLELISM": "false"}
        code = subprocess.run(command, env=env, check=False).returncode
        if code != 0:
            raise TunesmithError(f"training failed on at least one rank (exit {code}); each rank's log is in "
                                 f"{run.dir / 'logs'}, a hang's stacks in {run.dir}/hang-rank-*.txt")
        return result_from_folder(run.dir) if lay.node_rank == 0 else None


# -----------------------------------------------------------------------------
# The engines, as TrainingArguments take them


def check_engine(cfg: Any, world: int) -> None:
    """What cannot shard says so before any process starts."""
    if cfg.deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("deepspeed: the deepspeed package is not installed (pip install 'tunesmith[deepspeed]')")
    stage = deepspeed_stage(cfg.deepspeed)
    if cfg.tuner == "qlora" and (stage == 3 or cfg.fsdp):
        raise ConfigError(f"{'deepspeed' if stage == 3 else 'fsdp'}: 4-bit QLoRA weights cannot be sharded; use "
                          "--deepspeed zero2 (or plain data parallel) with qlora, or --tuner lora to shard")
    if cfg.fsdp_offload:
        from tunesmith.models.load import pick_device

        if pick_device(cfg.device) == "cpu":
            raise ConfigError("fsdp_offload: FSDP2's CPU offload moves parameters, gradients and optimizer states from "
                              "GPU memory to CPU RAM; CPU processes keep them in CPU RAM already. Drop --fsdp-offload "
                              "(--fsdp alone shards them across the processes)")
    if cfg.sequence_parallel > 1:
        if not (cfg.deepspeed or cfg.fsdp):
            raise ConfigError("sequence_parallel: needs --deepspeed (Ulysses, DeepSpeed ALST) or --fsdp (PyTorch's "
                              "context parallel)")
        if world % cfg.sequence_parallel:
            raise ConfigError(f"sequence_parallel: {cfg.sequence_parallel} does not divide the {world} processes")
        if cfg.packing and cfg.deepspeed:
            raise ConfigError("sequence_parallel: DeepSpeed's Ulysses splits padded sequences through sdpa, not our "
                              "packed (varlen) attention; set packing: false")
        from tunesmith.models.load import pick_device

        if cfg.fsdp and pick_device(cfg.device) == "cpu":
            # accelerate 1.15 turns FSDP on for GPU-like processes only: on CPU its ParallelismConfig then refuses cp
            raise ConfigError("sequence_parallel: PyTorch's context parallel (with --fsdp) runs on GPUs only; on CPU "
                              "use --deepspeed zero2 (Ulysses)")
    if cfg.tensor_parallel > 1 and (world < cfg.tensor_parallel or world % cfg.tensor_parallel):
        raise ConfigError(f"tensor_parallel: {cfg.tensor_parallel} ranks share each layer, which needs a multiple of "
                          f"{cfg.tensor_parallel} processes (there are {world}: --nproc-per-node {cfg.tensor_parallel})")


def check_tensor_parallel_model(folder: Path, n: int) -> None:
    """The model's family has a tensor-parallel plan in transformers, and its heads and MLP split evenly over n."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    text = getattr(config, "text_config", None) or config
    if not getattr(text, "base_model_tp_plan", None):
        raise ConfigError(f"tensor_parallel: {config.model_type} models have no tensor-parallel plan in transformers "
                          "(Llama, Qwen2/3, Mistral, Gemma, Phi, Mixtral and Qwen MoE do); use --fsdp full-shard or "
                          "--deepspeed zero3 to shard it")
    for key in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
        value = getattr(text, key, None)
        if isinstance(value, int) and value % n:
            raise ConfigError(f"tensor_parallel: {folder.name}'s {key} {value} does not split over {n} ranks; use a "
                              f"tensor_parallel that divides it")


def deepspeed_stage(spec: str | None) -> int:
    if not spec:
        return 0
    if spec in DEEPSPEED_PRESETS:
        return int(spec[4])
    return int(deepspeed_config(spec).get("zero_optimization", {}).get("stage", 0))  # a missing file named there


def engine_args(cfg: Any) -> dict[str, Any]:
    """The TrainingArguments that pick the engine: DDP by default with several processes, FSDP2 or DeepSpeed when
    asked, and accelerate's ParallelismConfig for sequence and (on CPU) tensor parallelism."""
    world = world_size()
    args: dict[str, Any] = {}
    if world > 1 and cfg.trains_adapter:
        args["ddp_find_unused_parameters"] = False  # adapters: every trainable weight takes part in each step
    if cfg.deepspeed:
        args["deepspeed"] = deepspeed_config(cfg.deepspeed)
        from tunesmith.models.load import pick_device

        if pick_device(cfg.device) == "cpu":  # gloo ranks: no C++ build of an allreduce that training never calls
            from tunesmith.models.patches.deepspeed_cpu import skip_shm_allreduce_build

            skip_shm_allreduce_build()
    if cfg.fsdp:
        args["fsdp"] = True
        args["fsdp_config"] = {"version": 2, "reshard_after_forward": cfg.fsdp != "shard-grad-op",
                               # checkpoints through torch distributed checkpoint (each rank its shards; resumable at
                               # another world size); final/ is consolidated (train/run.py save_final)
                               "cpu_offload": cfg.fsdp_offload, "state_dict_type": "SHARDED_STATE_DICT",
                               "activation_checkpointing": fsdp_wraps_checkpointing(cfg)}
    if cfg.sequence_parallel > 1 or (cfg.fsdp == "hybrid-shard" and world > 1):
        from accelerate.parallelism_config import ParallelismConfig

        sp = cfg.sequence_parallel
        if cfg.deepspeed:
            from accelerate.utils import DeepSpeedSequenceParallelConfig

            _deepspeed_comm_on_cpu(cfg)
            # Ulysses wraps the attention the model runs (our loader's default, sdpa); its all-to-all splits heads
            attention = DeepSpeedSequenceParallelConfig(sp_attn_implementation="sdpa")
            args["parallelism_config"] = ParallelismConfig(sp_size=sp, sp_backend="deepspeed",
                                                           dp_shard_size=world // sp, sp_handler=attention)
        else:
            nodes = int(os.environ.get("NNODES", os.environ.get("GROUP_WORLD_SIZE", 1)))
            replicate = nodes if cfg.fsdp == "hybrid-shard" else 1
            args["parallelism_config"] = ParallelismConfig(cp_size=sp, dp_replicate_size=replicate,
                                                           dp_shard_size=world // sp // replicate)
    if cfg.fsdp and "LOCAL_RANK" in os.environ and cfg.sequence_parallel == 1:
        from tunesmith.models.load import pick_device

        if pick_device(cfg.device) == "cpu":
            # accelerate 1.15 turns FSDP on for GPU-like processes only; on CPU (gloo) it shards once allowed
            # (models/patches/accelerate_fsdp.py; its plugin is bound in train/setup.py run_trainer)
            from tunesmith.models.patches.accelerate_fsdp import cpu_fsdp

            nodes = int(os.environ.get("NNODES", os.environ.get("GROUP_WORLD_SIZE", 1)))
            replicate = nodes if cfg.fsdp == "hybrid-shard" else 1
            args["parallelism_config"] = cpu_fsdp(replicate, world // replicate)
    if cfg.tensor_parallel > 1 and world > 1:
        # The model came sharded from transformers (models/load.py); the Trainer tells accelerate its layout. On CPU
        # accelerate refuses any such layout, which runs there as on GPUs once allowed (models/patches/accelerate_tp.py).
        from tunesmith.models.load import pick_device

        args["save_only_model"] = True  # transformers 5.23 checkpoints no optimizer state of a model sharded at load
        if pick_device(cfg.device) == "cpu":
            from tunesmith.models.patches.accelerate_tp import cpu_tensor_parallel

            args["parallelism_config"] = cpu_tensor_parallel(cfg.tensor_parallel, world // cfg.tensor_parallel)
    return args


def fsdp_wraps_checkpointing(cfg: Any) -> bool:
    """Activation checkpointing by FSDP2's own wrapper (accelerate's fsdp_config) rather than transformers' per-layer
    gradient checkpointing: for full weights. peft 0.21 names an adapter's weights by module path and strips only
    FSDP1's wrapper from it, so under FSDP's checkpoint wrapper (`_checkpoint_wrapped_module.` in every layer's path)
    it saves an empty adapter; adapters keep transformers' checkpointing, which wraps nothing."""
    return bool(cfg.fsdp and cfg.gradient_checkpointing and not cfg.trains_adapter)


def _deepspeed_comm_on_cpu(cfg: Any) -> None:
    """Ulysses builds its groups with deepspeed.comm, which accelerate starts for GPU processes only; on CPU (gloo) it
    is started here, over the process group torchrun's ranks already share."""
    from tunesmith.models.load import pick_device

    if pick_device(cfg.device) == "cpu":
        import deepspeed

        if not deepspeed.comm.is_initialized():
            deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
