"""The metric plumbing on fixed strings: the libraries' scores, on our 0-1 scale, with our tokenization fixes."""

import pytest

from tunesmith.errors import ConfigError
from tunesmith.eval import metrics as M

REFS = ["CODE apple OK", "The cat sat on the mat.", "新版本按用户比例灰度发布，出问题可以一键回滚。"]


@pytest.mark.parametrize("name", ["exact_match", "bleu", "rouge"])
def test_identical_text_scores_one_and_different_text_lower(name):
    same = M.METRICS[name](REFS, REFS)
    assert all(v == pytest.approx(1.0) for v in same.columns.values()), same.columns
    assert all(v == pytest.approx(1.0) for s in same.per_sample for v in s.values())
    other = M.METRICS[name](["CODE river OK", "A dog lay on the rug.", "新版本全量发布。"], REFS)
    assert all(0.0 <= v < 1.0 for v in other.columns.values()), other.columns
    assert len(other.per_sample) == 3


def test_exact_match_ignores_surrounding_and_repeated_whitespace_but_not_case():
    scores = M.exact_match(["  CODE  apple\nOK \n", "code apple ok"], ["CODE apple OK", "CODE apple OK"])
    assert [s["exact_match"] for s in scores.per_sample] == [1.0, 0.0]
    assert scores.columns["exact_match"] == 0.5


def test_bleu_of_short_identical_answers_is_one_not_zero():
    # Three tokens have no 4-gram: plain corpus BLEU says 0 for a perfect answer; effective order does not.
    assert M.bleu(["CODE apple OK"], ["CODE apple OK"]).columns["bleu"] == pytest.approx(1.0)


def test_bleu_splits_chinese_characters_and_names_its_tokenizer():
    zh = M.bleu(["新版本按用户比例灰度发布"], ["新版本按用户比例灰度发布，出问题可以一键回滚"])
    assert 0.0 < zh.columns["bleu"] < 1.0  # 13a would see one token each: 0
    assert "tok:zh" in zh.info["bleu"]
    assert "tok:13a" in M.bleu(["a b c"], ["a b c"]).info["bleu"]


def test_rouge_counts_chinese_characters_and_keeps_word_order():
    partial = M.rouge(["新版本发布"], ["新版本灰度发布"]).columns
    assert 0.0 < partial["rouge1"] < 1.0  # rouge-score's own tokenizer drops CJK: 0 for any pair
    swapped = M.rouge(["mat the on sat cat the"], ["the cat sat on the mat"]).columns
    assert swapped["rouge1"] == pytest.approx(1.0) and swapped["rouge2"] == 0.0 and swapped["rougeL"] <= 0.5


def test_accuracy_counts_a_missing_choice_as_wrong():
    assert M.accuracy([1, None, 0, 2], [1, 0, 0, 1]).columns["accuracy"] == 0.5


def test_a_metric_whose_package_is_missing_fails_before_any_model_loads(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bert_score" else real(name, *a))
    with pytest.raises(ConfigError, match=r"bertscore needs the bert-score package: pip install bert-score"):
        M.check_available(["exact_match", "bertscore"])
    M.check_available(["exact_match", "bleu", "rouge"])
