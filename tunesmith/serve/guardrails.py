"""Output guardrails: one policy per served model (`tunesmith deploy --guardrails dao=dao-guard.yaml`; the policy's
fields are in config/serving.py). Every answer of that model, chat or completion, whole or streamed, passes it.

    guards = Guards.build(cfg.guardrails, metrics.registry)     # {model: Guard}
    stream = guards["dao"].wrap(engine.stream(request), n=1)    # Deltas with held-back text; a violation ends the
                                                                # choice with the refusal (or raises an APIError)

Rules and when they decide:
- deny_regex, deny_keywords: searched in the text so far as it grows. Text goes out only up to where a rule could
  still match: the start of a partial match at the end (the `regex` package's partial matching: "guaran" may become
  "guaranteed returns"), or of a whole match that touches the end (`\\bscam\\b` on "...scam" waits for the next
  piece: "scamper" is fine). So a streamed answer sends exactly the text the whole answer would have sent, and a
  phrase split over two chunks is caught before any of it leaves.
- require_regex, json_schema, classifier: they judge the whole answer, so a stream under them is held to the end.
- classifier: `FILE.py:FUNCTION` (next to the policy) or `module:function`, called as f(text) -> reason or None, in a
  worker thread. A hook that raises blocks the answer (fail closed) and logs why.

On a violation, `on_violation: refuse` ends the choice with finish_reason "content_filter" and the policy's refusal
as its text (a stream sends it after what it had sent, which broke no rule); `error` answers the policy's 4xx (in a
stream after the 200: an error event). /metrics: tunesmith_guardrail_checks_total{model} (answers judged) and
tunesmith_guardrail_blocked_total{model, rule}.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import regex
from prometheus_client import Counter

from tunesmith.config.serving import GuardrailPolicy, load_guardrails
from tunesmith.errors import ConfigError
from tunesmith.infer.types import Delta
from tunesmith.serve.errors import APIError

log = logging.getLogger("tunesmith")
CONTENT_FILTER = "content_filter"  # OpenAI's finish_reason for an answer its filters stopped


class Guards(dict):
    """Served model name -> its Guard, sharing the /metrics counters."""

    @classmethod
    def build(cls, items: list[str], registry) -> Guards:
        guards = cls()
        if not items:
            return guards
        checks = Counter("tunesmith_guardrail_checks", "Answers judged by a model's output policy.", ["model"],
                         registry=registry)
        blocked = Counter("tunesmith_guardrail_blocked", "Answers a model's output policy blocked, per rule.",
                          ["model", "rule"], registry=registry)
        for item in items:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise ConfigError(f"guardrails: {item!r}: write MODEL=policy.yaml")
            if name in guards:
                raise ConfigError(f"guardrails: two policies for {name}; one per model")
            guards[name] = Guard(name, load_guardrails(path), checks, blocked)
        return guards

    def check_names(self, served: list[str]) -> None:
        unknown = sorted(set(self) - set(served))
        if unknown:
            raise ConfigError(f"guardrails: {', '.join(unknown)} is not a served model ({', '.join(served)})")

    def for_model(self, public: str) -> Guard | None:
        """The policy of a served name; a version (prd:v2) has its model's."""
        return self.get(public) or self.get(public.split(":", 1)[0])


class Guard:
    def __init__(self, model: str, policy: GuardrailPolicy, checks: Counter, blocked: Counter):
        self.model, self.policy = model, policy
        flags = regex.IGNORECASE | regex.VERSION1
        self.deny = [(f"deny_regex[{i}]", regex.compile(p, flags)) for i, p in enumerate(policy.deny_regex)]
        self.deny += [(f"deny_keywords[{i}]", regex.compile(rf"(?<!\w){regex.escape(k)}(?!\w)", flags))
                      for i, k in enumerate(policy.deny_keywords)]
        empty = [rule for rule, pattern in self.deny if pattern.search("") is not None]
        if empty:
            raise ConfigError(f"guardrails: {model}: {empty[0]} matches empty text, so it would block every answer")
        self.require = [(f"require_regex[{i}]", regex.compile(p, flags)) for i, p in enumerate(policy.require_regex)]
        self.schema = _validator(policy)
        self.classifier = load_hook(policy.classifier, policy.folder) if policy.classifier else None
        self.whole = bool(self.require or self.schema or self.classifier)  # rules that need the whole answer
        self.checks, self.blocked = checks.labels(model), blocked

    # -------------------------------------------------------------------------
    # Judging

    def denied(self, text: str, start: int = 0, final: bool = True) -> tuple[str | None, int]:
        """(the deny rule that matches, its start) or (None, how far the text may go out): up to the earliest place a
        deny rule may still match once more text comes. Matches starting before `start` were ruled out already."""
        safe = len(text)
        for rule, pattern in self.deny:
            found = pattern.search(text, start)
            if found is not None and (final or found.end() < len(text)):
                return rule, found.start()
            if final:
                continue
            # the leftmost complete match touches the end (the next piece may undo it: \b, s?), or there is none:
            # hold from the first place a match may still start (regex's partial matching: "guaran" -> "guaranteed")
            end = found.start() if found is not None else len(text)
            for pos in range(start, end):
                if pattern.match(text, pos, partial=True) is not None:
                    end = pos
                    break
            safe = min(safe, end)
        return None, safe

    def judge_whole(self, text: str) -> str | None:
        """The rule the whole answer breaks, or None. Blocking (the classifier may take a while)."""
        rule, _ = self.denied(text)
        if rule is not None:
            return rule
        for rule, pattern in self.require:
            if pattern.search(text) is None:
                return rule
        if self.schema is not None:
            try:
                if not self.schema.is_valid(json.loads(text)):
                    return "json_schema"
            except ValueError:  # not JSON at all
                return "json_schema"
        if self.classifier is not None:
            try:
                reason = self.classifier(text)
            except Exception:
                log.exception("guardrails: the classifier of %s failed; the answer is blocked", self.model)
                return "classifier"
            if reason:
                log.info("guardrails: the classifier of %s blocked an answer: %s", self.model, reason)
                return "classifier"
        return None

    # -------------------------------------------------------------------------
    # A stream of Deltas through the policy

    async def wrap(self, deltas: AsyncIterator[Delta], n: int) -> AsyncIterator[Delta]:
        """The Deltas of `n` choices with their text held back as the rules require; a blocked choice ends with the
        refusal (finish_reason content_filter) and yields nothing more."""
        states = [_Choice() for _ in range(n)]
        try:
            async for delta in deltas:
                state = states[delta.index]
                if state.done:
                    continue  # a blocked choice: the rest of its text is dropped
                state.text += delta.text
                final = delta.finish_reason is not None
                if final:
                    rule = await anyio.to_thread.run_sync(self.judge_whole, state.text)
                    safe = len(state.text)
                else:
                    rule, safe = (None, state.sent) if self.whole else self.denied(state.text, state.scan, final=False)
                if rule is not None:
                    state.done = True
                    yield self._blocked(rule, delta)
                    if all(s.done for s in states):
                        return
                    continue
                state.scan = safe  # no match can start before this any more
                piece, state.sent = state.text[state.sent:safe], max(state.sent, safe)
                if final:
                    state.done = True
                    self.checks.inc()
                if piece or final or delta.logprobs:
                    yield dataclasses.replace(delta, text=piece)
        finally:
            await deltas.aclose()

    def _blocked(self, rule: str, delta: Delta) -> Delta:
        self.checks.inc()
        self.blocked.labels(self.model, rule).inc()
        if self.policy.on_violation == "error":
            raise APIError(self.policy.status, f"the answer of {self.model} was blocked by its output policy "
                           f"({rule})", type="invalid_request_error", code=CONTENT_FILTER)
        return Delta(delta.index, self.policy.refusal, CONTENT_FILTER, prompt_tokens=delta.prompt_tokens,
                     completion_tokens=delta.completion_tokens)


@dataclasses.dataclass
class _Choice:
    text: str = ""  # generated so far
    sent: int = 0  # characters of it passed on
    scan: int = 0  # deny rules need not look before this
    done: bool = False


# -----------------------------------------------------------------------------
# Loading the policy's pieces


def _validator(policy: GuardrailPolicy):
    schema = policy.schema()
    if schema is None:
        return None
    import jsonschema_rs

    try:
        return jsonschema_rs.validator_for(schema)
    except (jsonschema_rs.ValidationError, ValueError) as err:
        raise ConfigError(f"guardrails: json_schema is no valid JSON Schema: {str(err).splitlines()[0]}") from None


def load_hook(spec: str, folder: str) -> Callable[[str], str | None]:
    """`FILE.py:FUNCTION` (relative to the policy's folder) or `module:function`, checked now: a missing file or name
    is a ConfigError before the server starts."""
    target, name = spec.rsplit(":", 1)
    if target.endswith(".py"):
        path = (Path(folder) / target).resolve()
        if not path.is_file():
            raise ConfigError(f"guardrails: classifier: {path} not found")
        module_name = f"tunesmith_guard_{path.stem}_{abs(hash(str(path)))}"
        spec_ = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec_)
        sys.path.insert(0, str(path.parent))  # the hook may import files next to it
        try:
            spec_.loader.exec_module(module)
        except Exception as err:  # noqa: BLE001 - any error in the user's file, named
            raise ConfigError(f"guardrails: classifier: {path} fails to import: {type(err).__name__}: {err}") from None
        finally:
            sys.path.remove(str(path.parent))
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise ConfigError(f"guardrails: classifier: cannot import {target}: {err}") from None
    hook = getattr(module, name, None)
    if not callable(hook):
        raise ConfigError(f"guardrails: classifier: {target} has no function {name}")
    return hook
