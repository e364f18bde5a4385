"""`tunesmith eval` through the console script: the tiny random model against a LoRA run trained on the toy data.

A few dozen LoRA steps teach the tiny random model the answer's frame ("CODE ... OK") but not to copy the word
(measured: exact match stays 0 of 12 for base and tuned), so "tuned beats base" is checked on ROUGE, and exact match
is checked where it must be 1.0: against the tuned model's own greedy answers from the first run, answered again by
the local engine and by `tunesmith deploy` serving the same run (one renderer for eval and serve)."""

import json
import os
import socket
import subprocess
import time
import urllib.request

import pytest

from e2e_cli import TUNESMITH, run_cli, run_main

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # on a busy 2-core machine, 2 torch threads per process thrash (~5x slower)


@pytest.fixture(scope="module")
def tuned_run(tiny_model, toy_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "toy-lora"
    run_main("sft", "--model", tiny_model, "--dataset", f"{toy_data}#48", "--max-steps", "24", "--batch-size", "4",
             "--learning-rate", "3e-2", "--max-length", "64", "--save-steps", "1000", "--output-dir", run,
             "--report-to", "none")
    return run / "final"


def test_eval_compares_base_and_tuned_in_one_table_and_one_chart(tiny_model, tuned_run, toy_data, tmp_path):
    out = tmp_path / "eval"
    proc = run_cli("eval", "--compare", f"base={tiny_model}", f"tuned={tuned_run}", "--dataset", toy_data,
                   "--generation.max-tokens", "8", "--output-dir", out, env=ONE_THREAD)
    assert {"results.json", "answers.jsonl", "scores.png", "config.yaml"} <= {p.name for p in out.iterdir()}
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG"
    results = json.loads((out / "results.json").read_text())
    base, tuned = results["models"]["base"]["scores"], results["models"]["tuned"]["scores"]
    assert results["rows"] == 12 and results["columns"] == ["exact_match", "bleu", "rouge1", "rouge2", "rougeL"]
    assert tuned["rougeL"] >= base["rougeL"] + 0.2, (base, tuned)  # the trained frame: CODE ... OK
    assert tuned["exact_match"] >= base["exact_match"]
    for name in ("base", "tuned", "exact_match", "rougeL"):
        assert name in proc.stdout  # the table
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 24 and all(a["completion_tokens"] <= 8 for a in answers)

    # Exact match end to end: scored against the tuned model's own greedy answers, a second run gives 1.0 everywhere.
    mine = tmp_path / "tuned_answers.jsonl"
    mine.write_text("".join(json.dumps({"messages": a["messages"] + [{"role": "assistant", "content": a["answer"]}]}) + "\n"
                            for a in answers if a["model"] == "tuned" and a["answer"].strip()))
    with deployed(tuned_run, tmp_path / "deploy.log") as url:
        # in this process: the console script is proven above, and the server is a process of its own
        again = run_main("eval", "--compare", f"local={tuned_run}", f"served={url}", "--dataset", mine,
                         "--generation.max-tokens", "8", "--output-dir", tmp_path / "again")
    models = json.loads((tmp_path / "again" / "results.json").read_text())["models"]
    perfect = {"exact_match": 1.0, "bleu": 1.0, "rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert models["local"]["scores"] == pytest.approx(perfect), again.stdout
    assert models["served"]["scores"] == pytest.approx(perfect) and models["served"]["spec"] == f"{url}#toy-lora"


class deployed:
    """`tunesmith deploy --adapters RUN` on a free port for the length of a with-block; yields its /v1 URL."""

    def __init__(self, adapters, log):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen([TUNESMITH, "deploy", "--adapters", str(adapters), "--port", str(self.port),
                                          "--device", "cpu"], stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **ONE_THREAD})

    def __enter__(self):
        deadline = time.time() + 180
        while time.time() < deadline and self.proc.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                return f"http://127.0.0.1:{self.port}/v1"
            except OSError:
                time.sleep(0.3)
        self.__exit__()
        raise AssertionError(f"tunesmith deploy did not come up:\n{self.log.read_text()[-3000:]}")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def test_a_bad_row_stops_eval_with_file_line_before_any_model_loads(toy_data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(toy_data.read_text() + json.dumps({"question": "2 + 2 =", "choices": ["3", "4"], "answer": "E"}) + "\n")
    proc = run_main("eval", "--model", "not-loaded/because-data-fails-first", "--dataset", bad, "--output-dir",
                    tmp_path / "out", check=False)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"{bad}:13: answer: 'E' is not a letter A-B" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
