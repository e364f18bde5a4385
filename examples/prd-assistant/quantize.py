"""The PRD recipe's last step: the tuned adapter exported to 4-bit and served (after `make demo`, which trains it).

    bash scripts/quant-env.sh                       # once: llmcompressor in .venv-quant (GPTQ)
    python examples/prd-assistant/quantize.py       # or --quant bnb4, which needs no second venv

Every step is an ordinary tunesmith command, printed before it runs: `tunesmith export` merges the adapter and
quantizes (GPTQ 4-bit, group 64, calibrated on the run's own training rows rendered with its template) and writes
export_report.json (size, perplexity and greedy agreement before and after); `tunesmith infer` answers the held-out
prompts with the quantized model, scored like the demo (the PRD structure); `tunesmith deploy` serves it and the
official openai SDK asks it one prompt, whose answer must equal infer's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from demo import PROMPTS, RUN, serve_and_ask, step, structure_score  # noqa: E402 (the demo's own steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quant", default="gptq", choices=["gptq", "awq", "bnb4"])
    parser.add_argument("--calib-samples", default="32")
    args = parser.parse_args()
    if not (RUN / "final").exists():
        raise SystemExit(f"{RUN / 'final'}: no tuned adapter yet; run `make demo` first")
    start = time.time()
    out = RUN / f"merged-{args.quant}"
    quant = ["--quant", args.quant]
    if args.quant in ("gptq", "awq"):  # SmolLM2's widths (576) take groups of 64, not 128
        quant += ["--bits", "4", "--group-size", "64", "--calib-samples", args.calib_samples]
    step(f"Merge the adapter and quantize ({args.quant})", "export", "--adapters", str(RUN / "final"), *quant,
         "--output", str(out))
    answers = out / "answers.jsonl"
    step("Answer the held-out prompts with the quantized model", "infer", "--model", str(out), "--dataset",
         str(PROMPTS), "--output", str(answers), "--batch-size", "12", "--generation.max-tokens", "200")
    report(out, answers, time.time() - start)
    serve_and_ask(answers, model_args=["--model", str(out)], name=out.name)


def report(out: Path, answers: Path, elapsed: float) -> None:
    exported = json.loads((out / "export_report.json").read_text())
    rows = [json.loads(line) for line in answers.read_text(encoding="utf-8").splitlines()]
    scores = [structure_score(r["response"], r["messages"][-1]["content"]) for r in rows]
    tuned = RUN / "answers-tuned.jsonl"
    tuned_scores = [structure_score(json.loads(line)["response"], json.loads(line)["messages"][-1]["content"])
                    for line in tuned.read_text(encoding="utf-8").splitlines()] if tuned.exists() else None
    mib = 2 ** 20
    print(f"\n=== {out.name}: {exported['size_before_bytes'] / mib:.0f} MiB -> {exported['size_after_bytes'] / mib:.0f}"
          f" MiB; perplexity {exported['perplexity_before']:.2f} -> {exported['perplexity_after']:.2f} on "
          f"{exported['eval_tokens']} held-out tokens; greedy agreement "
          f"{exported['greedy_agreement']['mean_matching_prefix']:.0%}")
    print(f"{'':12}{'full PRD structure':>20}{'headings present':>20}")
    for name, s in (("tuned", tuned_scores), (out.name, scores)):
        if s:
            print(f"{name:12}{sum(x == 1.0 for x in s) / len(s):>20.0%}{sum(s) / len(s):>20.0%}")
    print(f"took {elapsed / 60:.1f} min; serve it: tunesmith deploy --model {out.relative_to(RUN.parent.parent)}")


if __name__ == "__main__":
    main()
