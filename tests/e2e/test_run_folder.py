"""The run folder as a context: its log ends with its run, and one run at a time writes into it."""

import logging

from e2e_cli import run_main

from tunesmith import SFTConfig
from tunesmith.train.run import LOCK, open_run


def test_two_runs_in_one_process_each_log_only_their_own_lines(tiny_model, toy_data, tmp_path):
    """The wizard fine-tunes, then aligns, in one process: the second run must not write into the first's train.log,
    and the consoles get their levels back."""
    from tunesmith.train.sft import sft

    console = logging.StreamHandler()
    logging.getLogger("tunesmith").addHandler(console)
    try:
        first = sft(SFTConfig(model=str(tiny_model), dataset=[str(toy_data)], max_steps=2, batch_size=4,
                              output_dir=str(tmp_path / "first"), report_to=["none"], logging_steps=1))
        first_log = (first.run_dir / "train.log").read_text()
        assert first_log.strip()
        assert console.level == logging.NOTSET

        second = sft(SFTConfig(model=str(tiny_model), dataset=[str(toy_data)], max_steps=2, batch_size=4,
                               output_dir=str(tmp_path / "second"), report_to=["none"], logging_steps=1,
                               system="SECOND RUN"))
        assert (first.run_dir / "train.log").read_text() == first_log  # untouched by the second run
        second_log = (second.run_dir / "train.log").read_text()
        assert second_log and first_log not in second_log
        assert console.level == logging.NOTSET
        assert not any(isinstance(h, logging.FileHandler) for h in logging.getLogger("tunesmith").handlers)
    finally:
        logging.getLogger("tunesmith").removeHandler(console)


def test_a_second_run_on_a_folder_in_use_stops_at_once(tiny_model, toy_data, tmp_path):
    out = tmp_path / "busy"
    # In this process: flock conflicts between two opens of the file even in one process, so the refusal is the one
    # another process would get.
    with open_run(SFTConfig(dataset=["x"], output_dir=str(out))):
        proc = run_main("sft", "--model", tiny_model, "--dataset", toy_data, "--max-steps", "1", "--output-dir", out,
                        "--report-to", "none", check=False)
    assert proc.returncode == 2
    assert f"{out} is in use by another tunesmith run (pid " in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "config.yaml").exists()  # the second run wrote nothing
    assert (out / LOCK).read_text() == ""  # released cleanly


def test_a_stale_lock_from_a_killed_run_is_named_and_taken_over(tiny_model, toy_data, tmp_path):
    out = tmp_path / "stale"
    out.mkdir()
    (out / LOCK).write_text("pid 999999, started 2026-12-01T10:00:00")  # what a SIGKILLed run leaves behind
    proc = run_main("sft", "--model", tiny_model, "--dataset", toy_data, "--max-steps", "1", "--output-dir", out,
                    "--report-to", "none")
    assert "stale lock" in proc.stderr and "pid 999999" in proc.stderr
    assert (out / "final").is_dir()
