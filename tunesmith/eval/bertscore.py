"""BERTScore (Zhang et al., 2020) through the bert-score library, offline by default.

    tunesmith eval ... --metrics bertscore                                   # the shipped all-MiniLM-L6-v2
    tunesmith eval ... --metrics bertscore --bertscore-model bert-base-chinese --bertscore-idf

Each answer and its reference go through the scoring model; every answer token is matched to its most similar
reference token by cosine of their contextual embeddings (greedy matching), giving precision, recall and F1 (the
column is F1). The scorer's own tokenizer splits the text: WordPiece cuts Chinese into one token per character, so
a Chinese answer is matched character by character, never as one whole-sentence token. A tokenizer that knows few of
the characters (all-MiniLM-L6-v2 maps most Chinese ones to [UNK]) is warned about, with the fix.

Which layer: bert-score's table (tuned on WMT16) for the models it lists; any other model uses its last layer (the
shipped MiniLM is a sentence embedder trained on its last layer's mean). A decoder works too (`--bertscore-model
smollm2-135m-instruct`: byte-level BPE, so no Chinese character is unknown, though its embeddings are one-directional). No baseline rescaling: it needs a file per
model and language that bert-score downloads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError

log = logging.getLogger("tunesmith")
DEFAULT_MODEL = "all-minilm-l6-v2"
UNKNOWN_SHARE = 0.3  # warn when more of a Chinese reference's tokens than this are [UNK]
_scorers: dict[tuple[str, int], Any] = {}  # one loaded model per process (eval during training scores every step)


def resolve(name: str | None) -> tuple[str, int]:
    """(what bert-score loads: a folder or hub id, the layer whose embeddings are compared)."""
    from bert_score.utils import model2layers

    name = name or DEFAULT_MODEL
    from tunesmith.models.encoders import PACKAGED, packaged_folder
    from tunesmith.models.registry import MODELS

    if name in PACKAGED:
        source = str(packaged_folder(name))
    elif name in MODELS:  # a registry name: its folder (smollm2-135m-instruct: the embedded model, offline)
        from tunesmith.models.load import resolve as model_folder

        source = str(model_folder(name))
    elif Path(name).expanduser().is_dir():
        source = str(Path(name).expanduser())
    else:
        source = name  # a hub id: read from the local cache (offline) or downloaded
    if name in model2layers:
        return source, model2layers[name]
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ConfigError(f"bertscore_model: cannot load {name!r} ({str(err).splitlines()[0][:200]}); give a folder, "
                          f"a cached hub id (tunesmith download {name}), or leave it out for {DEFAULT_MODEL}") from None
    layers = getattr(config, "num_hidden_layers", None)
    if not layers:
        raise ConfigError(f"bertscore_model: {name} has no num_hidden_layers in its config; BERTScore needs an encoder "
                          "or decoder with hidden layers")
    return source, int(layers)


def scorer(name: str | None) -> Any:
    from bert_score import BERTScorer

    source, layers = resolve(name)
    key = (source, layers)
    if key not in _scorers:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        scoring = BERTScorer(model_type=source, num_layers=layers, device=device, nthreads=1)
        # bert-score truncates to the tokenizer's model_max_length, which tokenizers without one set to 1e30 (it
        # overflows the fast tokenizer): cap it at the model's positions
        if scoring._tokenizer.model_max_length > 1_000_000:
            config = scoring._model.config
            scoring._tokenizer.model_max_length = getattr(config, "max_position_embeddings", None) or 512
        _scorers[key] = scoring
    return _scorers[key]


def score(predictions: list[str], references: list[str], model: str | None = None,
          idf: bool = False) -> tuple[list[float], list[float], list[float], str]:
    """Per-pair precision, recall, F1 and a line saying how they were computed."""
    from bert_score.utils import get_idf_dict

    scoring = scorer(model)
    # idf: inverse document frequency over the references, as bert-score's score(idf=True) computes it
    scoring._idf_dict = get_idf_dict([r for r in references if r.strip()], scoring._tokenizer, nthreads=1) if idf else None
    scoring._idf = idf
    warn_unknown(scoring._tokenizer, references, model or DEFAULT_MODEL)
    # An empty answer (or reference) scores 0, as bert-score defines it; it is left out of the call because
    # bert-score 0.3.13 encodes an empty text with a tokenizer method transformers 5 no longer has.
    kept = [i for i, (a, b) in enumerate(zip(predictions, references)) if a.strip() and b.strip()]
    p, r, f = ([0.0] * len(predictions) for _ in range(3))
    if kept:
        scored = scoring.score([predictions[i] for i in kept], [references[i] for i in kept], batch_size=16)
        for out, values in zip((p, r, f), scored):
            for i, value in zip(kept, values):
                out[i] = float(value)
    how = (f"bert-score {_version()}, model {model or DEFAULT_MODEL} layer {scoring.num_layers}, greedy cosine "
           f"matching, F1{', idf over the references' if idf else ''}, no baseline rescaling; an empty answer scores 0")
    return p, r, f, how


def warn_unknown(tokenizer: Any, references: list[str], name: str) -> float:
    """The share of [UNK] tokens in the references that hold Chinese; warned about above UNKNOWN_SHARE."""
    from tunesmith.eval.metrics import CHINESE

    chinese = [r for r in references if CHINESE.search(r)]
    if not chinese or tokenizer.unk_token is None:
        return 0.0
    tokens = [t for r in chinese for t in tokenizer.tokenize(r)]
    share = sum(t == tokenizer.unk_token for t in tokens) / max(1, len(tokens))
    if share > UNKNOWN_SHARE:
        log.warning("bertscore: %s's tokenizer knows few of these Chinese characters (%.0f%% of the references' tokens "
                    "are %s, which all match each other); pass --bertscore-model bert-base-chinese (or a multilingual "
                    "encoder) for Chinese, or smollm2-135m-instruct offline", name, 100 * share, tokenizer.unk_token)
    return share


def _version() -> str:
    from importlib.metadata import version

    return version("bert-score")
