"""`evaluate` end to end without weights: scripted engines stand in for local models, a stdlib HTTP server for an
OpenAI-compatible endpoint. Checks what each model is asked, the scores, and the files left behind."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from tunesmith import api
from tunesmith.config import load
from tunesmith.config.eval import EvalConfig
from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.infer import Completion, Choice, Engine

ROWS = [
    {"messages": [{"role": "user", "content": "code for apple"}, {"role": "assistant", "content": "CODE apple OK"}]},
    {"messages": [{"role": "user", "content": "code for river"}, {"role": "assistant", "content": "CODE river OK"}]},
    {"question": "2 + 2 =", "choices": ["3", "4"], "answer": "B"},
    {"question": "Sky colour?", "choices": ["green", "blue", "red"], "answer": "blue"},
]
RIGHT = {"code for apple": "CODE apple OK", "code for river": "CODE river OK", "2 + 2 =": "B", "Sky colour?": "The answer is B."}


def right_answer(messages):
    return RIGHT[messages[-1]["content"].split("\n\n")[0]]


class FakeEngine(Engine):
    """Answers every prompt with answer(messages); counts how many engines are alive at once."""

    alive, most_alive, asked = 0, 0, []

    def __init__(self, answer):
        self.answer = answer
        FakeEngine.alive += 1
        FakeEngine.most_alive = max(FakeEngine.most_alive, FakeEngine.alive)

    def model_names(self):
        return ["default"]

    def count_prompt_tokens(self, request):
        return 1

    async def stream(self, request):
        raise NotImplementedError  # chat() is what eval calls

    def chat(self, requests, params, model=None, images=None):
        FakeEngine.asked += requests
        return [Completion([Choice(0, self.answer(m), "stop", 3)], 5) for m in requests]

    def shutdown(self):
        FakeEngine.alive -= 1


@pytest.fixture
def engines(monkeypatch):
    loads = []

    def fake_load(backend, model=None, adapters=None, device="auto", dtype="auto", system=None, **kw):
        loads.append({"model": model, "adapters": adapters, "system": system,
                      **({"chat_template_kwargs": kw["chat_template_kwargs"]} if kw.get("chat_template_kwargs") else {})})
        return FakeEngine(right_answer if adapters else lambda m: "I do not know")

    FakeEngine.alive, FakeEngine.most_alive, FakeEngine.asked = 0, 0, []
    monkeypatch.setattr("tunesmith.infer.load_engine", fake_load)
    return loads


@pytest.fixture
def endpoint():
    """/v1/models and /v1/chat/completions; half the answers right. Records every request body and header."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.reply({"object": "list", "data": [{"id": "served-model"}, {"id": "other"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"body": body, "auth": self.headers.get("Authorization"), "path": self.path})
            text = right_answer(body["messages"]) if "apple" in body["messages"][-1]["content"] or "2 + 2" in body["messages"][-1]["content"] else "no"
            message = {"role": "assistant", "content": text}
            if body.get("chat_template_kwargs", {}).get("enable_thinking"):
                message["reasoning_content"] = "Let me think."  # as vLLM returns it
            self.reply({"choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                        "usage": {"completion_tokens": 2}})

        def reply(self, data):
            raw = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    server.shutdown()


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return path


@pytest.fixture
def run_folder(tmp_path):
    final = tmp_path / "runs" / "toy" / "final"
    final.mkdir(parents=True)
    (final / "adapter_config.json").write_text("{}")
    return final


def test_base_adapter_and_endpoint_side_by_side(engines, endpoint, data, run_folder, tmp_path, capsys):
    url, seen = endpoint
    out = tmp_path / "out"
    cfg = load(EvalConfig, ["--compare", "base=some-base", str(run_folder), f"served={url}", "--dataset", str(data),
                            "--output-dir", str(out), "--api-key", "k123", "--generation.max-tokens", "7",
                            "--batch-size", "3"])
    result = api.evaluate(cfg)

    assert [(e["model"], e["adapters"]) for e in engines] == [("some-base", None), (None, {"toy": str(run_folder)})]
    assert FakeEngine.most_alive == 1  # each model is freed before the next one loads
    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == ["base", "toy", "served"]
    assert results["columns"] == ["exact_match", "bleu", "rouge1", "rouge2", "rougeL", "accuracy"]
    assert result.scores["toy"]["exact_match"] == 1.0 and result.scores["toy"]["bleu"] == pytest.approx(1.0)
    assert result.scores["toy"]["accuracy"] == 1.0  # "B" and "The answer is B." both name the right choice
    assert result.scores["base"]["exact_match"] == 0.0 and result.scores["base"]["accuracy"] == 0.0
    assert result.scores["served"]["exact_match"] == 0.5 and result.scores["served"]["accuracy"] == 0.5
    assert "tok:13a" in results["how"]["bleu"] and results["generation"]["max_tokens"] == 7

    # The endpoint: its first model, our key, the OpenAI names, and never the reference answer.
    assert len(seen) == 4 and all(s["auth"] == "Bearer k123" and s["path"] == "/v1/chat/completions" for s in seen)
    assert {s["body"]["model"] for s in seen} == {"served-model"}
    assert all(s["body"]["max_tokens"] == 7 and s["body"]["temperature"] == 0.0 for s in seen)
    assert all(m["role"] != "assistant" for s in seen for m in s["body"]["messages"])
    assert all(m["role"] != "assistant" for msgs in FakeEngine.asked for m in msgs)

    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 12 and answers[0]["source"] == f"{data}:1" and answers[0]["reference"] == "CODE apple OK"
    mc = next(a for a in answers if a["model"] == "toy" and a["source"].endswith(":4"))
    assert mc["choices"] == ["green", "blue", "red"] and mc["right"] == 1 and mc["picked"] == 1
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert [t["kind"] for t in config["_resolved"]["targets"]] == ["model", "adapters", "endpoint"]
    table = capsys.readouterr().out
    assert "exact_match" in table and "served" in table and "1.000" in table


def test_adapters_flag_and_a_named_endpoint_model(engines, endpoint, data, run_folder, tmp_path):
    url, seen = endpoint
    cfg = load(EvalConfig, ["--adapters", str(run_folder), "--model", "other-base", "--compare", f"{url}#other",
                            "--dataset", f"{data}", "--limit", "2", "--metrics", "exact_match", "--system", "Be brief.",
                            "--output-dir", str(tmp_path / "o")])
    result = api.evaluate(cfg)
    assert engines == [{"model": "other-base", "adapters": {"toy": str(run_folder)}, "system": "Be brief."}]
    assert list(result.scores) == ["toy", f"127.0.0.1:{url.split(':')[2].split('/')[0]}"]
    assert {s["body"]["model"] for s in seen} == {"other"} and len(seen) == 2
    assert result.scores["toy"] == {"exact_match": 1.0}


def test_the_evals_config_yaml_reruns_it_from_another_directory(engines, endpoint, tmp_path, monkeypatch):
    """Relative local paths are recorded absolute (config/local_paths.py), so `eval -c OUT/config.yaml` reruns it
    from anywhere; registry names, hub ids and endpoint URLs stay as written."""
    from e2e.e2e_cli import run_main

    url, _ = endpoint
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "data").mkdir(parents=True)
    (project / "data" / "mixed.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    (project / "runs" / "toy" / "final").mkdir(parents=True)
    (project / "runs" / "toy" / "final" / "adapter_config.json").write_text("{}")
    elsewhere.mkdir()
    monkeypatch.chdir(project)
    run_main("eval", "--compare", "base=smollm2-135m-instruct", "tuned=runs/toy/final", "Qwen/Qwen2.5-0.5B",
             f"served={url}", "--dataset", "data/mixed.jsonl#3", "--output-dir", "out")
    record = yaml.safe_load((project / "out" / "config.yaml").read_text())
    assert record["compare"] == ["base=smollm2-135m-instruct", f"tuned={project}/runs/toy/final", "Qwen/Qwen2.5-0.5B",
                                 f"served={url}"]
    assert (record["dataset"], record["output_dir"]) == ([f"{project}/data/mixed.jsonl#3"], f"{project}/out")
    first = json.loads((project / "out" / "results.json").read_text())["models"]

    monkeypatch.chdir(elsewhere)
    run_main("eval", "-c", "../project/out/config.yaml", "--output-dir", "again")
    again = json.loads((elsewhere / "again" / "results.json").read_text())["models"]
    assert {n: m["scores"] for n, m in again.items()} == {n: m["scores"] for n, m in first.items()}
    assert engines[4]["adapters"] == {"tuned": f"{project}/runs/toy/final"}  # read as the run's adapter again


def test_default_folder_is_runs_eval_time_and_results_are_not_overwritten_silently(engines, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = api.evaluate(load(EvalConfig, ["--model", "m", "--dataset", str(data)]))
    assert first.output_dir.parent.name == "runs" and first.output_dir.name.startswith("eval-")
    with pytest.raises(ConfigError, match="already holds eval results; pass --overwrite"):
        api.evaluate(load(EvalConfig, ["--model", "m", "--dataset", str(data), "--output-dir", str(first.output_dir)]))
    api.evaluate(load(EvalConfig, ["--model", "m", "--dataset", str(data), "--output-dir", str(first.output_dir), "--overwrite"]))


def test_mistakes_are_caught_before_any_model_loads(engines, data, tmp_path):
    gen_only = tmp_path / "gen.jsonl"
    gen_only.write_text(json.dumps(ROWS[0]) + "\n")
    with pytest.raises(ConfigError, match=r"metrics: accuracy needs multiple-choice rows \(choices \+ answer\)"):
        api.evaluate(load(EvalConfig, ["--model", "m", "--dataset", str(gen_only), "--metrics", "accuracy"]))
    with pytest.raises(ConfigError, match="two models are named 'a'"):
        api.evaluate(load(EvalConfig, ["--compare", "a=x", "a=y", "--dataset", str(data)]))
    with pytest.raises(ConfigError, match="limit: 0 scores nothing"):
        load(EvalConfig, ["--dataset", str(data), "--limit", "0"])
    with pytest.raises(ConfigError, match=r"unknown option --metric; did you mean --metrics\?"):
        load(EvalConfig, ["--dataset", str(data), "--metric", "bleu"])
    assert engines == []


def test_an_unreachable_endpoint_fails_before_any_model_loads_and_says_what_to_check(engines, data, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(TunesmithError, match=r"cannot reach the endpoint .* Is the server running"):
        api.evaluate(load(EvalConfig, ["--compare", "base=m", f"x=http://127.0.0.1:{port}/v1", "--dataset", str(data),
                                       "--output-dir", str(tmp_path / "o")]))
    assert engines == [] and not (tmp_path / "o").exists()


def test_chat_template_kwargs_reach_local_models_and_endpoints_and_reasoning_is_kept_apart(engines, endpoint, data,
                                                                                            tmp_path):
    url, seen = endpoint
    out = tmp_path / "out"
    cfg = load(EvalConfig, ["--compare", "base=some-base", f"served={url}", "--dataset", str(data), "--output-dir",
                            str(out), "--chat-template-kwargs.enable-thinking", "true"])
    result = api.evaluate(cfg)
    assert engines[0]["chat_template_kwargs"] == {"enable_thinking": True}
    assert all(s["body"]["chat_template_kwargs"] == {"enable_thinking": True} for s in seen)
    assert result.scores["served"]["exact_match"] == 0.5  # the content is scored, not the reasoning
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert {r["reasoning"] for r in rows if r["model"] == "served"} == {"Let me think."}


def test_system_reaches_endpoints_as_local_models_get_it(engines, endpoint, tmp_path):
    # --system goes over the trained system prompt of local models (templates insert it where a row has none); an
    # endpoint compared beside them must be asked the same, or the table compares two different prompts
    url, seen = endpoint
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"messages": [{"role": "user", "content": "code for apple"},
                                             {"role": "assistant", "content": "CODE apple OK"}]}) + "\n" +
                    json.dumps({"messages": [{"role": "system", "content": "Row's own."},
                                             {"role": "user", "content": "code for river"},
                                             {"role": "assistant", "content": "CODE river OK"}]}) + "\n")
    cfg = load(EvalConfig, ["--compare", "base=some-base", f"served={url}", "--dataset", str(rows), "--output-dir",
                            str(tmp_path / "out"), "--system", "Be brief."])
    api.evaluate(cfg)
    assert engines[0]["system"] == "Be brief."
    systems = sorted(s["body"]["messages"][0]["content"] for s in seen if s["body"]["messages"][0]["role"] == "system")
    assert systems == ["Be brief.", "Row's own."] and all(len(s["body"]["messages"]) == 2 for s in seen)
