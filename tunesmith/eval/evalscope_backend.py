"""`tunesmith eval --benchmark ... --benchmark-backend evalscope`: EvalScope's benchmarks, run and scored by EvalScope
itself, in its own venv (.venv-evalscope: evalscope 1.14.1 pulls datasets 4.8, where tunesmith pins 5.2).

    bash scripts/evalscope-env.sh
    tunesmith eval --benchmark gsm8k,ceval --benchmark-backend evalscope --compare base=smollm2-135m-instruct tuned=runs/x/final
    tunesmith eval --benchmark general_mcq --benchmark-backend evalscope --benchmark-dir mcq/ --model runs/x/final

EvalScope always talks to an OpenAI-compatible endpoint here (its `openai_api` model): an endpoint target is called
as it is; a local model or run is served for the run by tunesmith's own deploy app on 127.0.0.1 (same chat template,
system prompt and adapters as `tunesmith deploy`), because EvalScope 1.14.1's checkpoint loader does not work with
transformers 5.23 (it passes its message objects to apply_chat_template). --benchmark-dir DIR is each benchmark's
local_path in EvalScope's own format (DIR/NAME when that folder exists, else DIR: general_mcq/general_qa files
SUBSET_val.jsonl). Code benchmarks are refused here: EvalScope runs generated code in its own process or docker, not
in tunesmith's sandbox (use the lm-eval backend for them).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tunesmith.config.eval import EvalConfig
from tunesmith.errors import ConfigError, DataError, TunesmithError
from tunesmith.eval.targets import Target

log = logging.getLogger("tunesmith")
WORKER = Path(__file__).with_name("evalscope_worker.py")
ALIASES = {"truthfulqa": "truthful_qa"}  # the same short names as the lm-eval backend where EvalScope differs


def python() -> Path:
    """The interpreter of the EvalScope venv: $TUNESMITH_EVALSCOPE_PYTHON, else .venv-evalscope beside the checkout or
    in the working directory."""
    chosen = os.environ.get("TUNESMITH_EVALSCOPE_PYTHON")
    if chosen:
        if not Path(chosen).exists():
            raise ConfigError(f"TUNESMITH_EVALSCOPE_PYTHON={chosen}: no such file (a python with evalscope 1.14.1)")
        return Path(chosen)
    for path in (Path(__file__).resolve().parents[2] / ".venv-evalscope/bin/python", Path(".venv-evalscope/bin/python")):
        if path.exists():
            return path
    raise ConfigError("benchmark_backend: evalscope pins datasets 4.8 (tunesmith pins 5.2), so it lives in a venv of "
                      "its own: run `bash scripts/evalscope-env.sh` (builds .venv-evalscope, a few minutes) or point "
                      "TUNESMITH_EVALSCOPE_PYTHON at a python with evalscope 1.14.1; or use --benchmark-backend lm-eval")


def check_evalscope(cfg: EvalConfig, targets: list[Target]) -> None:
    python()
    if cfg.limit is not None and cfg.limit < 0:
        raise ConfigError("limit: benchmarks take the first N samples of each subset; give N > 0")
    for item in cfg.benchmark_dir:
        if not Path(item).expanduser().is_dir():
            raise ConfigError(f"benchmark_dir: {item} is not a folder (EvalScope's local_path)")
    with tempfile.TemporaryDirectory(prefix="tunesmith-evalscope-") as tmp:  # names, code, data: before weights load
        _run(targets[0], cfg, [ALIASES.get(b, b) for b in dict.fromkeys(cfg.benchmark)], "", "", Path(tmp), True)


def run_evalscope(targets: list[Target], cfg: EvalConfig, out: Path):
    from tunesmith.eval.benchmarks import BenchmarkScores

    names = [ALIASES.get(b, b) for b in dict.fromkeys(cfg.benchmark)]
    folder = out / "benchmarks"
    folder.mkdir(parents=True, exist_ok=True)
    result = BenchmarkScores([], {}, {}, {})
    for target in targets:
        start = time.time()
        with _endpoint(target, cfg) as (url, model):
            reports = _run(target, cfg, names, url, model, folder)
        result.seconds[target.name] = round(time.time() - start, 2)
        scores, details = result.scores.setdefault(target.name, {}), result.details.setdefault(target.name, {})
        for name, report in reports.items():
            for metric in report.get("metrics") or []:
                column = f"{name}:{metric['identity']['name']}"
                scores[column] = float(metric["score"])
                details[column] = {"value": float(metric["score"]), "stderr": None, "samples": metric.get("num")}
                if column not in result.columns:
                    result.columns.append(column)
    version = subprocess.run([str(python()), "-c", "import evalscope; print(evalscope.__version__)"],
                             capture_output=True, text=True, check=False).stdout.strip()
    result.how["benchmarks"] = (f"EvalScope {version} ({python()}): each benchmark's own prompts and scoring through "
                                "its openai_api model (local models served by tunesmith's deploy app); its work folder "
                                "(predictions, reviews, reports) in benchmarks/evalscope-MODEL/")
    return result


def _run(target: Target, cfg: EvalConfig, names: list[str], url: str, model: str, folder: Path,
         check_only: bool = False) -> dict[str, Any]:
    from tunesmith.hub import MODELSCOPE_HOST, hub_reachable

    dataset_args: dict[str, dict] = {}
    for name in names:
        args: dict[str, Any] = {}
        for item in cfg.benchmark_dir:
            base = Path(item).expanduser().resolve()
            args["local_path"] = str(base / name if (base / name).is_dir() else base)
        if cfg.num_fewshot is not None:
            args["few_shot_num"] = cfg.num_fewshot
        if name in ("general_mcq", "general_qa") and "local_path" in args:
            subsets = sorted({p.name.rsplit("_", 1)[0] for p in Path(args["local_path"]).glob("*_val.*")})
            if subsets:
                args["subset_list"] = subsets
        dataset_args[name] = args
    generation = {"temperature": cfg.generation.temperature}
    if "max_tokens" in cfg.generation.model_fields_set:
        generation["max_tokens"] = cfg.generation.max_tokens
    work = folder / f"evalscope-{target.name}"
    with tempfile.TemporaryDirectory(prefix="tunesmith-evalscope-") as tmp:
        job = {"model": model, "api_url": url, "api_key": cfg.api_key or os.environ.get("OPENAI_API_KEY"),
               "datasets": names, "dataset_args": dataset_args, "generation_config": generation, "limit": cfg.limit,
               "batch_size": cfg.batch_size, "work_dir": str(work), "seed": cfg.generation.seed or 42,
               "result": str(Path(tmp) / "result.json"), "offline": not hub_reachable(host=MODELSCOPE_HOST), "check_only": check_only}
        (Path(tmp) / "job.json").write_text(json.dumps(job))
        if not check_only:
            log.info("eval: %s through EvalScope (%s) at %s", target.name, python(), url)
        proc = subprocess.run([str(python()), str(WORKER), str(Path(tmp) / "job.json")], check=False,
                              capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        if proc.returncode != 0 or not Path(job["result"]).exists():
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise TunesmithError(f"benchmark: EvalScope failed for {target.name} ({python()}):\n{tail}")
        if not check_only:
            work.mkdir(parents=True, exist_ok=True)
            (work / "evalscope.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
        answer = json.loads(Path(job["result"]).read_text())
    if "unknown" in answer:
        raise ConfigError(f"benchmark: {', '.join(answer['unknown'])}: not an EvalScope benchmark (it has "
                          f"{len(answer['known'])}, e.g. {', '.join(answer['known'][:12])} ...)")
    if "code" in answer:
        raise ConfigError(f"benchmark: {', '.join(answer['code'])} run generated code, which EvalScope does outside "
                          "tunesmith's sandbox; use --benchmark-backend lm-eval --allow-code-execution")
    if "missing" in answer:
        lines = [f"  {m['dataset']} (for {m['benchmark']}): tunesmith download {m['dataset']} --kind dataset --hub "
                 "modelscope" for m in answer["missing"]]
        raise DataError("benchmark: EvalScope reads these datasets from ModelScope, and they are not in its cache "
                        "(~/.cache/modelscope/hub/datasets) while offline:\n" + "\n".join(lines) + "\nRun the commands "
                        "on a machine with internet access and copy the folders here, or give the files with "
                        "--benchmark-dir DIR (EvalScope's local_path).")
    return answer["reports"]


class _endpoint:
    """An endpoint target as it is; a local model or run served by tunesmith's deploy app for the duration."""

    def __init__(self, target: Target, cfg: EvalConfig):
        self.target, self.cfg = target, cfg
        self.server = self.thread = self.engine = None

    def __enter__(self) -> tuple[str, str]:
        if self.target.kind == "endpoint":
            return self.target.spec, self.target.served_model or ""
        import uvicorn

        from tunesmith.config import DeployConfig
        from tunesmith.infer import load_engine
        from tunesmith.serve.app import build_app

        cfg = self.cfg
        if self.target.kind == "adapters":
            self.engine = load_engine(cfg.backend, self.target.base, {self.target.name: self.target.spec}, cfg.device,
                                      cfg.dtype, cfg.system, chat_template_kwargs=cfg.chat_template_kwargs)
            deploy = DeployConfig(model=self.target.base)  # the app serves what the engine holds
        else:
            self.engine = load_engine(cfg.backend, self.target.spec, None, cfg.device, cfg.dtype, cfg.system,
                                      chat_template_kwargs=cfg.chat_template_kwargs)
            deploy = DeployConfig(model=self.target.spec)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(build_app(self.engine, deploy), host="127.0.0.1", port=port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise TunesmithError(f"benchmark: could not serve {self.target.name} on 127.0.0.1:{port}")
            time.sleep(0.05)
        served = self.target.name if self.target.kind == "adapters" else self.engine.model_names()[0]
        return f"http://127.0.0.1:{port}/v1", served

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(30)
        if self.engine is not None:
            self.engine.shutdown()
