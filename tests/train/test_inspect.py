"""`tunesmith data inspect` shows exactly the tokens sft trains on, and a dataset that never trains an end-of-turn
token is refused by inspect and by training before any weights load."""

import json
import re

import pytest

from tunesmith import api
from tunesmith.config import SFTConfig
from tunesmith.config.data import DataInspectConfig
from tunesmith.data.load import load_rows
from tunesmith.errors import DataError
from tunesmith.templates import IGNORE
from tunesmith.train.preflight import load_template
from tunesmith.train.tokenize import tokenize_sft

# A known row: a system prompt, a first answer kept out of the loss, a second answer trained; non-ASCII text that
# byte-level BPE splits over several tokens.
ROW = {"messages": [{"role": "system", "content": "You count."},
                    {"role": "user", "content": "Count to three, señor 你好."},
                    {"role": "assistant", "content": "1 2 3", "loss": False},
                    {"role": "user", "content": "And to five?"},
                    {"role": "assistant", "content": "1 2 3 4 5"}]}
# Ends answers with plain text that is no stop token: a model tuned on it never emits EOS.
NO_STOP_TEMPLATE = ("{% for m in messages %}{{ '### ' + m['role'] + ':\n' + m['content'] }}"
                    "{% if m['role'] == 'assistant' %}{{ ' [END]' }}{% endif %}{{ '\n\n' }}{% endfor %}"
                    "{% if add_generation_prompt %}{{ '### assistant:\n' }}{% endif %}")


@pytest.fixture(scope="module")
def no_stop_model(tiny, tmp_path_factory):
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("nostop") / "tiny"
    shutil.copytree(tiny, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = NO_STOP_TEMPLATE
    tok.save_pretrained(folder)
    return folder


def test_inspect_marks_exactly_the_tokens_sft_trains(tiny, tmp_path):
    data = tmp_path / "row.jsonl"
    data.write_text(json.dumps(ROW, ensure_ascii=False) + "\n")
    cfg = DataInspectConfig(dataset=[str(data)], model=str(tiny), output_dir=str(tmp_path / "out"))
    report = api.data_inspect(cfg)

    template, _ = load_template(SFTConfig(model=str(tiny), dataset=[str(data)]))
    sft_ds, problems = tokenize_sft(load_rows([str(data)], kind="sft").rows, template, "assistant", 2048)
    assert not problems and len(report.samples) == len(sft_ds) == 1
    view, ids, labels = report.samples[0], sft_ds[0]["input_ids"], sft_ds[0]["labels"]
    assert view.ids == ids and view.labels == labels
    shown_weights = [p.weight for p in view.pieces for _ in p.ids]
    assert [p_id for p in view.pieces for p_id in p.ids] == ids
    assert shown_weights == [int(label != IGNORE) for label in labels]
    trained_text = "".join(p.text for p in view.pieces if p.weight)
    assert trained_text == "1 2 3 4 5<|im_end|>"  # the second answer and its end of turn; the first is context
    assert [p.text for p in view.pieces if p.eot] == ["<|im_end|>"]  # exactly one trained end of turn
    assert any("你" in p.text for p in view.pieces)  # byte tokens of one character shown whole
    assert report.ending_samples == 1

    page = report.html.read_text()
    weights = [int(w) for w, ids_text in re.findall(r"data-w='(\d)' data-ids='([\d ]+)'", page)
               for _ in ids_text.split()]
    assert weights == shown_weights
    assert page.count("class='eot' data-w='1'") == 1


def test_inspect_shows_where_max_length_cuts(tiny, tmp_path):
    data = tmp_path / "row.jsonl"
    data.write_text(json.dumps(ROW, ensure_ascii=False) + "\n")
    n = len(api.data_inspect(DataInspectConfig(dataset=[str(data)], model=str(tiny),
                                               output_dir=str(tmp_path / "a"))).samples[0].ids)
    for mode, cut in (("right", lambda i: i >= n - 5), ("left", lambda i: i < 5)):
        cfg = DataInspectConfig(dataset=[str(data)], model=str(tiny), max_length=n - 5, truncation=mode,
                                output_dir=str(tmp_path / mode))
        if mode == "right":  # the only answer trained loses its end of turn: refused after showing the row
            with pytest.raises(DataError, match="never learn to stop"):
                api.data_inspect(cfg)
            continue
        view = api.data_inspect(cfg).samples[0]
        assert [i for i, p in enumerate(view.pieces) for _ in p.ids if p.cut] == [i for i in range(n) if cut(i)]
        assert "✂" in (tmp_path / mode / "inspect.html").read_text()


def test_a_template_whose_answers_never_train_a_stop_token_is_refused(no_stop_model, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps(ROW, ensure_ascii=False) + "\n")
    with pytest.raises(DataError, match=r"never learn to stop.*' \[END\]'.*no token that stops generation"):
        api.data_inspect(DataInspectConfig(dataset=[str(data)], model=str(no_stop_model),
                                           output_dir=str(tmp_path / "out")))
    assert (tmp_path / "out" / "inspect.html").exists()  # shown first, so the user sees why
    run = tmp_path / "run"
    with pytest.raises(DataError, match="never learn to stop"):  # training refuses before any weights load
        api.sft(SFTConfig(model=str(no_stop_model), dataset=[str(data)], output_dir=str(run), max_steps=1))
    assert not (run / "config.yaml").exists()


def test_preference_answers_that_never_stop_are_refused(no_stop_model, tmp_path):
    from tunesmith.config.rlhf import RLHFConfig

    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "Count.", "chosen": "1 2 3", "rejected": "3 2 1"}) + "\n")
    with pytest.raises(DataError, match="never learn to stop"):
        api.rlhf(RLHFConfig(method="dpo", model=str(no_stop_model), dataset=[str(data)], output_dir=str(tmp_path / "r"),
                            max_steps=1))


def test_data_inspect_through_the_console_script(tiny, tmp_path):
    from e2e.e2e_cli import run_cli

    data = tmp_path / "row.jsonl"
    data.write_text(json.dumps(ROW, ensure_ascii=False) + "\n")
    proc = run_cli("data", "inspect", data, "--model", tiny, "--rows", "1", "--output-dir", tmp_path / "out")
    assert "1 2 3 4 5<|im_end|>" in proc.stdout and "trained (weight 1)" in proc.stdout
    assert re.search(r"row.jsonl:1: \d+ tokens, 10 trained, fits", proc.stdout)
    assert (tmp_path / "out" / "inspect.html").exists()
    # DeepSpeed, when installed, announces "Setting accelerator to CPU" on stdout once imported (transformers'
    # save_pretrained imports it through accelerate, e.g. when the embedded model is converted on first use)
    assert "Setting accelerator" not in proc.stdout and proc.stdout.startswith("legend:")


def test_data_check_refuses_a_row_with_no_trained_token_as_sft_does(tiny, tmp_path, monkeypatch):
    from tunesmith.config import DataCheckConfig

    quiet = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "loss": False}]}
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(ROW, ensure_ascii=False) + "\n" + json.dumps(quiet) + "\n")
    expected = f"{data}:2: messages: no trained tokens (every turn has loss: false)"
    template, _ = load_template(SFTConfig(model=str(tiny), dataset=[str(data)]))
    _, problems = tokenize_sft(load_rows([str(data)], kind="sft").rows, template, "assistant", 2048)
    assert [str(p) for p in problems] == [expected]  # what sft refuses...
    with pytest.raises(DataError, match="1 bad row"):  # ...data check --model refuses too
        api.data_check(DataCheckConfig(dataset=[str(data)], model=str(tiny)))
    shown = []  # and counts the row as bad, not good: "good rows 1, bad rows 1"
    monkeypatch.setattr("tunesmith.train.check._print", lambda cfg, report: shown.append(report))
    with pytest.raises(DataError):
        api.data_check(DataCheckConfig(dataset=[str(data)], model=str(tiny)))
    assert (shown[0].rows, len(shown[0].problems)) == (1, 1)


def test_a_tool_call_the_template_drops_is_refused_rather_than_trained_as_an_empty_answer(tiny, tmp_path):
    """The tiny model has SmolLM2's ChatML, which renders an assistant turn's content only: a turn that only calls a
    tool would train `<|im_end|>` alone. Qwen2.5's template renders the call, so there it trains."""
    from real_tokenizers import qwen_tokenizer

    from tunesmith.config import DataCheckConfig
    from tunesmith.templates import Template

    call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    row = {"messages": [{"role": "user", "content": "Weather in Oslo?"},
                        {"role": "assistant", "content": "", "tool_calls": [call]},
                        {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "It is sunny."}]}
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(ROW, ensure_ascii=False) + "\n" + json.dumps(row) + "\n")
    template, _ = load_template(SFTConfig(model=str(tiny), dataset=[str(data)]))
    ds, problems = tokenize_sft(load_rows([str(data)], kind="sft").rows, template, "assistant", 2048)
    assert [str(p) for p in problems] == [
        f"{data}:2: messages[1].tool_calls: the chat template of {template._name()} does not render tool calls, so "
        "this turn would train an empty answer; train a model whose template renders them (Qwen2.5, Llama 3.1, "
        "Mistral...)"]
    assert len(ds) == 1  # the row is left out, also with --skip-bad-rows
    with pytest.raises(DataError, match="1 bad row"):
        api.data_check(DataCheckConfig(dataset=[str(data)], model=str(tiny)))
    tok = qwen_tokenizer()
    tok.chat_template = (  # ChatML that renders the calls, as Qwen2.5's own template does
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] }}"
        "{% for c in m.get('tool_calls') or [] %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}"
        "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    assert not template.renders_calls and Template(tok).renders_calls


def test_data_check_of_pretraining_text_longer_than_max_length_passes_as_pt_splits_it(tiny, tmp_path):
    from tunesmith.config import DataCheckConfig

    data = tmp_path / "t.json"  # a JSON array file, as pt reads it
    data.write_text(json.dumps([{"text": "The quick brown fox. " * 40}, {"text": "short"}]))
    report = api.data_check(DataCheckConfig(dataset=[str(data)], kind="pt", model=str(tiny), max_length=32))
    assert not report.problems and report.rows == 2
    assert report.notes == ["1 text(s) longer than max_length 32 tokens: `tunesmith pt` cuts them into max_length "
                            "blocks (its default, --truncation split)"]
