"""LLM-as-judge against a scripted endpoint: our own `tunesmith deploy` serving a tiny model trained to answer every
judge prompt "[[A]] Rating: 7/10" (a judge with a fixed first-position preference), a fixed rubric, and two models
under test behind a stdlib OpenAI-compatible endpoint (conftest.py).

A judge that always names A must come out as it should with the position swap: every row's two orders disagree, so
every row is a tie, agreement 0 and win rate 0.5; the rubric score is 7/10 for both models; a reply cut before its
verdict is counted and shown, never a crash."""

import itertools
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tiny import make_tiny_model

from tunesmith import api
from tunesmith.config import load
from tunesmith.config.eval import EvalConfig
from tunesmith.eval import judge as J

TUNESMITH = shutil.which("tunesmith", path=str(Path(sys.executable).parent)) or "tunesmith"
VERDICT = "[[A]] Rating: 7/10"  # its tokens are all different: one successor each
WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "amber", "frost", "lemon", "orbit", "pearl", "quartz", "code", "answer", "plan", "user"]
QUESTIONS = [f"code for {w}" for w in WORDS[:6]]
RUBRIC = "Correctness: the answer names the code the reference names. Brevity: one line."


def test_verdicts_and_ratings_are_parsed_or_counted_as_unparsed():
    assert J.parse_verdict("A is clearer. [[A]]") == "A" and J.parse_verdict("[[ C ]]") == "C"
    assert J.parse_verdict("I prefer [[A]], no wait, [[B]]") is None and J.parse_verdict("A is better") is None
    assert J.parse_rating("Good. Rating: [[8]]") == 8 and J.parse_rating("[[6.5]]") == 6.5
    assert J.parse_rating("I give it 9/10") == 9 and J.parse_rating("score: 3") == 3
    assert J.parse_rating("Rating: [[11]]") is None and J.parse_rating("fine") is None
    assert J.parse_verdict("<think>[[A]] or [[B]]? B is right.</think> Verdict: [[B]]") == "B"
    assert J.parse_rating("<think>maybe [[3]]</think>Rating: [[8]]") == 8


def test_both_orders_make_the_outcome_and_their_agreement_is_reported():
    def rec(row, order, verdict):
        return {"row": row, "order": order, "verdict": verdict, "reply": f"[[{verdict}]]" if verdict else "hmm"}

    b, t = ["base", "tuned"], ["tuned", "base"]
    records = [rec(0, b, "B"), rec(0, t, "A"),  # tuned wins in both orders
               rec(1, b, "A"), rec(1, t, "B"),  # base wins in both orders
               rec(2, b, "A"), rec(2, t, "A"),  # position bias: the orders disagree -> tie
               rec(3, b, "C"), rec(3, t, "C"),  # a tie named twice agrees
               rec(4, b, None), rec(4, t, "A")]  # one order unparsed: the row is left out
    judged = J._pairwise_summary(records, ["base", "tuned"])
    pair = judged.summary["pairs"]["tuned"]
    assert (pair["wins"], pair["losses"], pair["ties"], pair["judged"], pair["unparsed_rows"]) == (1, 1, 2, 4, 1)
    assert pair["agreement"] == 0.75 and pair["win_rate"] == 0.5
    assert judged.columns == {"tuned": {"judge_win": 0.5}} and judged.unparsed == ["hmm"]


# -----------------------------------------------------------------------------
# End to end: the judge is a tiny model behind `tunesmith deploy`


@pytest.fixture(scope="module")
def judge_run(tmp_path_factory):
    """A tiny model scripted through its weights to answer any chat prompt with VERDICT: its layers add nothing (zero
    output projections), so the last position holds the current token's embedding, and the LM head maps each token of
    the chain (the assistant header's newline, then VERDICT's tokens, then <|im_end|>) to the next one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = make_tiny_model(tmp_path_factory.mktemp("judge") / "scripted")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    chain = [tokenizer.encode("\n", add_special_tokens=False)[-1], *tokenizer.encode(VERDICT, add_special_tokens=False),
             tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert len(set(chain)) == len(chain)  # each token has one successor
    hidden = model.config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed = model.model.embed_tokens.weight
        head = torch.zeros(embed.shape[0], hidden)
        for i, (token, successor) in enumerate(itertools.pairwise(chain)):
            embed[token] = torch.nn.functional.one_hot(torch.tensor(i), hidden).float()
            head[successor] = 10 * torch.nn.functional.one_hot(torch.tensor(i), hidden).float()
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(head)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def judge_url(judge_run, tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("deploy") / "deploy.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([TUNESMITH, "deploy", "--model", str(judge_run), "--served-model-name", "judge",
                                 "--port", str(port), "--device", "cpu"], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"tunesmith deploy did not come up:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(60)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge-data")
    data = root / "codes.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": f"CODE {q.split()[-1]} OK"}]}) + "\n"
                            for q in QUESTIONS))
    rubric = root / "rubric.md"
    rubric.write_text(RUBRIC + "\n")
    return data, rubric


def test_pairwise_judge_through_the_console_script_swaps_positions(judge_url, answering, files, tmp_path):
    data, rubric = files
    out = tmp_path / "pairwise"
    proc = subprocess.run([TUNESMITH, "eval", "--compare", f"right={answering}#right", f"wrong={answering}#wrong",
                           "--dataset", str(data), "--judge-url", judge_url, "--rubric", str(rubric),
                           "--judge-max-tokens", "16", "--output-dir", str(out)], check=False, capture_output=True,
                          text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    judgements = [json.loads(line) for line in (out / "judgements.jsonl").read_text().splitlines()]
    assert len(judgements) == 2 * len(QUESTIONS)  # each row in both orders
    for row in range(len(QUESTIONS)):
        orders = [j["order"] for j in judgements if j["row"] == row]
        assert orders == [["right", "wrong"], ["wrong", "right"]]
    assert all(j["verdict"] == "A" and j["reply"] == VERDICT and j["judge"] == "judge" for j in judgements)
    results = json.loads((out / "results.json").read_text())
    pair = results["judge"]["pairs"]["wrong"]
    assert results["judge"]["mode"] == "pairwise" and results["judge"]["rubric"] == str(rubric)
    assert (pair["against"], pair["ties"], pair["wins"], pair["losses"]) == ("right", 6, 0, 0)
    assert pair["agreement"] == 0.0 and pair["win_rate"] == 0.5  # always "A": the swap exposes it
    assert results["models"]["wrong"]["scores"]["judge_win"] == 0.5 and "judge_win" in results["columns"]
    assert "orders agree on 0%" in proc.stderr and "judge_win" in proc.stdout


def test_rubric_scores_and_unparsable_replies_are_counted(judge_url, answering, files, tmp_path, caplog):
    data, rubric = files
    compare = ["--compare", f"right={answering}#right", f"wrong={answering}#wrong", "--dataset", str(data),
               "--judge-url", judge_url, "--judge-model", "judge", "--rubric", str(rubric), "--judge-mode", "score"]
    result = api.evaluate(load(EvalConfig, [*compare, "--output-dir", str(tmp_path / "score")]))
    assert result.scores["right"]["judge"] == pytest.approx(0.7) and result.scores["wrong"]["judge"] == pytest.approx(0.7)
    summary = json.loads(result.results.read_text())["judge"]
    assert summary["models"]["right"] == {"mean_rating": 7.0, "rated": 6, "unparsed": 0}

    # Two tokens are not enough for "Rating: [[7]]": every reply is unparsed, counted, shown, and the run finishes.
    with caplog.at_level(logging.WARNING, logger="tunesmith"):
        cut = api.evaluate(load(EvalConfig, [*compare, "--judge-max-tokens", "2", "--output-dir", str(tmp_path / "cut")]))
    summary = json.loads(cut.results.read_text())["judge"]
    assert summary["models"]["wrong"] == {"mean_rating": None, "rated": 0, "unparsed": 6}
    assert "judge" not in cut.scores["wrong"] and "12 replies named no verdict" in caplog.text
    lines = [json.loads(line) for line in (tmp_path / "cut" / "judgements.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and all(j["rating"] is None and j["reply"] for j in lines)


def test_a_judge_that_does_not_answer_is_refused_before_any_model_answers(answering, files, tmp_path):
    from tunesmith.errors import ConfigError

    data, _ = files
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    cfg = load(EvalConfig, ["--compare", f"right={answering}#right", "--dataset", str(data), "--judge-url", dead,
                            "--output-dir", str(tmp_path / "out")])
    with pytest.raises(ConfigError, match="judge_url: .* does not answer GET /models"):
        api.evaluate(cfg)
    missing = tmp_path / "no-rubric.md"
    with pytest.raises(ConfigError, match=f"rubric: {missing} is not a file"):
        api.evaluate(cfg.model_copy(update={"rubric": str(missing)}))
    with pytest.raises(ConfigError, match="judge_url: --judge-model, --judge-mode and --rubric need the judge's endpoint"):
        load(EvalConfig, ["--dataset", str(data), "--judge-model", "gpt-4o"])
    with pytest.raises(ConfigError, match="judge_mode: pairwise compares two or more models"):
        api.evaluate(cfg.model_copy(update={"judge_mode": "pairwise"}))
    assert not (tmp_path / "out").exists()  # refused before the output folder, let alone an answer
