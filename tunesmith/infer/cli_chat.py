"""`tunesmith infer`: a terminal chat, or batch answers over a dataset into JSONL.

Chat: type a message and press Enter. End a line with \\ to continue on the next, or paste a block between two
lines of \"\"\". /reset forgets the conversation, /exit (or Ctrl-D) leaves.
Answers come from the same Engine that `tunesmith deploy` serves, so they are the same text."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tunesmith.config import InferConfig
from tunesmith.data.load import load_rows
from tunesmith.infer import Engine, SamplingParams, load_engine

HELP = 'Type a message. Line ending in \\ continues; """ starts/ends a block. /reset clears, /exit leaves.'


def infer(cfg: InferConfig) -> Path | None:
    adapters = {_run_name(cfg.adapters): cfg.adapters} if cfg.adapters else None
    engine = load_engine(cfg.backend, cfg.model if not cfg.adapters or "model" in cfg.model_fields_set else None,
                         adapters, cfg.device, cfg.dtype, cfg.system)
    params = sampling_params(cfg)
    try:
        if cfg.dataset:
            return answer_dataset(engine, cfg, params)
        chat(engine, params, engine.model_names()[0])
        return None
    finally:
        engine.shutdown()


def sampling_params(cfg: InferConfig) -> SamplingParams:
    g = cfg.generation
    return SamplingParams(max_tokens=g.max_tokens, temperature=g.temperature, top_p=g.top_p, stop=list(g.stop), seed=g.seed)


def _run_name(adapters: str) -> str:
    folder = Path(adapters)
    return folder.parent.name if folder.name == "final" else folder.name


def answer_dataset(engine: Engine, cfg: InferConfig, params: SamplingParams) -> Path:
    from tqdm.auto import tqdm

    data = load_rows(cfg.dataset, kind="prompts", seed=0)
    skipped = data.raise_if_bad(cfg.skip_bad_rows)
    out = Path(cfg.output or Path(cfg.dataset[0]).with_suffix("").as_posix() + ".answers.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = data.rows
    model = engine.model_names()[0]
    with out.open("w", encoding="utf-8") as f, tqdm(total=len(rows), desc="answering", unit="row") as bar:
        for start in range(0, len(rows), cfg.batch_size):
            batch = rows[start: start + cfg.batch_size]
            answers = engine.chat([r.messages for r in batch], params, model=model)
            for row, answer in zip(batch, answers):
                choice = answer.choices[0]
                record = {"messages": row.messages, "response": choice.text, "finish_reason": choice.finish_reason,
                          "completion_tokens": choice.completion_tokens, "source": f"{row.source}:{row.line}"}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()  # answers so far survive an interrupted run
            bar.update(len(batch))
    note = f" ({skipped} bad rows skipped)" if skipped else ""
    print(f"wrote {len(rows)} answers to {out}{note}", file=sys.stderr)
    return out


def chat(engine: Engine, params: SamplingParams, model: str) -> None:
    interactive = sys.stdin.isatty()
    print(f"tunesmith chat with {model}. {HELP}", file=sys.stderr)
    history: list[dict] = []
    while True:
        text = read_message(interactive)
        if text is None or text.strip() in ("/exit", "/quit"):
            break
        if text.strip() == "/reset":
            history = []
            print("(conversation cleared)", file=sys.stderr)
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        reply = ""
        for piece in engine.stream_text(history, params, model=model):
            reply += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": reply})


def read_message(interactive: bool) -> str | None:
    """One message: continuation lines ending in \\, or a block between two \"\"\" lines. None at end of input."""
    lines: list[str] = []
    block = False
    prompt = ">>> "
    while True:
        try:
            line = input(prompt) if interactive else sys.stdin.readline()
        except EOFError:
            return "\n".join(lines) if lines else None
        if not interactive:
            if line == "":
                return "\n".join(lines) if lines else None
            line = line.rstrip("\n")
        if line.strip() == '"""':
            if block:
                return "\n".join(lines)
            block, prompt = True, "... "
            continue
        if block:
            lines.append(line)
        elif line.endswith("\\"):
            lines.append(line[:-1])
            prompt = "... "
        else:
            lines.append(line)
            return "\n".join(lines)
