"""Tiny VLM folders, built once per session (tests/vision/tiny_vlm.py), and a few small pictures."""

from __future__ import annotations

import pytest
from vision.tiny_vlm import BUILDERS, make_image, run_tunesmith, write_colour_data


@pytest.fixture(scope="session")
def tiny_vlms(tmp_path_factory):
    """family -> folder, built on first use."""
    root = tmp_path_factory.mktemp("vlms")
    built: dict = {}

    def get(family: str):
        if family not in built:
            built[family] = BUILDERS[family](root / family)
        return built[family]

    return get


@pytest.fixture(scope="session")
def pictures(tmp_path_factory):
    """Three small RGB pictures of different sizes and colours."""
    root = tmp_path_factory.mktemp("pictures")
    return [make_image(root / "red.png", (220, 30, 30), (56, 42)), make_image(root / "green.png", (30, 200, 40), (28, 28)),
            make_image(root / "blue.png", (20, 40, 230), (42, 56))]


@pytest.fixture(scope="session")
def colour_data(tmp_path_factory):
    return write_colour_data(tmp_path_factory.mktemp("colours"))


@pytest.fixture(scope="session")
def vision_sft_run(tiny_vlms, colour_data, tmp_path_factory):
    """One LoRA sft run of the tiny Qwen2-VL on the colour pictures through the console script, packed (several
    samples with their images per row): its run folder."""
    out = tmp_path_factory.mktemp("vision-run") / "run"
    run_tunesmith("sft", "--model", tiny_vlms("qwen2-vl"), "--dataset", colour_data, "--output-dir", out,
                  "--max-steps", 10, "--batch-size", 2, "--packing", "--max-length", 128, "--learning-rate", 5e-3,
                  "--warmup-ratio", 0, "--logging-steps", 1, "--report-to", "none", "--seed", 0)
    return out
