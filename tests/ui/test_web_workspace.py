"""A logged-in user's forms stay inside their workspace: `tunesmith web-ui --auth` served in this process, its forms
called over HTTP as alice (gradio_client, as a script would). Every field that names a file refuses an absolute path
or `..`; registry names, hub ids and presets pass. (Resume: test_web_resume.py; uploads: test_web_uploads.py.)"""

import socket

import pytest
from pydantic import BaseModel

from tunesmith.config import DeployConfig, ExportConfig, PTConfig, SFTConfig
from tunesmith.config.eval import EvalConfig
from tunesmith.config.rlhf import RLHFConfig
from tunesmith.config.webui import WebUIConfig
from tunesmith.ui.web.forms import fields_of
from tunesmith.ui.web.workspace import NOT_PATHS

gradio_client = pytest.importorskip("gradio_client", reason="comes with gradio (pip install 'tunesmith[webui]')")

FORMS = [SFTConfig, PTConfig, RLHFConfig, EvalConfig, ExportConfig, DeployConfig]
# The forms' Preview endpoints, numbered by gradio in the order build_app makes the tabs
PREVIEW = {"sft": "/describe", "rlhf": "/describe_2", "eval": "/describe_3", "export": "/describe_4",
           "deploy": "/describe_5"}
REFUSED = "paths are relative to your workspace"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tunesmith.ui.web.app import run

    root = tmp_path_factory.mktemp("webui")
    (root / "users.yaml").write_text("users:\n  alice: a-pass\n  bob: b-pass\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = run(WebUIConfig(auth=str(root / "users.yaml"), root=str(root / "ws"), port=port), block=False)
    client = gradio_client.Client(f"http://127.0.0.1:{port}/", auth=("alice", "a-pass"), verbose=False)
    yield client, root / "ws" / "alice"
    app.close()


def call(client, endpoint: str, **by_label) -> tuple[str, str]:
    """An endpoint called with these inputs (by label, the field's dotted key) and every other at its default."""
    params = client.view_api(return_format="dict", print_info=False)["named_endpoints"][endpoint]["parameters"]
    args = [by_label.pop(p["label"]) if p["label"] in by_label else p["parameter_default"] for p in params]
    assert not by_label, f"no such inputs on {endpoint}: {by_label}"
    return client.predict(*args, api_name=endpoint)


OUTSIDE = [  # (form, a field that names a file, a value outside alice's workspace)
    ("sft", "continue_from", "/tmp/other/runs/a"),
    ("sft", "continue_from", "../bob/runs/a"),
    ("sft", "eval_dataset", "/etc/passwd"),
    ("sft", "eval_dataset", "../bob/uploads/data.jsonl#5"),
    ("sft", "deepspeed", "/tmp/other/ds.json"),
    ("sft", "deepspeed", "../bob/ds.json"),
    ("rlhf", "rewards.plugin", "/tmp/other/rewards.py"),
    ("rlhf", "grpo.env", "../bob/env.py:Env"),
    ("rlhf", "rewards.model", "/tmp/other/runs/rm/final"),
    ("eval", "rubric", "/tmp/other/rubric.txt"),
    ("eval", "compare", "theirs=/tmp/other/runs/a/final"),
    ("export", "calib_dataset", "../bob/uploads/data.jsonl"),
    ("export", "inspect", "/tmp/other/runs/a/final"),
    ("deploy", "adapters", "prd=/tmp/other/runs/a/final"),
    ("deploy", "guardrails", "prd=../bob/policy.yaml"),
    ("deploy", "speculative", "draft=/tmp/other/runs/small/final"),
    ("deploy", "image_root", "/tmp/other"),
]
REQUIRED = {"sft": {"dataset": "uploads/data.jsonl"}, "rlhf": {"dataset": "uploads/prompts.jsonl", "method": "grpo"},
            "eval": {"dataset": "uploads/data.jsonl", "judge_url": "http://127.0.0.1:9/v1"},
            "export": {"adapters": "runs/a/final"}}  # what makes each form a valid config, so the paths are looked at


@pytest.mark.parametrize("form, key, value", OUTSIDE)
def test_a_path_outside_the_workspace_is_refused_in_every_field_that_names_a_file(server, form, key, value):
    client, _ = server
    command, verdict = call(client, PREVIEW[form], **{**REQUIRED.get(form, {}), key: value})
    assert command == "" and REFUSED in verdict, verdict


@pytest.mark.parametrize("key, value", [
    ("continue_from", "runs/a"),
    ("eval_dataset", "data/eval.jsonl#5"),
    ("deepspeed", "configs/ds.json"),
    ("deepspeed", "zero3"),                   # a preset, no file
    ("model", "HuggingFaceTB/SmolLM2-135M"),  # a hub id
    ("dataset", "prd-assistant#20"),          # a registry name
    ("system", "/no_think"),                  # free text, not a path
])
def test_a_path_inside_the_workspace_or_a_name_is_accepted(server, key, value):
    client, _ = server
    command, verdict = call(client, PREVIEW["sft"], **{**REQUIRED["sft"], key: value})
    assert command.startswith("# tunesmith sft") and REFUSED not in verdict, verdict


def test_start_refuses_the_values_preview_refuses_and_starts_no_job(server):
    client, alice = server
    _, verdict = call(client, "/launch", dataset="uploads/data.jsonl", continue_from="/tmp/other/runs/a")
    assert REFUSED in verdict and not list((alice / "jobs").glob("*.json"))


def _keys_marked_as_paths(cls: type[BaseModel], prefix: str = "") -> list[str]:
    found = []
    for name, info in cls.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            found += _keys_marked_as_paths(info.annotation, f"{prefix}{name}.")
        elif isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("local_path"):
            found.append(f"{prefix}{name}")
    return found


def test_no_field_the_configs_mark_as_a_path_is_exempt_from_the_check():
    marked = {key for cls in FORMS for key in _keys_marked_as_paths(cls)}
    assert {"continue_from", "deepspeed", "eval_dataset", "resume", "rewards.plugin"} <= marked
    assert not marked & NOT_PATHS


def test_every_exemption_names_a_field_of_a_form():
    """A renamed field leaves no stale exemption behind (nor does a typo exempt nothing)."""
    assert NOT_PATHS <= {f.key for cls in FORMS for f in fields_of(cls)}

