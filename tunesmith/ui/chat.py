"""`tunesmith infer` without --dataset: a chat in the terminal.

Type a message and press Enter. End a line with \\ to continue on the next, or paste a block between two lines of
\"\"\". /reset forgets the conversation, /exit (or Ctrl-D) leaves. Answers come from the same Engine that
`tunesmith deploy` serves (api.engine), so they are the same text."""

from __future__ import annotations

import sys

from tunesmith import api
from tunesmith.config import InferConfig
from tunesmith.infer.attention import kv_heads_in_sdpa

HELP = 'Type a message. Line ending in \\ continues; """ starts/ends a block. /reset clears, /exit leaves.'


def chat(cfg: InferConfig) -> None:
    images = pictures(cfg)
    engine = api.engine(cfg)
    params, model = api.sampling_params(cfg), engine.model_names()[0]
    try:
        with kv_heads_in_sdpa(getattr(engine, "device", None)):
            converse(engine, params, model, images)
    finally:
        engine.shutdown()


def pictures(cfg: InferConfig) -> list:
    """--image files, opened before any weights load (a missing or unreadable one names itself); only for a vision
    model."""
    if not cfg.image:
        return []
    from tunesmith.data.images import ImageError, open_image
    from tunesmith.errors import ConfigError
    from tunesmith.models.vision import is_vision_model

    model = cfg.adapters or cfg.model
    if model is None or not is_vision_model(model):
        raise ConfigError(f"image: {model or 'the default model'} is no vision-language model (or its config.json "
                          "cannot be read here); --image needs one (tunesmith models lists the families)")
    try:
        return [open_image(path) for path in cfg.image]
    except ImageError as err:
        raise ConfigError(f"image: {err}") from None


def converse(engine, params, model: str, images: list | None = None) -> None:
    """Images go with the first message, before its text (as image parts), and stay in the conversation."""
    interactive = sys.stdin.isatty()
    images = list(images or [])
    print(f"tunesmith chat with {model}{f' ({len(images)} image(s))' if images else ''}. {HELP}", file=sys.stderr)
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
        first = images and not history
        content = [*({"type": "image"} for _ in images), {"type": "text", "text": text}] if first else text
        history.append({"role": "user", "content": content})
        reply = ""
        for piece in engine.stream_text(history, params, model=model, images=images if images else None):
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
