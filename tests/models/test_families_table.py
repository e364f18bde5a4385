"""README.md's family table is the registry's (tunesmith/models/table.py), and `tunesmith models` prints it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.cli.main import main
from tunesmith.models.families import FAMILIES
from tunesmith.models.table import markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_table_is_generated_from_the_registry():
    text = README.read_text(encoding="utf-8")
    table = text.split("<!-- families:start -->\n")[1].split("<!-- families:end -->")[0]
    assert table == markdown(), "regenerate the README table: python -c 'from tunesmith.models.table import markdown; print(markdown())'"
    assert len(FAMILIES) >= 20


def test_tunesmith_models_lists_every_family(capsys):
    assert main(["models", "--json"]) == 0
    out = capsys.readouterr().out
    assert all(f'"family": "{name}"' in out for name in FAMILIES)
    assert main(["models", "--family", "qwen3"]) == 0
    assert "Qwen-Qwen3-0.6B.jinja" in capsys.readouterr().out


def test_the_console_script_prints_the_families_and_nothing_else():
    """Through the installed `tunesmith` (the CLI imports every command's config): JSON on stdout, a clean stderr
    (ModelsConfig's --json once made every command print pydantic's field-shadowing warning), a bad family exit 1."""
    tunesmith = shutil.which("tunesmith", path=str(Path(sys.executable).parent)) or "tunesmith"
    proc = subprocess.run([tunesmith, "models", "--json"], check=False, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    listed = json.loads(proc.stdout)
    assert [r["family"] for r in listed["families"]] == list(FAMILIES) and "glm4.5" in listed["not_registered"]
    bad = subprocess.run([tunesmith, "models", "--family", "qwen9"], check=False, capture_output=True, text=True,
                          timeout=120)
    assert bad.returncode == 1 and "family 'qwen9': not registered" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("width", [80, 200])
def test_the_table_fits_the_terminal_with_every_name_whole(width, capsys, monkeypatch):
    """At 80 columns rich folded all eight columns mid-word ('qwen3-m|oe', 'Qwen/Qw|en2.5-7|B-Instr|uct'). Now the
    columns that do not fit whole are left out (and named), and a family or hub id is never broken."""
    monkeypatch.setenv("COLUMNS", str(width))
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= width for line in lines)
    cells = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines if line.startswith("│")]
    assert [row[0] for row in cells if row[0]] == list(FAMILIES)
    if width == 80:
        assert any(line.startswith("Left out to fit 80 columns: sft step, architecture, example") for line in lines)
    else:  # wide enough for every column: each example hub id whole on its family's line
        assert not any(line.startswith("Left out") for line in lines)
        assert [row[2] for row in cells if row[0]] == [f.example for f in FAMILIES.values()]
