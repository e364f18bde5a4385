"""Offline, a hub id fails at once with the `tunesmith download` that fetches it. Before: a dataset id was told to
run `tunesmith download ID`, which fetches a model (outside user); now a dataset is told `--kind dataset`, and an id
download took as a model (its default kind, which a dataset id given without --kind also gets) is told both."""

import pytest

from tunesmith import DownloadConfig, download, hub
from tunesmith.data.load import load_rows
from tunesmith.errors import ModelNotFoundError

ID = "someorg/somedata"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "cached_snapshot", lambda repo_id, kind="model": None)  # whatever this machine cached


def test_a_dataset_id_is_told_kind_dataset():
    with pytest.raises(ModelNotFoundError) as err:
        download(DownloadConfig(repo=ID, kind="dataset"))
    assert f"Run `tunesmith download --kind dataset {ID}` on a machine with internet access" in str(err.value)
    assert f"`tunesmith download {ID}`" not in str(err.value)


def test_a_dataset_spec_in_a_training_config_is_told_kind_dataset():
    with pytest.raises(ModelNotFoundError, match=rf"Run `tunesmith download --kind dataset {ID}` on a machine"):
        load_rows([ID], kind="sft")


def test_an_id_taken_as_a_model_names_both_commands():
    with pytest.raises(ModelNotFoundError) as err:
        download(DownloadConfig(repo=ID))
    message = str(err.value)
    assert f"`tunesmith download {ID}` (a model; for a dataset: `tunesmith download --kind dataset {ID}`)" in message


def test_modelscope_names_the_kind_too(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # modelscope's package need not be installed to be refused
                        lambda name, *a: object() if name == "modelscope" else real(name, *a))
    with pytest.raises(ModelNotFoundError, match=rf"`tunesmith download --kind dataset {ID} --hub modelscope`"):
        hub.download_modelscope(ID, kind="dataset")
