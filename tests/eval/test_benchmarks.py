"""`tunesmith eval --benchmark`: lm-evaluation-harness tasks through our console script (its main() in this process,
a new interpreter where the environment must be read at import) on a tiny random model give the harness's own
numbers; a missing dataset says what to download; code benchmarks run in the sandbox, which kills an infinite loop
and refuses the network and writes outside its folder."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tunesmith import api
from tunesmith.config.eval import EvalConfig
from tunesmith.errors import ConfigError, DataError
from tunesmith.eval.sandbox import run_python

TUNESMITH = shutil.which("tunesmith", path=str(Path(sys.executable).parent)) or "tunesmith"
pytest.importorskip("lm_eval", reason="lm-eval is in the bench extra: pip install 'tunesmith[bench]'")

QUESTIONS = [("What is 2+2?", ["3", "4", "5"], 1), ("Capital of France?", ["Paris", "Rome", "Oslo"], 0),
             ("Colour of the sky?", ["green", "blue", "red"], 1), ("Opposite of hot?", ["cold", "warm"], 0),
             ("Largest planet?", ["Mars", "Jupiter", "Venus"], 1), ("Water freezes at?", ["0 C", "50 C"], 0),
             ("Legs on a spider?", ["six", "eight", "ten"], 1), ("First letter?", ["A", "Z"], 0),
             ("Days in a week?", ["five", "seven", "nine"], 1), ("Fastest land animal?", ["cheetah", "snail"], 0),
             ("Sun rises in the?", ["west", "east"], 1), ("Ice is?", ["cold", "hot", "loud"], 0)]


def run_cli(*args, env=None):
    # one OpenMP thread, as tests/e2e/e2e_cli.py's run_cli: a second one mostly waits for a busy core
    return subprocess.run([TUNESMITH, "eval", *args], capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1",
                               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(env or {})})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("bench") / "tiny")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A multiple-choice task in the harness's own format: a YAML file over local JSONL rows."""
    folder = tmp_path_factory.mktemp("tasks")
    rows = folder / "tiny_mc.jsonl"
    rows.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    (folder / "tiny_mc.yaml").write_text(f"""task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {rows}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""")
    return folder


def test_console_script_gives_the_harness_own_scores(tiny, task_dir, tmp_path, monkeypatch, capsys):
    import lm_eval
    from lm_eval.tasks import TaskManager

    from tunesmith.cli.main import main

    # The console script's main() in this process (no new interpreter's imports): reading local files needs nothing
    # read at import; the sandboxed humaneval run below goes through the console script itself.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    code = main(["eval", "--benchmark", "tiny_mc", "--benchmark-dir", str(task_dir), "--model", str(tiny),
                 "--output-dir", str(out)])
    done = capsys.readouterr()
    assert code == 0, done.err[-3000:]
    assert "tiny_mc:acc" in done.out  # our table
    results = json.loads((out / "results.json").read_text())
    ours = results["models"]["tiny"]["scores"]

    direct = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(tiny), "dtype": "float32"},
                                     tasks=["tiny_mc"], device="cpu", batch_size=32,
                                     task_manager=TaskManager(include_path=str(task_dir), include_defaults=False))
    theirs = direct["results"]["tiny_mc"]
    assert ours == {"tiny_mc:acc": theirs["acc,none"], "tiny_mc:acc_norm": theirs["acc_norm,none"]}
    assert 0 < ours["tiny_mc:acc"] < 1  # a score, not a degenerate all-or-nothing
    # the same documents judged the same way, one by one
    samples = [json.loads(line) for line in (out / "benchmarks" / "tiny-samples.jsonl").read_text().splitlines()]
    assert [s["acc"] for s in sorted(samples, key=lambda s: s["doc_id"])] == \
           [s["acc"] for s in sorted(direct["samples"]["tiny_mc"], key=lambda s: s["doc_id"])]
    raw = json.loads((out / "benchmarks" / "tiny.json").read_text())
    assert raw["results"]["tiny_mc"]["acc,none"] == theirs["acc,none"] and raw["lm_eval_version"] == lm_eval.__version__
    assert results["models"]["tiny"]["benchmarks"]["tiny_mc:acc"]["stderr"] == pytest.approx(theirs["acc_stderr,none"])


def test_missing_dataset_names_the_download_command(tiny, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as err:
        api.evaluate(EvalConfig(benchmark=["gsm8k", "arc"], model=str(tiny)))
    message = str(err.value)
    assert "tunesmith download openai/gsm8k --kind dataset" in message
    assert "tunesmith download allenai/ai2_arc --kind dataset" in message
    assert "arc_easy" in message and "arc_challenge" in message


# -----------------------------------------------------------------------------
# Code benchmarks: the harness's own humaneval task over a hub-cache copy of a five-problem dataset


PROBLEMS = [("add", "def add(a, b):\n    return a + b\n", "assert f(2, 3) == 5"),       # right
            ("sub", "def sub(a, b):\n    return a + b\n", "assert f(5, 3) == 2"),       # wrong
            ("spin", "def spin():\n    while True:\n        pass\n", "f()"),             # never ends
            ("fetch", ("def fetch():\n    import socket\n    socket.create_connection(('127.0.0.1', PORT), timeout=1)\n"
                       "    return True\n"), "assert f()"),                                # network
            ("leak", "def leak():\n    open(LEAK, 'w').write('x')\n    return True\n", "assert f()")]  # writes outside


@pytest.fixture
def listener():
    """A TCP server on the loopback: the sandboxed code must never reach it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.2)
    reached = []

    def accept():
        while not stop.is_set():
            try:
                reached.append(server.accept()[0])
            except OSError:
                continue

    stop = threading.Event()
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], reached
    stop.set()
    thread.join()
    server.close()


def test_humaneval_runs_generated_code_only_in_the_sandbox(tiny, tmp_path, listener):
    port, reached = listener
    leak = tmp_path / "leaked.txt"
    hf_home = tmp_path / "hf"  # the hub cache as `tunesmith download openai/openai_humaneval --kind dataset` leaves it
    repo = hf_home / "hub" / "datasets--openai--openai_humaneval"
    snapshot = repo / "snapshots" / ("0" * 39 + "1")
    (snapshot / "openai_humaneval").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snapshot.name)
    with (snapshot / "openai_humaneval" / "test.jsonl").open("w") as f:
        for i, (name, body, check) in enumerate(PROBLEMS):
            body = body.replace("PORT", str(port)).replace("LEAK", repr(str(leak)))
            # the prompt ends in a comment, so the one generated token (--max-tokens 1) cannot change the program
            f.write(json.dumps({"task_id": f"Tiny/{i}", "prompt": body + "# ", "canonical_solution": "",
                                "test": f"\ndef check(f):\n    {check}\n", "entry_point": name}) + "\n")
    args = ["--benchmark", "humaneval", "--model", str(tiny), "--max-tokens", "1"]

    with pytest.raises(ConfigError, match="humaneval run the code the model writes.*--allow-code-execution"):
        api.evaluate(EvalConfig(benchmark=["humaneval"], model=str(tiny), output_dir=str(tmp_path / "no")))

    done = run_cli(*args, "--allow-code-execution", "--output-dir", str(tmp_path / "out"), env={"HF_HOME": str(hf_home)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "generated code ran in tunesmith's sandbox" in done.stderr + done.stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["models"]["tiny"]["scores"] == {"humaneval:pass@1(create_test)": pytest.approx(0.2)}
    runs = [json.loads(line) for line in (tmp_path / "out" / "benchmarks" / "tiny-sandbox.jsonl").read_text().splitlines()]
    status = {p[0]: next(r for r in runs if f"def {p[0]}(" in r["program"]) for p in PROBLEMS}
    assert status["add"]["status"] == "passed"
    assert status["sub"]["status"] == "failed" and "AssertionError" in status["sub"]["stderr"]
    assert status["spin"]["status"] == "timeout"
    assert status["fetch"]["status"] == "failed" and "PermissionError: sandbox: socket" in status["fetch"]["stderr"]
    assert not reached
    assert status["leak"]["status"] == "failed" and "outside the sandbox directory" in status["leak"]["stderr"]
    assert not leak.exists()


# -----------------------------------------------------------------------------
# The sandbox itself


def test_sandbox_passes_good_code_and_kills_an_infinite_loop():
    good = run_python("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\nprint('ok')", timeout=5)
    assert good.passed and good.stdout.strip() == "ok"
    assert run_python("assert 1 == 2").status == "failed"
    loop = run_python("while True:\n    pass", timeout=1.0)
    assert loop.status == "timeout" and loop.seconds < 4


def test_sandbox_blocks_the_network(listener):
    port, reached = listener
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hello')"
    result = run_python(code, timeout=5)
    assert result.status == "failed" and "PermissionError: sandbox: socket" in result.stderr
    raw = run_python(f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))", timeout=5)
    assert raw.status == "failed"
    assert not reached


def test_sandbox_blocks_writes_outside_its_folder_and_child_processes(tmp_path):
    target = tmp_path / "escape.txt"
    for code in (f"open({str(target)!r}, 'w').write('x')",
                 f"import os\nfd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'x')",
                 f"import os\nos.remove({str(Path(__file__))!r})",
                 "import subprocess\nsubprocess.run(['touch', '/tmp/tunesmith-sandbox-touch'])",
                 "import os\nwhile True:\n    os.fork()"):
        result = run_python(code, timeout=5)
        assert result.status == "failed", (code, result)
    assert not target.exists() and Path(__file__).exists()
    inside = run_python("open('mine.txt', 'w').write('x')\nprint(open('mine.txt').read())", timeout=5)
    assert inside.passed and inside.stdout.strip() == "x"
    assert run_python("x = bytearray(8 << 30)", timeout=5, memory_mb=512).status == "failed"  # memory limit


# -----------------------------------------------------------------------------
# An endpoint: tunesmith deploy's app on the same tiny model, as lm-eval's local-completions model


@pytest.fixture
def served(tiny):
    import time

    import uvicorn

    from tunesmith.config import DeployConfig
    from tunesmith.infer import load_engine
    from tunesmith.serve.app import build_app

    engine = load_engine("transformers", str(tiny), None, "cpu", "float32")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(engine, DeployConfig(model=str(tiny))), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(30)
    engine.shutdown()


def test_an_endpoint_answers_generation_tasks_as_the_local_model(tiny, served, tmp_path):
    rows = tmp_path / "gen.jsonl"
    rows.write_text("".join(json.dumps({"question": q, "answer": c[a]}) + "\n" for q, c, a in QUESTIONS[:4]))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny_gen.yaml").write_text(f"""task: tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {rows}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["Q:"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
""")
    for chat in (False, True):  # raw prompts on /completions; chats (the harness renders, or the server) on /chat/...
        out = tmp_path / f"out-{chat}"
        result = api.evaluate(EvalConfig(benchmark=["tiny_gen"], benchmark_dir=[str(tmp_path / "tasks")],
                                         compare=[f"local={tiny}", f"served={served}"], output_dir=str(out),
                                         benchmark_chat_template=chat))
        assert set(result.scores) == {"local", "served"}
        answers = {name: [json.loads(line)["resps"][0][0] for line in
                          (out / "benchmarks" / f"{name}-samples.jsonl").read_text().splitlines()]
                   for name in ("local", "served")}
        assert answers["local"] == answers["served"] and len(answers["local"]) == 4  # the same greedy text, row by row
        assert all(answers["local"]), answers  # text, not empty strings that would match anything
        assert result.scores["local"] == result.scores["served"]
    with pytest.raises(ConfigError, match="log-likelihood"):  # multiple choice needs prompt log-probabilities
        api.evaluate(EvalConfig(benchmark=["tiny_gen", "arc"], benchmark_dir=[str(tmp_path / "tasks")],
                                compare=[f"served={served}"], output_dir=str(tmp_path / "no")))


# -----------------------------------------------------------------------------
# EvalScope in its own venv: scripts/test-evalscope.sh builds it and runs this (about a minute, so not in `make test`)

EVALSCOPE = Path(__file__).resolve().parents[2] / ".venv-evalscope" / "bin" / "python"
DIRECT = """import json, sys
from evalscope import TaskConfig, run_task
url, model, data, work = sys.argv[1:]
reports = run_task(TaskConfig(model=model, api_url=url, api_key="EMPTY", eval_type="openai_api", datasets=["general_mcq"],
                              dataset_args={"general_mcq": {"local_path": data, "subset_list": ["tiny"]}},
                              generation_config={"temperature": 0.0, "max_tokens": 4}, work_dir=work, no_timestamp=True))
print("SCORE", json.dumps(reports["general_mcq"].model_dump(mode="json")["metrics"][0]["score"]))
"""


@pytest.mark.skipif(not (EVALSCOPE.exists() and os.environ.get("TUNESMITH_TEST_EVALSCOPE")),
                    reason="EvalScope's own venv: run bash scripts/test-evalscope.sh")
def test_evalscope_backend_gives_evalscope_own_scores(tiny, served, tmp_path):
    data = tmp_path / "mcq"
    data.mkdir()
    with (data / "tiny_val.jsonl").open("w") as f:  # EvalScope's general_mcq format: question, A, B, ..., answer
        for q, c, a in QUESTIONS[:6]:
            f.write(json.dumps({"question": q, **dict(zip("ABC", c)), "answer": "ABC"[a]}) + "\n")
    done = run_cli("--benchmark", "general_mcq", "--benchmark-backend", "evalscope", "--benchmark-dir", str(data),
                   "--model", str(tiny), "--max-tokens", "4", "--output-dir", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    ours = json.loads((tmp_path / "out" / "results.json").read_text())["models"]["tiny"]["scores"]
    direct = subprocess.run([str(EVALSCOPE), "-c", DIRECT, served, "tiny", str(data), str(tmp_path / "direct")],
                            capture_output=True, text=True, check=False, timeout=600)
    assert direct.returncode == 0, direct.stderr[-3000:]
    score = json.loads(direct.stdout.split("SCORE", 1)[1])
    assert ours == {"general_mcq:accuracy": score}

    def answers(work):
        files = sorted(Path(work).glob("predictions/*/general_mcq_tiny.jsonl"))
        return [json.loads(line)["model_output"]["choices"][0]["message"]["content"]
                for line in files[0].read_text().splitlines()]

    assert answers(tmp_path / "out" / "benchmarks" / "evalscope-tiny") == answers(tmp_path / "direct")


def test_a_run_folder_is_its_adapter_over_the_base(tiny, task_dir, tmp_path):
    """--adapters runs/NAME/final is the harness's hf model with peft= over the base the run recorded."""
    import lm_eval
    import yaml
    from lm_eval.tasks import TaskManager
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = tmp_path / "runs" / "lora"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(run / "final")  # B != 0: the adapter changes the scores
    (run / "config.yaml").write_text(yaml.safe_dump({"model": str(tiny)}))
    result = api.evaluate(EvalConfig(benchmark=["tiny_mc"], benchmark_dir=[str(task_dir)],
                                     adapters=str(run / "final"), output_dir=str(tmp_path / "out")))
    direct = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(tiny), "peft": str(run / "final"),
                                                             "dtype": "float32"},
                                     tasks=["tiny_mc"], device="cpu", batch_size=32,
                                     task_manager=TaskManager(include_path=str(task_dir), include_defaults=False))
    assert result.scores["lora"] == {"tiny_mc:acc": direct["results"]["tiny_mc"]["acc,none"],
                                     "tiny_mc:acc_norm": direct["results"]["tiny_mc"]["acc_norm,none"]}
    ours = [json.loads(line) for line in (tmp_path / "out" / "benchmarks" / "lora-samples.jsonl").read_text().splitlines()]
    assert [s["resps"] for s in sorted(ours, key=lambda s: s["doc_id"])] == \
           json.loads(json.dumps([s["resps"] for s in sorted(direct["samples"]["tiny_mc"], key=lambda s: s["doc_id"])]))


def test_sandbox_without_a_network_namespace_still_refuses_sockets_and_outside_writes(monkeypatch, listener, tmp_path):
    """Where `unshare` is missing or not allowed, the audit hook alone stands between the program and the network."""
    from tunesmith.eval import sandbox

    monkeypatch.setattr(sandbox, "probe", lambda: sandbox.Layers("audit hook only", "the caller's", ()))
    port, reached = listener
    result = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'x')")
    assert result.status == "failed" and "PermissionError: sandbox: socket" in result.stderr and not reached
    assert run_python(f"open({str(tmp_path / 'out.txt')!r}, 'w')").status == "failed"
    assert not (tmp_path / "out.txt").exists()
    assert run_python("while True:\n    pass", timeout=1.0).status == "timeout"
