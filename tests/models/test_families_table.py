"""README.md's family table is the registry's (tunesmith/models/table.py), and `tunesmith models` prints it."""

from pathlib import Path

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
