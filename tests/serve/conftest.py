"""Fixtures for tests/serve: a tiny random model (tests/tiny.py) for the tests that run the real transformers engine."""

import pytest

from tiny import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")
