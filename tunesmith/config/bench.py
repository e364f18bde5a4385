"""Config of `tunesmith bench serve` (serve/loadtest.py)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from tunesmith.config.commands import DEFAULT_MODEL
from tunesmith.config.sections import Section
from tunesmith.config.speculative import SPECULATIVE_HELP, check_speculative

Server = Literal["tunesmith", "tunesmith-chunked", "tunesmith-spec", "tunesmith-inproc", "tunesmith-process",
                 "transformers", "vllm"]


class BenchServeConfig(Section):
    """Load-test OpenAI-compatible endpoints side by side: requests/s, output tokens/s, latency and time to first token
at each number of concurrent streams. Run: tunesmith bench serve --url http://127.0.0.1:8000 [--concurrency 1 8 64]"""

    action: Literal["serve"] = Field("serve", description="What to load-test (serve: OpenAI-compatible endpoints).")
    url: list[str] = Field(default_factory=list, description=(
        "Running endpoints to load, each URL or URL#MODEL (default: the first model its /v1/models lists); the first "
        "endpoint is the one the ratios compare against."))
    servers: list[Server] = Field(default_factory=list, description=(
        "Servers to start here for --model, one after another, after the --url endpoints: tunesmith (deploy), "
        "tunesmith-chunked (deploy --stream-interval), tunesmith-spec (deploy --speculative), tunesmith-inproc / "
        "tunesmith-process (deploy --engine-process false / true: the engine in the server's process / its own), "
        "transformers "
        "(transformers serve --continuous-batching), vllm (in $VLLM_PYTHON, default .venv-vllm/bin/python)."))
    model: str = Field(DEFAULT_MODEL, description=(
        "The model the started servers serve; its tokenizer also writes the prompt (and counts streamed text where an "
        "endpoint reports no usage)."))
    concurrency: list[PositiveInt] = Field(default_factory=lambda: [1, 8, 32, 64], description=(
        "Concurrent streams, one load level each."))
    rounds: int = Field(2, ge=1, description="Requests each stream sends one after another at each level.")
    max_tokens: int = Field(256, ge=1, description="max_tokens of every request (greedy, streaming).")
    prompt_tokens: int = Field(212, ge=1, description="About how many tokens the prompt holds.")
    client_procs: int = Field(1, ge=1, description=(
        "Client processes the streams are split over (one Python client parses a few thousand SSE events per second; "
        "the report's client CPU near 100 % says it limits)."))
    api_key: str | None = Field(None, description="Bearer key for the --url endpoints.")
    speculative: str | None = Field(None, description="tunesmith-spec's --speculative. " + SPECULATIVE_HELP)
    stream_interval: int = Field(4, ge=1, description="tunesmith-chunked's --stream-interval.")
    out: str | None = Field(None, description="Append the markdown table to this file.")
    command: ClassVar[str] = "bench"
    positional: ClassVar[tuple[str, ...]] = ("action",)
    _speculative = field_validator("speculative")(check_speculative)

    @model_validator(mode="after")
    def _check(self) -> "BenchServeConfig":
        if not self.url and not self.servers:
            raise ValueError("url: name an endpoint to load (--url http://127.0.0.1:8000), or servers to start here "
                             "(--servers tunesmith transformers)")
        if "tunesmith-spec" in self.servers and not self.speculative:
            raise ValueError("speculative: tunesmith-spec is deploy with --speculative; give it (ngram or "
                             "draft=MODEL)")
        return self
