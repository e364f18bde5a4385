"""Every place tunesmith reaches into a library's internals, in one folder. Each module says which upstream behaviour it
works around and which release it was written against; tests/models/test_patches.py fails when an upstream release
no longer matches what a patch touches, or no longer needs it.

  peft_lora.py       peft's LoRA Linear: no fp32 round trip of adapter inputs under autocast; the adapter's update
                     added inside B's matmul (train/speed.py steps 5 and 7)
  attention.py       transformers' config._attn_implementation set directly for our varlen kernel (infer/attention.py)
  trl_lm_head.py     TRL's fused LM head: only labelled positions projected on CPU/MPS too, as on CUDA
                     (train/setup.py run_trainer)
  trl_rollouts.py    TRL's GRPOTrainer._generate_single_turn and its per-call token limit, for multi-turn episodes
                     (train/episodes.py)
  accelerate_tp.py   accelerate's ParallelismConfig check, which refuses tensor parallel on CPU processes (gloo)
                     (train/launch.py)
  deepspeed_cpu.py   DeepSpeed's comm, which compiles a C++ shared-memory allreduce on CPU ranks that only its
                     inference uses (train/launch.py)
  accelerate_fsdp.py accelerate's state, which turns FSDP on for GPU-like processes only: FSDP2 on CPU processes
                     (gloo) through one ParallelismConfig object (train/launch.py, train/setup.py)

Patches apply to one model or trainer object when called, never at import, and never to a class; trl_lm_head.py
rebinds one module name only for the length of a `with` block.
"""

from __future__ import annotations

import importlib.metadata
import logging

log = logging.getLogger("tunesmith")
# The releases the patches were written and tested against (pyproject.toml pins them).
TESTED = {"peft": "0.21", "transformers": "5.23", "trl": "1.16", "accelerate": "1.15"}
_warned: set[str] = set()


def check_upstream(package: str) -> bool:
    """True when `package` is the major.minor release the patches were tested with; otherwise warns once (a patch may
    no longer fit) and returns False. The patch still applies: its own fallbacks keep the library's behaviour."""
    version = importlib.metadata.version(package)
    if version.startswith(TESTED[package] + ".") or version == TESTED[package]:
        return True
    if package not in _warned:
        _warned.add(package)
        log.warning("tunesmith patches %s internals tested on %s.x; this is %s. If training or serving fails, install "
                    "the pinned version (pip install -c constraints.txt -e .)", package, TESTED[package], version)
    return False
