"""Shared fixtures for end-to-end tests: a tiny random model, a learnable toy dataset (helpers: e2e_cli.py)."""

import json

import pytest

from e2e_cli import WORDS
from tiny import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """A mapping a tiny model can learn in a few dozen steps: 'code for X' -> 'CODE X OK'."""
    path = tmp_path_factory.mktemp("data") / "toy.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"code for {w}"}, {"role": "assistant", "content": f"CODE {w} OK"}]}
            for w in WORDS]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path
