"""What /metrics reports, and the concurrency slots it counts.

    metrics = Metrics()                        # one registry per app, so two apps in one process count apart
    slots = Slots(metrics, limit=64)           # --max-concurrent
    slot = slots.take("prd")                   # APIError 429 with Retry-After when all are taken
    slot.token(); slot.release(prompt_tokens=12, completion_tokens=30)
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tunesmith.serve.errors import APIError


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("tunesmith_requests", "HTTP requests by endpoint and status code.",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("tunesmith_request_latency_seconds", "Time from request to the response's last byte.",
                                 ["endpoint"], registry=r,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.ttft = Histogram("tunesmith_time_to_first_token_seconds", "Time from admission to the first generated text.",
                              ["model"], registry=r, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.generated_tokens = Counter("tunesmith_generated_tokens", "Completion tokens generated.", ["model"], registry=r)
        self.prompt_tokens = Counter("tunesmith_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r)
        self.running = Gauge("tunesmith_requests_running", "Requests producing tokens.", registry=r)
        self.waiting = Gauge("tunesmith_requests_waiting", "Requests admitted, waiting for their first token.", registry=r)


class SpeculationCounts:
    """--speculative on the transformers engine: its verification steps, accepted and (ngram) proposed tokens per
    model, read from the engine at each scrape. Acceptance rate: accepted / proposed. Assisted generate()
    (draft=MODEL) does not report how many tokens it proposed, so it has no proposed count."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        steps = CounterMetricFamily("tunesmith_speculative_steps", "Verification steps (--speculative): ngram, one "
                                    "request's decode step that carried proposals; draft, one assisted generate() "
                                    "step.", labels=["model"])
        accepted = CounterMetricFamily("tunesmith_speculative_accepted_tokens", "Proposed tokens the served model "
                                       "accepted (--speculative): tokens beyond one per step.", labels=["model"])
        proposed = CounterMetricFamily("tunesmith_speculative_proposed_tokens", "Tokens proposed for verification "
                                       "(--speculative ngram).", labels=["model"])
        for name, (n, kept, offered) in self.engine.speculation_counts().items():
            steps.add_metric([name], n)
            accepted.add_metric([name], kept)
            if offered is not None:
                proposed.add_metric([name], offered)
        yield steps
        yield accepted
        yield proposed


class Slots:
    """At most `limit` requests generate at once; the next is answered 429 (OpenAI's rate-limit shape)."""

    def __init__(self, metrics: Metrics, limit: int):
        self.metrics, self.limit, self.active = metrics, limit, 0
        self.by_model: dict[str, int] = {}  # slots held per model name (admin.py unloads a model once it has none)

    def take(self, model: str) -> Slot:
        if self.active >= self.limit:
            raise APIError(429, f"the server is answering {self.active} requests, its limit (--max-concurrent); "
                           "retry after a second", type="rate_limit_exceeded", code="rate_limit_exceeded",
                           headers={"Retry-After": "1"})
        return Slot(self, model)


class Slot:
    """One admitted request: it counts against the limit until released; waiting until its first token, then
    running. Release is idempotent, because a stream can end in several places (done, error, client gone)."""

    def __init__(self, slots: Slots, model: str):
        self.slots, self.model, self.state = slots, model, "waiting"
        self.started = time.perf_counter()
        slots.active += 1
        slots.by_model[model] = slots.by_model.get(model, 0) + 1
        slots.metrics.waiting.inc()

    def token(self) -> None:
        if self.state == "waiting":
            m = self.slots.metrics
            m.waiting.dec()
            m.running.inc()
            m.ttft.labels(self.model).observe(time.perf_counter() - self.started)
            self.state = "running"

    def release(self, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        if self.state == "done":
            return
        m = self.slots.metrics
        (m.waiting if self.state == "waiting" else m.running).dec()
        m.prompt_tokens.labels(self.model).inc(prompt_tokens)
        m.generated_tokens.labels(self.model).inc(completion_tokens)
        self.slots.active -= 1
        self.slots.by_model[self.model] -= 1
        self.state = "done"
