"""GPU-only tests carry @pytest.mark.gpu and are skipped, with the reason shown, where no CUDA GPU is visible.
Under pytest-xdist (`make test` runs two workers) each worker computes on one thread: two workers of two threads each
on a 2-core machine spend their time waiting for each other."""

import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: its pool takes the value once

    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine: pytest -m gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def ctrl_c_raises():
    """Python's Ctrl-C handler (KeyboardInterrupt) for a test that sends itself SIGINT, as a terminal's process has it:
    a process started with SIGINT ignored (a background job of a non-interactive shell, as CI may start the suite)
    keeps it ignored, and the signal never arrives."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
