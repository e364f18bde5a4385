"""Config of `tunesmith web-ui`."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from tunesmith.config.sections import Section


class WebUIConfig(Section):
    """The lifecycle in a browser: data, train, align, chat, evaluate, export, serve, runs. Every form shows the CLI
command it runs; jobs outlive the page. Run: tunesmith web-ui [--auth users.yaml]"""

    host: str = Field("127.0.0.1", description="Address to listen on; another than 127.0.0.1 needs --auth (or --open).")
    port: int = Field(7860, ge=0, le=65535, description="Port to listen on.")
    auth: str | None = Field(None, description=(
        "users.yaml (users: {name: password or sha256:HEX}): each user logs in and gets a workspace no other user "
        "can list, read or download; paths from the browser stay inside it."))
    root: str = Field("webui", description="Folder of the workspaces (one per user: runs, uploads, exports, jobs).")
    open: bool = Field(False, description="Listen beyond 127.0.0.1 without --auth (anyone who reaches it can use it).")
    command: ClassVar[str] = "web-ui"

    @model_validator(mode="after")
    def _check(self) -> "WebUIConfig":
        if self.host not in ("127.0.0.1", "localhost", "::1") and not self.auth and not self.open:
            raise ValueError(f"host: {self.host} would let anyone who reaches this machine use the UI and its files; "
                             "pass --auth users.yaml, or --open if that is what you want")
        return self
