"""Tiny VLM folders, built once per session (tests/vision/tiny_vlm.py), and a few small pictures."""

from __future__ import annotations

import pytest

from tests.vision.tiny_vlm import BUILDERS, make_image


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
