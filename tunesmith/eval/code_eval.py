"""The `code_eval` metric that lm-evaluation-harness's code tasks (humaneval, mbpp, ...) load, with every program run
in tunesmith's sandbox (eval/sandbox.py) instead of in-process.

Those tasks call `evaluate.load("code_eval")` when their utils.py is imported; evaluate looks for a local folder
`code_eval/code_eval.py` (relative to the working directory) before the hub, so eval/benchmarks.py builds the tasks
inside a temporary folder holding one that imports this class. Same interface and numbers as HF evaluate's code_eval:
each program is `candidate + "\\n" + test`, it passes if it exits cleanly within `timeout` seconds, and pass@k is the
unbiased estimator of Chen et al. 2021 (1 - C(n-c, k) / C(n, k)), averaged over problems.
"""

from __future__ import annotations

import json
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datasets
import evaluate
import numpy as np

from tunesmith.eval.sandbox import DEFAULT_TIMEOUT_S, probe, run_python

# The file evaluate.load finds in code_eval/: it must define (or import) exactly one metric class.
LOADER = "from tunesmith.eval.code_eval import SandboxedCodeEval  # noqa: F401\n"
# eval/benchmarks.py points this at benchmarks/MODEL-sandbox.jsonl: every program run, its outcome and stderr's end
RECORD: Path | None = None


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples out of n (c of them correct) passes."""
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


class SandboxedCodeEval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=f"pass@k with each program run in tunesmith's sandbox: {probe().describe()}",
            citation="Chen et al. 2021, Evaluating Large Language Models Trained on Code",
            inputs_description="predictions: list of candidate lists; references: one test program per problem",
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("string")),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, k=(1, 10, 100), num_workers=2, timeout=DEFAULT_TIMEOUT_S):
        jobs = [(task, i, candidate + "\n" + test) for task, (candidates, test) in enumerate(zip(predictions, references))
                for i, candidate in enumerate(candidates)]
        with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:  # each run is its own process
            outcomes = list(pool.map(lambda job: run_python(job[2], timeout=timeout), jobs))
        if RECORD is not None:
            with RECORD.open("a", encoding="utf-8") as f:
                for (_, _, program), outcome in zip(jobs, outcomes):
                    f.write(json.dumps({"program": program, "status": outcome.status, "seconds": outcome.seconds,
                                        "stderr": outcome.stderr[-500:]}, ensure_ascii=False) + "\n")
        results: dict[int, list] = defaultdict(list)
        for (task, i, _), outcome in zip(jobs, outcomes):
            results[task].append((i, {"task_id": task, "completion_id": i, "passed": outcome.passed,
                                      "result": outcome.status if outcome.status != "failed" else
                                      f"failed: {(outcome.stderr.strip().splitlines() or [''])[-1]}"}))
        totals = [len(results[t]) for t in range(len(predictions))]
        correct = [sum(r["passed"] for _, r in results[t]) for t in range(len(predictions))]
        ks = [k] if isinstance(k, int) else list(k)
        scores = {f"pass@{n}": float(np.mean([pass_at_k(t, c, n) for t, c in zip(totals, correct)]))
                  for n in ks if all(t >= n for t in totals)}
        return scores, results
