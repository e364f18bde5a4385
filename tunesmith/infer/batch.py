"""`tunesmith infer --dataset FILE`: answer every prompt of a dataset into a JSONL, in batches.

    engine = engine_for(cfg)                 # the run's base + adapter and its saved template, as deploy loads them
    path = answer_dataset(engine, cfg, sampling_params(cfg))

Answers come from the same Engine that `tunesmith deploy` serves, so they are the same text. `response` is the whole
answer; `reasoning` is its <think> part where the model's template writes one (deploy returns it as
reasoning_content), else null. The terminal chat is ui/chat.py."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tunesmith.config import InferConfig
from tunesmith.data.load import load_rows
from tunesmith.data.readers import SUFFIXES
from tunesmith.data.registry import REGISTRY
from tunesmith.errors import ConfigError
from tunesmith import infer as engines
from tunesmith.infer import Engine, GenerationRequest, SamplingParams
from tunesmith.infer.attention import kv_heads_in_sdpa


def infer(cfg: InferConfig) -> Path:
    """Answer cfg.dataset into cfg.output; returns the path."""
    if not cfg.dataset:
        raise ConfigError("dataset: name the prompts to answer (--dataset FILE); for a chat in the terminal run "
                          "`tunesmith infer` without --dataset")
    output_path(cfg)  # refused before the model loads
    engine = engine_for(cfg)
    try:
        with kv_heads_in_sdpa(getattr(engine, "device", None)):
            return answer_dataset(engine, cfg, sampling_params(cfg))
    finally:
        engine.shutdown()


def engine_for(cfg: InferConfig) -> Engine:
    """The Engine for an infer config: the adapter run's base (unless --model says otherwise) with its adapter."""
    adapters = {_run_name(cfg.adapters): cfg.adapters} if cfg.adapters else None
    # looked up at each call (engines.load_engine), not bound at import: a test that replaces it for a while cannot
    # leave its stand-in behind for the rest of the process
    return engines.load_engine(cfg.backend, cfg.model if not cfg.adapters or "model" in cfg.model_fields_set else None,
                               adapters, cfg.device, cfg.dtype, cfg.system,
                               chat_template_kwargs=cfg.chat_template_kwargs,
                               **({"speculative": cfg.speculative} if cfg.speculative else {}))


def sampling_params(cfg: InferConfig) -> SamplingParams:
    g = cfg.generation
    return SamplingParams(max_tokens=g.max_tokens, temperature=g.temperature, top_p=g.top_p, stop=list(g.stop), seed=g.seed)


def row_images(engine: Engine, model: str, messages: list[dict], where: str) -> list:
    """A row's images (data/vision.py put them in its messages as image parts, checked and made portable), opened;
    infer and eval answer them through the same encoding as deploy."""
    from tunesmith.data.images import open_image
    from tunesmith.data.vision import images_of

    refs = images_of(messages)
    if refs and not engine.accepts_images(model):
        raise ConfigError(f"{where}: messages: the row has images and {model} reads text only; answer it with a "
                          "vision-language model")
    return [open_image(ref) for ref in refs]


def _run_name(adapters: str) -> str:
    folder = Path(adapters)
    return folder.parent.name if folder.name == "final" else folder.name


def output_path(cfg: InferConfig) -> Path:
    """--output, else <first dataset>.answers.jsonl; never a file the datasets read (the answers are written from the
    first batch on, so the prompts would be lost), whatever the path says: a symlink, a hard link, ../ or a folder."""
    out = Path(cfg.output or Path(cfg.dataset[0]).with_suffix("").as_posix() + ".answers.jsonl").expanduser()
    if not out.is_file():
        return out  # a new file overwrites nothing
    for spec in cfg.dataset:
        name, sep, count = spec.rpartition("#")  # name#N: N rows of name (data/load.py)
        name = name if sep and count.isdigit() and name else spec
        path = Path(name).expanduser()
        if not path.exists() and name in REGISTRY and REGISTRY[name].path is not None:
            path = Path(REGISTRY[name].path)  # shipped data
        if path.is_dir():  # every data file of a folder (data/readers.py read_path)
            files = [f for f in path.rglob("*") if f.suffix.lower() in SUFFIXES and f.is_file()]
        else:
            files = [path] if path.is_file() else []  # a hub dataset has no file here
        same = next((f for f in files if os.path.samefile(f, out)), None)
        if same is not None:
            given = f"--output {cfg.output}" if cfg.output else f"the default output {out}"
            raise ConfigError(f"output: {given} is {same.resolve()}, which --dataset {spec} reads: the answers would "
                              "overwrite the prompts; give another --output (default: <dataset>.answers.jsonl)")
    return out


def answer_dataset(engine: Engine, cfg: InferConfig, params: SamplingParams) -> Path:
    from tqdm.auto import tqdm

    out = output_path(cfg)
    data = load_rows(cfg.dataset, kind="prompts", seed=0, encoding=cfg.encoding)
    skipped = data.raise_if_bad(cfg.skip_bad_rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = data.rows
    model = engine.model_names()[0]
    if cfg.image:
        raise ConfigError("image: --image goes with the terminal chat; dataset rows bring their own images (image "
                          "parts, or an `images` column with <image> placeholders)")
    with out.open("w", encoding="utf-8") as f, tqdm(total=len(rows), desc="answering", unit="row") as bar:
        for start in range(0, len(rows), cfg.batch_size):
            batch = rows[start: start + cfg.batch_size]
            answers = engine.chat([r.messages for r in batch], params, model=model,
                                  images=[row_images(engine, model, r.messages, f"{r.source}:{r.line}")
                                          for r in batch])
            for row, answer in zip(batch, answers):
                choice = answer.choices[0]
                split = engine.reasoning(GenerationRequest(messages=row.messages, model=model))
                record = {"messages": row.messages, "response": choice.text,
                          "reasoning": split.whole(choice.text)[0] if split else None,
                          "finish_reason": choice.finish_reason, "completion_tokens": choice.completion_tokens,
                          "source": f"{row.source}:{row.line}"}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()  # answers so far survive an interrupted run
            bar.update(len(batch))
    note = f" ({skipped} bad rows skipped)" if skipped else ""
    print(f"wrote {len(rows)} answers to {out}{note}", file=sys.stderr)
    return out
