"""`tunesmith doctor` reports the truth about this machine, planted problems included, with the fix for each."""

import importlib.metadata
import json

from e2e_cli import run_cli, run_main

from tunesmith.config.doctor import DoctorConfig
from tunesmith.doctor import doctor


def test_a_healthy_environment_passes_and_an_unwritable_output_folder_fails(tmp_path):
    ok = run_cli("doctor", "--json", "--output-dir", tmp_path / "runs")
    report = json.loads(ok.stdout)
    assert report["ok"] and ok.returncode == 0
    names = {c["name"]: c for c in report["checks"]}
    assert names["transformers"]["ok"] and names["transformers"]["found"] == importlib.metadata.version("transformers")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    # the console script is proven above; the planted problem needs no second interpreter
    bad = run_main("doctor", "--json", "--output-dir", blocker / "runs", check=False)
    assert bad.returncode == 1
    output = {c["name"]: c for c in json.loads(bad.stdout)["checks"]}["output folder"]
    assert not output["ok"] and "not writable" in output["found"] and "--output-dir" in output["fix"]


def test_a_missing_package_is_named_with_the_command_that_installs_it(monkeypatch, tmp_path, capsys):
    real = importlib.metadata.version

    def version(name):
        if name in ("deepspeed", "peft"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    report = doctor(DoctorConfig(output_dir=str(tmp_path), json=True))
    checks = {c.name: c for c in report.checks}
    assert checks["deepspeed"].level == "optional" and "tunesmith[deepspeed]" in checks["deepspeed"].fix
    assert [c.name for c in report.broken] == ["peft"]  # needed: a training command would fail
    assert checks["peft"].fix == "pip install -c constraints.txt 'peft==0.21.2'"
    assert json.loads(capsys.readouterr().out)["ok"] is False
