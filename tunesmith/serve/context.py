"""What one HTTP request carries through the layers without being passed by hand: who called (their scoped key),
its headers (a sticky header picks a version), and what was decided on the way (the version served, held until
the answer's last byte). app.py's Gate sets it for every request and reads it back when the response starts and
ends; serving.py, versions.py and keys.py read it.

    ctx = current()            # None outside a request (tests calling chat.py directly, for instance)
    ctx.caller                 # keys.Caller or None when the server has no keys
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# the scope key under which app.py's Gate leaves the send it was given: a streamed body goes there (routes.py)
BODY_SEND = "tunesmith.body_send"
_CURRENT: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("tunesmith_request", default=None)


@dataclass
class RequestContext:
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    caller: Any = None  # keys.Caller: the scoped key that authenticated this request
    version: str | None = None  # the model version that answers (versions.py): sent as a response header
    on_end: list[Callable[[], None]] = field(default_factory=list)  # run once the response has been sent
    client_closed: bool = False  # a stream the client left before its end: counted as 499, as a whole answer's

    def end(self) -> None:
        while self.on_end:
            self.on_end.pop()()


def current() -> RequestContext | None:
    return _CURRENT.get()


def enter(ctx: RequestContext) -> contextvars.Token:
    return _CURRENT.set(ctx)


def leave(token: contextvars.Token) -> None:
    _CURRENT.reset(token)
