"""Every answer other than 200, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

    raise APIError(400, "max_tokens is 9000, more than this server allows (4096)", param="max_tokens")
    with engine_errors():          # the engine's exceptions as the statuses OpenAI would answer
        ids = engine.prompt_ids(request)

app.py turns an APIError into its JSON and status; a stream that already sent its 200 reports a failure as one
error chunk (stream_error) before [DONE].
"""

from __future__ import annotations

import contextlib
import json
import logging
import re

from tunesmith.errors import TunesmithError
from tunesmith.infer.types import EngineError, UnknownModelError
from tunesmith.serve.protocol import ErrorInfo, ErrorResponse

log = logging.getLogger("tunesmith")


class APIError(Exception):
    """An answer other than 200, with the status, OpenAI's error fields and any headers (Retry-After)."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    # a message may quote the request; lone surrogates in it would make the JSON answer itself fail to encode
    message, param = _printable(message), None if param is None else _printable(param)
    return ErrorResponse(error=ErrorInfo(message=message, type=type, param=param, code=code)).model_dump()


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@contextlib.contextmanager
def engine_errors(param: str = "messages"):
    """The engine's exceptions as the statuses OpenAI would answer; `param` names the input a TunesmithError (a
    template that refuses the messages, say) is about."""
    try:
        yield
    except APIError:
        raise
    except UnknownModelError as err:
        raise APIError(404, str(err), param="model", code="model_not_found") from err
    except EngineError as err:
        log.error("generation failed: %s", err)
        raise APIError(500, f"generation failed: {err}", type="server_error") from err
    except TunesmithError as err:  # e.g. a TemplateError: the messages do not fit the model's chat template
        raise APIError(400, str(err), param=param) from err
    except StopAsyncIteration as err:
        raise APIError(500, "the engine produced no output", type="server_error") from err


def stream_error(err: Exception) -> dict:
    """The error chunk of a stream that fails after its 200 was sent."""
    if isinstance(err, APIError):
        return err.body()
    if isinstance(err, EngineError):
        log.error("generation failed mid-stream: %s", err)
        return error_body(f"generation failed: {err}", "server_error")
    log.exception("unexpected error mid-stream")
    return error_body(f"internal error: {type(err).__name__}: {err}", "server_error")


# -----------------------------------------------------------------------------
# pydantic's report on a request body as one OpenAI-style line

# pydantic names the member of a union that failed (`str`, `list[str]`, `TextPart`): not part of the parameter's path
UNION_TAG = re.compile(r"^(str|int|float|bool|list|dict|none|constrained-\w+|function-.*|.*\[.*\]|[A-Z]\w*)$")
ROLES = {"developer", "system", "user", "assistant", "tool"}  # the tags of a message's union, after its index


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """pydantic's report as one OpenAI-style line, and the parameter it names first."""
    problems: dict[str | None, list[str]] = {}
    given: dict[str | None, str] = {}
    for e in errors:
        raw = [p for p in e.get("loc", ()) if p != "body"]
        loc = [str(p) for i, p in enumerate(raw)
               if not UNION_TAG.match(str(p)) and not (p in ROLES and i and isinstance(raw[i - 1], int))]
        if e["type"] in ("union_tag_invalid", "union_tag_not_found"):  # the field that picks the union member
            loc.append(str(e.get("ctx", {}).get("discriminator", "")).strip("'"))
        param = re.sub(r"\.(\d+)", r"[\1]", ".".join(loc)) or None
        if e["type"] == "json_invalid":
            problems.setdefault(None, []).append(
                f"the body is not valid JSON ({e.get('ctx', {}).get('error', 'decode error')} at position "
                f"{loc[0] if loc else '?'})")
            continue
        if e["type"] == "string_unicode":  # pydantic's own check, on keys
            msg = f"{param or 'a key'}: not valid Unicode text (a lone surrogate such as \\ud800); send UTF-8 text"
        elif e["type"] == "extra_forbidden":
            msg = f"Unrecognized request argument supplied: {param}"
        elif e["type"] == "missing":
            msg = f"{param}: required" if param else "the request needs a JSON object as its body"
        else:
            msg = e["msg"] if param else "the body must be a JSON object"
            value = e.get("input")
            if param and isinstance(value, (str, int, float, bool, type(None))):
                given[param] = f" (got {json.dumps(value)[:80]})"
        problems.setdefault(param, []).append(msg)
    lines = []
    for param, msgs in problems.items():
        unique = list(dict.fromkeys(msgs))
        if param is None or unique[0].startswith(("Unrecognized", f"{param}: required")):
            lines += unique
        else:  # several messages for one parameter: the forms of a union it matched none of
            lines.append(f"{param}: {' or '.join(unique)}{given.get(param, '')}")
    return "; ".join(lines), next(iter(problems))
