"""The container recipe (docker/) installs exactly as `make` and CI do, and its commands are valid tunesmith commands.
No Docker engine runs on these machines: the install script itself is what CI runs (Makefile -> scripts/install.sh)."""

import re
from pathlib import Path

import yaml

from tunesmith.config import DeployConfig, load

ROOT = Path(__file__).resolve().parents[1]


def test_the_image_installs_with_the_script_make_and_ci_use():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"bash scripts/install\.sh /opt/venv", dockerfile)
    assert re.search(r"bash scripts/install\.sh \$\(VENV\)", makefile)  # the same script, so CI exercises it
    assert "HEALTHCHECK" in dockerfile and "tunesmith doctor" in dockerfile
    for copied in re.findall(r"^COPY (\S+)", dockerfile, flags=re.M):
        assert (ROOT / copied).exists(), copied


def test_compose_runs_a_valid_deploy_command():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    command = [part.replace("${RUN:-runs/prd-assistant/final}", "runs/x/final") for part in compose["services"]["deploy"]["command"]]
    assert command[0] == "deploy"
    cfg = load(DeployConfig, command[1:])
    assert cfg.host == "0.0.0.0" and cfg.port == 8000 and cfg.adapters == ["runs/x/final"]


def test_compose_runs_a_valid_web_ui_command():
    from tunesmith.config.webui import WebUIConfig

    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    command = compose["services"]["web-ui"]["command"]
    assert command[0] == "web-ui"
    cfg = load(WebUIConfig, command[1:])
    assert cfg.auth and cfg.host == "0.0.0.0"  # reachable from outside the container only with users logging in
