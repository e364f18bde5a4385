"""Uploads keep only the file types the field they are for reads: a dataset is JSONL/JSON/CSV/Parquet, a DeepSpeed
config JSON, a reward plugin Python. Checked on the server when the file arrives (gradio's file_types only filters
the browser's picker): a refused file is named in the error with the accepted types, and nothing is kept."""

import pytest

from tunesmith.config.webui import WebUIConfig

gr = pytest.importorskip("gradio", reason="pip install 'tunesmith[webui]'")


def handler(app, elem_id: str):
    """The function an upload input with this element id calls, as the browser would reach it."""
    return next(f.fn for f in app.fns.values() if [c.elem_id for c in f.inputs] == [elem_id])


@pytest.fixture
def app(tmp_path):
    from tunesmith.ui.web.app import build_app

    return build_app(WebUIConfig(auth=str(tmp_path / "users.yaml"), root=str(tmp_path / "ws")))


def uploaded(tmp_path, name: str, text: str):
    file = tmp_path / "browser" / name
    file.parent.mkdir(exist_ok=True)
    file.write_text(text)
    return str(file)


def kept(tmp_path) -> list[str]:
    """Every file in alice's workspace (a refused upload may come before the workspace is made)."""
    return sorted(p.name for p in (tmp_path / "ws").rglob("*") if p.is_file())


def test_a_python_file_uploaded_as_a_dataset_is_refused_and_not_kept(app, tmp_path):
    file = uploaded(tmp_path, "rewards.py", "import os\n")
    with pytest.raises(gr.Error) as err:
        handler(app, "data-upload")(file, gr.Request(username="alice"))
    assert "rewards.py" in err.value.message and ".jsonl" in err.value.message and ".parquet" in err.value.message
    assert kept(tmp_path) == []


def test_a_jsonl_dataset_is_kept_and_named_in_the_dataset_field(app, tmp_path):
    file = uploaded(tmp_path, "chats.jsonl", '{"messages": []}\n')
    assert handler(app, "data-upload")(file, gr.Request(username="alice")) == "uploads/chats.jsonl"
    assert (tmp_path / "ws" / "alice" / "uploads" / "chats.jsonl").read_text() == '{"messages": []}\n'


def test_a_python_file_uploaded_as_a_reward_plugin_is_kept(app, tmp_path):
    file = uploaded(tmp_path, "rewards.py", "def score(completions, **kw):\n    return [1.0] * len(completions)\n")
    note = handler(app, "data-upload-plugin")(file, gr.Request(username="alice"))
    assert "uploads/rewards.py" in note and "rewards.plugin" in note
    assert kept(tmp_path) == ["rewards.py"]


@pytest.mark.parametrize("elem_id, name", [("data-upload-deepspeed", "ds.py"), ("data-upload-deepspeed", "ds.yaml"),
                                           ("data-upload-plugin", "rewards.jsonl"), ("data-upload", "notes")])
def test_every_upload_refuses_a_type_its_field_does_not_read(app, tmp_path, elem_id, name):
    with pytest.raises(gr.Error, match=f"{name}: not accepted"):
        handler(app, elem_id)(uploaded(tmp_path, name, "x"), gr.Request(username="alice"))
    assert kept(tmp_path) == []


def test_a_deepspeed_json_is_kept_and_each_picker_offers_its_own_types(app, tmp_path):
    note = handler(app, "data-upload-deepspeed")(uploaded(tmp_path, "ds.json", "{}"), gr.Request(username="alice"))
    assert "uploads/ds.json" in note and kept(tmp_path) == ["ds.json"]
    pickers = {b.elem_id: b.file_types for b in app.blocks.values() if isinstance(b, gr.File)}
    assert pickers == {"data-upload": [".jsonl", ".json", ".csv", ".parquet"], "data-upload-deepspeed": [".json"],
                       "data-upload-plugin": [".py"]}
