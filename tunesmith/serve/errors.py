"""Every answer other than 200, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

    raise APIError(400, "max_tokens is 9000, more than this server allows (4096)", param="max_tokens")
    with engine_errors():          # the engine's exceptions as the statuses OpenAI would answer
        ids = engine.prompt_ids(request)

app.py turns an APIError into its JSON and status; a stream that already sent its 200 reports a failure as one
error chunk (stream_error) before [DONE].
"""

from __future__ import annotations

import contextlib
import logging

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
    return ErrorResponse(error=ErrorInfo(message=message, type=type, param=param, code=code)).model_dump()


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
