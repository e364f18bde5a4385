"""`tunesmith export` through the console script: merge + bitsandbytes 4-bit in one command, the report printed and
written, `--inspect` printing the chain, bad input without a traceback."""

import json
import shutil

import pytest
from e2e_cli import run_cli, run_main


@pytest.fixture(scope="module")
def final(tiny_model, toy_data, tmp_path_factory):
    from tunesmith import SFTConfig, sft

    run = tmp_path_factory.mktemp("runs") / "toy"
    sft(SFTConfig(model=str(tiny_model), dataset=[str(toy_data)], max_steps=2, batch_size=4, output_dir=str(run),
                  report_to=[]))
    return run / "final"


def test_export_merges_quantizes_reports_and_inspects(final, tmp_path):
    out = tmp_path / "prd-bnb4"
    proc = run_cli("export", "--adapters", final, "--quant", "bnb4", "--output", out)
    assert "max |logit difference|" in proc.stderr and "greedy agreement on 4 prompts" in proc.stderr
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "tokenizer.json", "lineage.json",
                                               "export_report.json", "tunesmith_template.json"}
    report = json.loads((out / "export_report.json").read_text())
    assert f"{report['perplexity_before']:.3f} -> {report['perplexity_after']:.3f}" in proc.stderr
    assert json.loads((out / "config.json").read_text())["quantization_config"]["load_in_4bit"] is True

    shown = run_main("export", "--inspect", out).stdout  # reads files only: the console script is proven above
    assert shown.splitlines()[1] == "  files: match the record"
    assert "quantized by `tunesmith export`" in shown and "<- adapter by `tunesmith sft`" in shown
    assert "export: quant=bnb4" in shown


def test_bad_input_is_one_line_without_traceback(tmp_path):
    proc = run_main("export", check=False)
    assert proc.returncode == 2 and "adapters: give --adapters" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_main("export", "--inspect", tmp_path, check=False)
    assert proc.returncode == 1 and "no lineage.json" in proc.stderr and "Traceback" not in proc.stderr


def test_an_output_holding_the_run_or_other_files_is_refused_not_deleted(final, tmp_path, monkeypatch):
    run = shutil.copytree(final.parent, tmp_path / "toy")  # the outside tester's `--output RUN` deleted the run
    kept = sorted(p.name for p in run.iterdir())
    monkeypatch.chdir(run)
    for output in (run, "."):
        proc = run_main("export", "--adapters", run / "final", "--output", output, "--overwrite", check=False)
        assert proc.returncode == 2 and "which is the source adapter" in proc.stderr
        assert "Traceback" not in proc.stderr
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    proc = run_main("export", "--adapters", run / "final", "--output", other, check=False)
    assert proc.returncode == 2 and "pass --overwrite to delete them" in proc.stderr
    assert sorted(p.name for p in run.iterdir()) == kept and (other / "todo.txt").read_text() == "keep me"
