"""A row too long for max_length tokens is refused before tokenizing (data/limits.py), and files are streamed: a
50 MB one-line JSONL costs about one copy of the line, not gigabytes, and many long rows cost one row at a time."""

import json
import re
import subprocess
import sys
import textwrap

import pytest
from real_tokenizers import qwen_tokenizer
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tunesmith.data.limits import max_chars, visible_chars
from tunesmith.data.load import load_rows
from tunesmith.errors import DataError


def fast(model, normalizer=None, pre_tokenizer=None):
    tok = Tokenizer(model)
    if normalizer is not None:
        tok.normalizer = normalizer
    if pre_tokenizer is not None:
        tok.pre_tokenizer = pre_tokenizer
    return PreTrainedTokenizerFast(tokenizer_object=tok)


VOCAB = {"<unk>": 0, "a": 1, "b": 2, "ab": 3, "abab": 4}


def bpe(**kw):
    return models.BPE(VOCAB, [("a", "b"), ("ab", "ab")], unk_token="<unk>", **kw)


def test_the_bound_is_read_from_the_tokenizer_and_none_where_none_is_safe():
    assert max_chars(fast(bpe()), 10) == 10 * 5  # longest spelling: "<unk>"
    assert max_chars(fast(bpe(), normalizers.NFC()), 10) == 10 * 5 * 4  # NFC composes up to 4 code points into 1
    seq = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁"), normalizers.Lowercase()])
    assert max_chars(fast(bpe(), seq, pre_tokenizers.Whitespace()), 10) == 50  # these only add or drop whitespace
    assert max_chars(fast(bpe(), normalizers.Replace("abab", "a")), 10) == 10 * 5 * 4
    # steps that may delete or swallow any amount of visible text: no safe bound, rows are judged after tokenizing
    assert max_chars(fast(bpe(fuse_unk=True)), 10) is None
    assert max_chars(fast(models.WordPiece(VOCAB, unk_token="<unk>")), 10) is None
    assert max_chars(fast(bpe(), normalizers.BertNormalizer()), 10) is None
    assert max_chars(fast(bpe(), normalizers.Replace("a", "")), 10) is None
    assert max_chars(fast(bpe(), pre_tokenizer=pre_tokenizers.Split("a", behavior="removed")), 10) is None


def test_no_text_denser_than_the_bound_exists_for_qwen_and_a_fixed_16_per_token_would_refuse_good_rows():
    tok = qwen_tokenizer()
    per_token = max_chars(tok, 1)
    assert per_token == 128  # Qwen2.5's longest token is 128 spaces
    for text in ["-" * 50_000, "//" + "-" * 112, "=" * 50_000, "的" * 5_000, " " * 50_000 + "x", "abc " * 10_000]:
        tokens = len(tok(text, add_special_tokens=False)["input_ids"])
        assert visible_chars(text) <= tokens * per_token
    dashes = len(tok("-" * 50_000, add_special_tokens=False)["input_ids"])
    assert 50_000 / dashes > 60  # a markdown rule packs ~64 characters into each token


def rows_file(path, *rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def chat(user, answer="ok"):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def test_a_row_over_the_bound_is_a_problem_before_tokenizing_and_skip_bad_rows_applies(tmp_path):
    path = rows_file(tmp_path / "d.jsonl", chat("x" * 101), chat("y" * 100), chat(" " * 5000 + "short"),
                     chat("q", "<think>" + "z" * 500 + "</think>answer"), {"prompt": "q", "response": "w" * 101},
                     chat("q", "v" * 101))
    data = load_rows([path], kind="sft", max_chars=100)
    assert [r.line for r in data.rows] == [2, 3, 4]  # whitespace and reasoning that templates drop are not counted
    assert [str(p) for p in data.problems] == [
        (f"{path}:1: messages[0].content: 101 characters besides whitespace, more than max_length tokens can hold "
         "(at most 100 with this tokenizer); shorten the row or raise max_length"),
        (f"{path}:5: assistant turn: 101 characters besides whitespace, more than max_length tokens can hold (at "
         "most 100 with this tokenizer); shorten the row or raise max_length"),
        (f"{path}:6: messages[1].content: 101 characters besides whitespace, more than max_length tokens can hold "
         "(at most 100 with this tokenizer); shorten the row or raise max_length"),
    ]
    assert data.raise_if_bad(skip_bad_rows=True) == 3
    with pytest.raises(DataError, match=rf"{path}:1: messages\[0\].content: 101 characters"):
        data.raise_if_bad(skip_bad_rows=False)
    assert len(load_rows([path], kind="sft").rows) == 6  # no bound given: every row is kept for the tokenizer


def test_preference_and_kto_answers_are_measured(tmp_path):
    path = rows_file(tmp_path / "p.jsonl", {"prompt": "q", "chosen": "c" * 11, "rejected": "r"},
                     {"prompt": "q", "completion": "k" * 11, "label": True})
    assert [str(p).split(": ")[1] for p in load_rows([path], kind="kto", max_chars=10).problems] == ["chosen", "completion"]


MEASURE = textwrap.dedent("""
    import json, resource, sys
    from tunesmith.data.load import load_rows
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    data = load_rows([sys.argv[1]], kind="sft", max_chars=2048 * 128)  # Qwen2.5 at max_length 2048
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024  # KiB on Linux
    print(json.dumps({"grew": grew, "rows": len(data.rows), "problems": [str(p) for p in data.problems]}))
""")


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_a_50_mb_line_is_refused_with_memory_near_one_copy_and_many_long_rows_stream(tmp_path):
    one_line = tmp_path / "one_line.jsonl"
    rows_file(one_line, chat("Summarise: " + "lorem ipsum dolor sit amet " * 1_900_000), chat("fine"))
    many = tmp_path / "many.jsonl"
    rows_file(many, *[chat(f"{i} " + "x" * 300_000) for i in range(170)], chat("fine"))

    def measure(path):
        out = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    size = one_line.stat().st_size
    got = measure(one_line)
    assert got["rows"] == 1 and got["problems"] == [
        (f"{one_line}:1: messages[0].content: 41,800,010 characters besides whitespace, more than max_length "
         "tokens can hold (at most 262,144 with this tokenizer); shorten the row or raise max_length")]
    # ~3x measured: the line (read in 8 KiB pieces, then joined) and its parsed text. Tokenizing it took 10 GB.
    assert got["grew"] < 4 * size
    size = many.stat().st_size
    got = measure(many)
    assert got["rows"] == 1 and len(got["problems"]) == 170
    assert got["grew"] < size / 5  # ~1 MB measured: one row at a time, not the whole file


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_a_json_list_and_a_csv_stream_row_by_row(tmp_path, suffix):
    """json.dump writes a whole list on one line, so only a reader that walks the list item by item stays flat."""
    rows = [{"prompt": f"{i} " + "x" * 300_000, "response": "ok"} for i in range(170)] + [{"prompt": "q", "response": "fine"}]
    path = tmp_path / f"many{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        path.write_text("prompt,response\n" + "".join(f"{r['prompt']},{r['response']}\n" for r in rows), encoding="utf-8")
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    assert got["rows"] == 1 and len(got["problems"]) == 170
    assert got["problems"][0].startswith(f"{path}:{'row 0' if suffix == '.json' else 2}: user turn: 300,001 characters")
    assert got["grew"] < path.stat().st_size / 5  # one row at a time, not the 51 MB file


# -----------------------------------------------------------------------------
# Every command that trains measures rows before its template renders them


LONG = "word " * 200_000  # 800,000 characters besides whitespace: over Qwen2.5's 512 x 128 = 65,536


def watched(template):
    """The template, recording the longest message each render call was given."""
    seen = []

    def spy(render):
        def recorded(messages, *args, **kwargs):
            seen.append(max(len(m.get("content") or "") for m in messages))
            return render(messages, *args, **kwargs)
        return recorded

    for name in ("render", "render_samples", "render_prompt"):
        setattr(template, name, spy(getattr(template, name)))
    return template, seen


@pytest.mark.parametrize("method", ["sft", "dpo", "grpo"])
def test_a_long_row_is_refused_before_any_tokenizing_in_each_training_command(tmp_path, monkeypatch, method):
    from tunesmith.config import SFTConfig
    from tunesmith.config.rlhf import RLHFConfig
    from tunesmith.templates import Template
    from tunesmith.train.online import prompt_datasets
    from tunesmith.train.preference import load_preference_data, render_pairs
    from tunesmith.train.sft import sft_data

    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    row = {"sft": lambda text: chat(text), "dpo": lambda text: {"prompt": text, "chosen": "a", "rejected": "b"},
           "grpo": lambda text: {"prompt": text}}[method]
    path = rows_file(tmp_path / "d.jsonl", row("fine"), row(LONG))
    template, seen = watched(Template(qwen_tokenizer()))
    field = "messages[0].content" if method == "sft" else "user turn"
    expected = (f"{path}:2: {field}: 800,000 characters besides whitespace, more than max_length tokens can hold "
                "(at most 65,536 with this tokenizer)")

    def load(skip):
        common = {"model": "unused", "dataset": [path], "max_length": 512, "skip_bad_rows": skip}
        if method == "sft":
            loaded = sft_data(SFTConfig(**common), template)
            train, skipped = loaded.train, loaded.skipped
        elif method == "dpo":
            loaded = load_preference_data(RLHFConfig(method="dpo", **common), "preference", template, render_pairs)
            train, skipped = loaded.train, loaded.skipped
        else:
            cfg = RLHFConfig(method="grpo", rollout={"max_completion_length": 16}, **common)
            _, train, _, skipped, _ = prompt_datasets(cfg, template)
        return len(train), skipped

    with pytest.raises(DataError, match=re.escape(expected)):
        load(skip=False)
    assert load(skip=True) == (1, 1)  # --skip-bad-rows: the long row is left out and counted
    assert seen and max(seen) < 100  # the good row was rendered; the long one never reached the tokenizer
