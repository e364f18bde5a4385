"""Fixtures shared by tests/train: one tiny random Llama (tests/tiny.py) per test session."""

import pytest

from tiny import make_tiny_model


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")
