"""EvalScope run inside .venv-evalscope (scripts/evalscope-env.sh) by eval/evalscope_backend.py:

    .venv-evalscope/bin/python tunesmith/eval/evalscope_worker.py JOB.json

A script, not a tunesmith module: that venv holds EvalScope's pins (datasets 4.8, modelscope) and no tunesmith, so
this file imports only the standard library and evalscope. JOB.json names the OpenAI-compatible endpoint to evaluate
(tunesmith serves local models and runs itself, with the template they were trained with), the benchmarks and their
dataset_args, and where to write; the worker runs evalscope.run_task and writes RESULT: each benchmark's report as
EvalScope made it (its metrics, scores and sample counts), or the datasets that are missing here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def missing_datasets(job: dict) -> list[dict]:
    """Benchmarks without a local_path whose ModelScope dataset is not in the cache while offline."""
    if not job.get("offline"):  # the main process found ModelScope unreachable (or HF_HUB_OFFLINE set)
        return []
    from evalscope.api.registry import BENCHMARK_REGISTRY
    from evalscope.constants import (
        DEFAULT_DATASET_CACHE_DIR,  # where it reads ModelScope datasets (local_files_only)
    )

    cache = Path(DEFAULT_DATASET_CACHE_DIR)
    out = []
    for name in job["datasets"]:
        if (job["dataset_args"].get(name) or {}).get("local_path"):
            continue
        meta = BENCHMARK_REGISTRY.get(name)
        if meta is None:
            continue  # run_task names unknown benchmarks itself
        dataset_id = meta.dataset_id
        if not (cache / dataset_id).exists() and not Path(dataset_id).exists():
            out.append({"benchmark": name, "dataset": dataset_id})
    return out


def main(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    result_file = Path(job["result"])
    from evalscope.api.registry import BENCHMARK_REGISTRY

    unknown = [name for name in job["datasets"] if name not in BENCHMARK_REGISTRY]
    if unknown:
        result_file.write_text(json.dumps({"unknown": unknown, "known": sorted(BENCHMARK_REGISTRY)}))
        return
    # EvalScope runs generated code in its own process (or docker): tunesmith's sandbox is lm-eval's path only
    code = [name for name in job["datasets"] if "Coding" in (BENCHMARK_REGISTRY.get(name).tags or [])]
    if code:
        result_file.write_text(json.dumps({"code": code}))
        return
    missing = missing_datasets(job)
    if missing:
        result_file.write_text(json.dumps({"missing": missing}))
        return
    if job.get("check_only"):  # names, code and data checked before tunesmith loads any model
        result_file.write_text(json.dumps({"reports": {}}))
        return
    from evalscope import TaskConfig, run_task
    cfg = TaskConfig(model=job["model"], api_url=job["api_url"], api_key=job.get("api_key") or "EMPTY",
                     eval_type="openai_api", datasets=job["datasets"], dataset_args=job["dataset_args"],
                     generation_config=job["generation_config"], limit=job.get("limit"),
                     eval_batch_size=job.get("batch_size", 1), work_dir=job["work_dir"], no_timestamp=True,
                     seed=job.get("seed", 42))
    reports = run_task(cfg)
    result_file.write_text(json.dumps({"reports": {name: report.model_dump(mode="json")
                                                   for name, report in reports.items()}}, default=str))


if __name__ == "__main__":
    main(sys.argv[1])
