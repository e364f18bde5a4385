"""`tunesmith plan --tensor-parallel N`: per GPU, the decoder's linears (and an untied LM head) count 1/N, with their
gradients and optimizer states, as do the heads' and MLP's activations; embeddings and norms stay whole."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.plan.estimate import GIB, Setup, estimate_training
from tunesmith.plan.model_shape import builtin_config, shape_from_config

Q7 = shape_from_config(builtin_config("qwen2.5-7b-instruct"))
WHOLE = Q7.embedding_params() + Q7.layers * Q7.layer_norm_params() + Q7.hidden  # on every rank: embeddings, norms
SHARDED = Q7.params() - WHOLE  # q/k/v/o, gate/up/down of every layer, the untied LM head
TUNESMITH = shutil.which("tunesmith", path=str(Path(sys.executable).parent)) or "tunesmith"


@pytest.mark.parametrize("n", [2, 4, 8])
def test_weights_gradients_and_states_of_the_linears_split_over_n(n):
    one = estimate_training(Q7, Setup(method="full"))
    split = estimate_training(Q7, Setup(method="full", tensor_parallel=n))
    assert split.parts["weights"] == pytest.approx(2 * (WHOLE + SHARDED / n))  # bf16
    held = (WHOLE + SHARDED / n) / Q7.params()
    assert split.phases["step"] == pytest.approx(held * one.phases["step"])  # weights + gradients + Adam states
    assert estimate_training(Q7, Setup(method="full", tensor_parallel=n, micro_batch=8)).parts["activations"] < \
        estimate_training(Q7, Setup(method="full", micro_batch=8)).parts["activations"]  # heads and MLP split too
    assert split.trainable == one.trainable  # each rank trains its shard of every weight


def test_the_ranks_beyond_tensor_parallel_shard_with_fsdp():
    tp = estimate_training(Q7, Setup(method="full", tensor_parallel=2))
    tp_fsdp = estimate_training(Q7, Setup(method="full", tensor_parallel=2, world_size=2, fsdp=True))
    held = (WHOLE + SHARDED / 2) / Q7.params()
    # transformers' FSDP2 keeps the bf16 weights: two bf16 Adam states per weight, no fp32 master, over 2 ranks
    assert tp_fsdp.parts["optimizer"] == pytest.approx(held * Q7.params() * 2 * 2 / 2)
    assert tp_fsdp.total < tp.total


def plan(*flags):
    return subprocess.run([TUNESMITH, "plan", "qwen2.5-7b-instruct", "--gpu-memory", "80", "--json", *flags],
                          capture_output=True, text=True, timeout=120, check=False)


def test_plan_command_gives_the_per_gpu_memory_of_the_layout_and_the_command_that_runs_it():
    one, two = (json.loads(plan("--tuner", "full", "--nproc-per-node", "2", *flags).stdout)
                for flags in ([], ["--tensor-parallel", "2"]))
    settings = two["recommended"]["settings"]
    assert settings["tensor_parallel"] == 2 and settings["world_size"] == 1  # both ranks run the same batch
    assert "--nproc-per-node 2 --tensor-parallel 2" in two["command"]
    weights = two["recommended"]["estimate"]["breakdown_gib"]["weights"]
    assert weights == pytest.approx(2 * (WHOLE + SHARDED / 2) / GIB, abs=0.01)
    assert weights < one["recommended"]["estimate"]["breakdown_gib"]["weights"] * 0.6
    for flags, message in [(["--tuner", "lora", "--tensor-parallel", "2"], "trains with --tuner full only"),
                           (["--nproc-per-node", "3", "--tensor-parallel", "2"], "does not divide the processes")]:
        refused = plan(*flags)
        assert refused.returncode != 0 and message in refused.stderr and "Traceback" not in refused.stderr
