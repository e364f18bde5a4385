"""The README demo: fine-tune the embedded model into a PRD assistant and measure what changed.

    make demo        (or: python examples/prd-assistant/demo.py)

Every step is an ordinary tunesmith command, printed before it runs, so you can repeat any of them by hand.
The figure at the end: the share of answers that follow the PRD structure (all four section headings of the
trained format, in order), for the base model and the tuned one, on held-out feature descriptions.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RUN = ROOT / "runs" / "prd-assistant"
PROMPTS = HERE / "eval_prompts.jsonl"
HEADINGS = {
    "en": ["## Overview", "## User Stories", "## Requirements", "## Acceptance Criteria"],
    "zh": ["## 概述", "## 用户故事", "## 需求", "## 验收标准"],
}
TUNESMITH = str(Path(sys.executable).parent / "tunesmith")


def main() -> None:
    start = time.time()
    RUN.parent.mkdir(exist_ok=True)
    step("Check the shipped dataset", "data", "check", "prd-assistant", "--model", "smollm2-135m-instruct")
    answers_base = RUN.parent / "prd-assistant-base-answers.jsonl"
    step("Answer held-out prompts with the base model", "infer", "--model", "smollm2-135m-instruct",
         "--dataset", str(PROMPTS), "--output", str(answers_base), "--batch-size", "12", "--generation.max-tokens", "200")
    step("Fine-tune with LoRA", "sft", "-c", str(HERE / "sft.yaml"), "--output-dir", str(RUN), "--overwrite")
    answers_tuned = RUN / "answers-tuned.jsonl"
    step("Answer the same prompts with the tuned adapter", "infer", "--adapters", str(RUN / "final"),
         "--dataset", str(PROMPTS), "--output", str(answers_tuned), "--batch-size", "12", "--generation.max-tokens", "200")
    report(answers_base, answers_tuned, time.time() - start)
    serve_and_ask(answers_tuned)


def step(title: str, *args: str) -> None:
    print(f"\n=== {title}\n$ tunesmith {shlex.join(args)}", flush=True)
    subprocess.run([TUNESMITH, *args], check=True, cwd=ROOT)


def structure_score(answer: str, prompt: str) -> float:
    """Share of the trained section headings present in order (1.0 = the full PRD structure)."""
    lang = "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in prompt) else "en"
    found, cursor = 0, 0
    for heading in HEADINGS[lang]:
        at = answer.find(heading, cursor)
        if at >= 0:
            found, cursor = found + 1, at + len(heading)
    return found / len(HEADINGS[lang])


def report(base_path: Path, tuned_path: Path, elapsed: float) -> None:
    base = [json.loads(line) for line in base_path.read_text(encoding="utf-8").splitlines()]
    tuned = [json.loads(line) for line in tuned_path.read_text(encoding="utf-8").splitlines()]
    scores = {}
    for name, rows in (("base", base), ("tuned", tuned)):
        s = [structure_score(r["response"], r["messages"][-1]["content"]) for r in rows]
        scores[name] = (sum(x == 1.0 for x in s) / len(s), sum(s) / len(s))
    example = 0
    print("\n=== One held-out prompt, before and after\n")
    print("PROMPT:", base[example]["messages"][-1]["content"])
    print("\n--- base model ---\n" + base[example]["response"].strip())
    print("\n--- tuned adapter ---\n" + tuned[example]["response"].strip())
    print(f"\n=== Result on {len(base)} held-out prompts (PRD structure = all 4 section headings, in order)")
    print(f"{'':8}{'full PRD structure':>20}{'headings present':>20}")
    for name, (full, mean) in scores.items():
        print(f"{name:8}{full:>20.0%}{mean:>20.0%}")
    print(f"\nTuned adapter: {RUN / 'final'}   loss curve: {RUN / 'loss.png'}   demo took {elapsed / 60:.1f} min")
    print(f"Chat with it:  tunesmith infer --adapters {RUN.relative_to(ROOT) / 'final'}")
    (RUN / "demo_result.json").write_text(json.dumps({"base": scores["base"], "tuned": scores["tuned"]}))


def serve_and_ask(answers_tuned: Path, port: int = 8765, model_args: list[str] | None = None,
                  name: str = "prd-assistant") -> None:
    """Serve the tuned adapter (or `model_args`' model, served as `name`) behind the OpenAI API and ask it the first
    held-out prompt with the official SDK: the answer must equal infer's in `answers_tuned`."""
    import signal
    import urllib.request

    from openai import OpenAI

    args = ["deploy", *(model_args or ["--adapters", f"prd-assistant={RUN / 'final'}"]), "--port", str(port)]
    print(f"\n=== Serve {name} behind an OpenAI-compatible API\n$ tunesmith {shlex.join(args)}", flush=True)
    server = subprocess.Popen([TUNESMITH, *args], cwd=ROOT)
    try:
        for _ in range(960):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit("tunesmith deploy exited early")
                time.sleep(0.25)
        first = json.loads(answers_tuned.read_text(encoding="utf-8").splitlines()[0])
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="not-needed")
        reply = client.chat.completions.create(model=name, messages=first["messages"], max_tokens=200,
                                               temperature=0)
        text = reply.choices[0].message.content
        print(f"\nopenai SDK -> {reply.model}: {text[:400]}{'...' if len(text) > 400 else ''}")
        same = text == first["response"]
        print(f"usage: {reply.usage.prompt_tokens} prompt + {reply.usage.completion_tokens} completion tokens; "
              f"identical to `tunesmith infer`'s answer: {'yes' if same else 'no'}")
        if not same:  # the promise the demo shows: what was trained and answered by infer is what is served
            raise SystemExit("demo failed: the served answer differs from `tunesmith infer`'s answer to the same prompt:"
                             f"\n  served: {text!r}\n  infer:  {first['response']!r}")
    finally:
        server.send_signal(signal.SIGTERM)  # graceful: finishes running requests, then exits 0
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
