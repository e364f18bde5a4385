"""The streaming Decoder (infer/decoding.py) decodes each update's new ids only, after a chunk of context: after every
update its text must be what decoding all the kept ids at once gives, and the streamed pieces must add up to it, for
answers with multi-byte characters split across ids, special tokens, end-of-turn tokens and stop strings, arriving
one id or several at a time."""

import random

import pytest

from tunesmith.infer.decoding import Decoder
from tunesmith.templates import Template

TEXTS = ["Plain words, then numbers 12345 and punctuation!?", "Ünïcödé: 日本語のテキスト, emoji 🎉🚀 and Ελληνικά.",
         "  leading spaces\n\nnew lines\ttabs  ", "code: def f(x):\n    return x ** 2  # ok"]


@pytest.fixture(scope="module")
def template():
    from tunesmith.models.load import resolve

    return Template.load(resolve("smollm2-135m-instruct"))


def pieces(ids: list[int], rng: random.Random) -> list[list[int]]:
    """The growing list as a stream delivers it: one id or a few at a time."""
    out, n = [], 0
    while n < len(ids):
        n = min(len(ids), n + rng.choice([1, 1, 1, 2, 3, 5]))
        out.append(ids[:n])
    return out


@pytest.mark.parametrize("seed", range(3))
def test_every_update_holds_the_whole_decode_and_the_pieces_add_up(template, seed):
    tok, rng = template.tokenizer, random.Random(seed)
    special = sorted(set(tok.all_special_ids) - set(template.stop_token_ids))
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        # byte-level ids that split characters, and special tokens, in random places
        ids = [i for t in ids for i in ([t, rng.choice(special)] if rng.random() < 0.1 else [t])]
        ids += [i for i in rng.sample(range(tok.vocab_size), 80) if "\ufffd" not in tok.decode([i])][:40]
        decoder, streamed, widths = Decoder(template, []), "", []
        decode = decoder.decode
        decoder.decode = lambda chunk, w=widths, d=decode: w.append(len(chunk)) or d(chunk)
        for grown in pieces(ids, rng):
            piece, _ = decoder.update(grown)
            streamed += piece
            assert decoder.text() == tok.decode(grown, skip_special_tokens=True)
        piece, _ = decoder.update(ids, final=True)
        assert streamed + piece == tok.decode(ids, skip_special_tokens=True)
        assert decoder.count == len(ids)
        assert max(widths) <= 24 < len(ids) // 2  # each update decoded a few ids, never the whole answer again
    assert "backend" in decode.__code__.co_freevars  # the tokenizers backend decodes, not transformers around it


def test_end_of_turn_and_stop_strings_cut_as_before(template):
    tok, eos = template.tokenizer, template.stop_token_ids[0]
    ids = tok.encode("alpha beta gamma delta", add_special_tokens=False)
    decoder, streamed = Decoder(template, []), ""
    for grown in pieces([*ids, eos, *ids], random.Random(0)):
        streamed += decoder.update(grown)[0]
    assert streamed == "alpha beta gamma delta" and decoder.count == len(ids) + 1
    assert decoder.finish_reason(100) == "stop"
    decoder, streamed, stopped = Decoder(template, ["gamma"]), "", False
    for grown in pieces(ids, random.Random(1)):
        piece, stopped = decoder.update(grown)
        streamed += piece
        if stopped:
            break
    assert stopped and streamed == "alpha beta " and decoder.ended_by == "stop"
    assert tok.decode(ids[:decoder.count]).endswith("gamma")


def test_token_bytes_spell_the_text_for_byte_level_tokenizers_and_are_unknown_for_others(template):
    """OpenAI's logprob `bytes` (serve/chat.py): a byte-level BPE token's own bytes, also where it holds part of a
    character (decode gives U+FFFD there); a WordPiece tokenizer has no such spelling, so its text is used instead."""
    from transformers import AutoTokenizer

    from tunesmith.infer.decoding import token_bytes
    from tunesmith.models.encoders import packaged_folder

    tokenizer = template.tokenizer
    raw = token_bytes(tokenizer)
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert b"".join(raw(i) for i in ids) == text.encode()
    split = tokenizer("🎉", add_special_tokens=False)["input_ids"]
    assert len(split) > 1 and all(tokenizer.decode([i]) == "\ufffd" for i in split)  # parts of one character
    assert raw(tokenizer.eos_token_id) == tokenizer.eos_token.encode()  # added tokens are their own text
    wordpiece = AutoTokenizer.from_pretrained(packaged_folder("all-minilm-l6-v2"))
    assert token_bytes(wordpiece)(wordpiece.convert_tokens_to_ids("hello")) is None
