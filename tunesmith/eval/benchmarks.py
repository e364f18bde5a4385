"""`tunesmith eval --benchmark ...`: standard benchmarks by name, run and scored by lm-evaluation-harness itself (or
EvalScope, eval/evalscope_backend.py), so the numbers are the ones the harness reports.

    tunesmith eval --benchmark mmlu,gsm8k --compare base=smollm2-135m-instruct tuned=runs/prd/final
    tunesmith eval --benchmark gsm8k --compare served=http://127.0.0.1:8000/v1      # tunesmith deploy, vLLM, ...
    tunesmith eval --benchmark my_task --benchmark-dir tasks/ --model runs/prd/final   # the harness's YAML format
    tunesmith eval --benchmark humaneval --allow-code-execution ...                    # code runs in eval/sandbox.py

What each target is to the harness: a model folder is its `hf` model (`pretrained=`), a run's adapter is `hf` with
`peft=` over the run's base, an endpoint is `local-completions` on URL/completions (raw prompts, no chat template,
as the harness sends them); with --benchmark-chat-template the harness renders prompts with the tokenizer's chat
template (few-shot examples as turns) and an endpoint is `local-chat-completions` on URL/chat/completions. Task settings (few-shot count, prompts, generation settings, metrics) are the tasks' own;
--limit and --num-fewshot override them as the harness's own flags do.
Offline: a task's hub dataset is read from the hub cache (`tunesmith download ID --kind dataset` puts it there); a
dataset that is neither cached nor reachable stops the run before any model loads, naming the command to run.
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import glob
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config.eval import EvalConfig
from tunesmith.errors import ConfigError, DataError, TunesmithError
from tunesmith.eval.targets import Target

log = logging.getLogger("tunesmith")

# Short names users know -> the harness's tasks or groups (any other harness name is taken as it is)
ALIASES: dict[str, list[str]] = {
    "mmlu": ["mmlu"], "cmmlu": ["cmmlu"], "ceval": ["ceval-valid"], "gsm8k": ["gsm8k"],
    "arc": ["arc_easy", "arc_challenge"], "hellaswag": ["hellaswag"],
    "truthfulqa": ["truthfulqa_mc1", "truthfulqa_mc2"], "humaneval": ["humaneval"],
}
# Scored from the log-likelihood of each choice or text: needs prompt log-probabilities, which endpoints rarely give
SCORES_LIKELIHOOD = {"loglikelihood", "loglikelihood_rolling", "multiple_choice"}
LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow"}  # datasets' packaged loaders reading data_files


@dataclass
class Leaf:
    """One task of the harness, as its YAML says (before anything is downloaded)."""
    name: str
    config: dict[str, Any]
    source: Path | None = None  # its YAML file

    @property
    def dataset(self) -> str | None:
        return self.config.get("dataset_path")


@dataclass
class Plan:
    specs: list[str | dict]  # what the harness is asked to load: names, YAML paths, or names with a local dataset
    leaves: dict[str, list[Leaf]]  # spec name -> its tasks
    code: list[str]  # tasks that execute generated code
    code_sources: list[Path] = field(default_factory=list)  # their YAML files (their utils.py load code_eval)


@dataclass
class BenchmarkScores:
    columns: list[str]  # "task:metric" in the order the harness reports them
    scores: dict[str, dict[str, float]]  # model -> column -> value
    details: dict[str, dict[str, dict[str, Any]]]  # model -> column -> {value, stderr, samples}
    how: dict[str, str]
    seconds: dict[str, float] = field(default_factory=dict)  # model -> load + evaluate


def _require_lm_eval() -> None:
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError("benchmark: lm-evaluation-harness is not installed: pip install 'tunesmith[bench]' "
                          "(lm-eval==0.4.13; it fits the main venv's pins)")


# -----------------------------------------------------------------------------
# Which tasks, on which data: all checked before any model loads


# The harness's folder of each short name: indexing only these takes well under a second, all ~14k task files ~10 s
FOLDERS: dict[str, str] = {"mmlu": "mmlu", "cmmlu": "cmmlu", "ceval": "ceval", "gsm8k": "gsm8k", "arc": "arc",
                           "hellaswag": "hellaswag", "truthfulqa": "truthfulqa", "humaneval": "humaneval",
                           **{name: name for name in ("mbpp", "winogrande", "piqa", "openbookqa", "ifeval", "bbh",
                                                      "mmlu_pro")}}
_MANAGERS: dict[tuple, Any] = {}


def task_manager(cfg: EvalConfig):
    """The harness's TaskManager over --benchmark-dir and the harness's own tasks: only the folders of the short
    names when every other name is a YAML file or in --benchmark-dir, else all of them. One per process and set."""
    import lm_eval

    folders = []
    for item in cfg.benchmark_dir:
        path = Path(item).expanduser()
        if not path.is_dir():
            raise ConfigError(f"benchmark_dir: {item} is not a folder (expected task YAML files in the harness's format)")
        folders.append(str(path.resolve()))
    own = Path(lm_eval.__file__).parent / "tasks"
    names = [b for b in dict.fromkeys(cfg.benchmark) if not b.endswith((".yaml", ".yml"))]
    rest = [b for b in names if b not in FOLDERS]
    if rest and folders:
        rest = [b for b in rest if b not in _manager(tuple(folders), False).task_index]
    if rest:  # a harness name without a known folder: index every task of the harness
        return _manager(tuple(folders), True)
    return _manager(tuple(folders) + tuple(str(own / FOLDERS[b]) for b in names if b in FOLDERS), False)


def _manager(folders: tuple[str, ...], defaults: bool):
    from lm_eval.tasks import TaskManager

    if (folders, defaults) not in _MANAGERS:
        _MANAGERS[(folders, defaults)] = TaskManager(include_path=list(folders) or None, include_defaults=defaults)
    return _MANAGERS[(folders, defaults)]


def plan(cfg: EvalConfig, targets: list[Target], tm=None) -> Plan:
    """Expand names, check each task exists and its data can be read here, and that code tasks are allowed."""
    from lm_eval.tasks._index import TaskIndex

    tm = tm or task_manager(cfg)
    index = tm.task_index
    specs: list[str | dict] = []
    leaves: dict[str, list[Leaf]] = {}
    for item in dict.fromkeys(cfg.benchmark):
        if item.endswith((".yaml", ".yml")):
            path = Path(item).expanduser()
            entry = TaskIndex.entry_from_path(path)
            if entry is None:
                raise ConfigError(f"benchmark: {item}: not a task YAML file (needs a `task:` or `group:` key)")
            specs.append(str(path.resolve()))
            leaves[str(path.resolve())] = _leaves(entry, index)
            continue
        for name in ALIASES.get(item, [item]):
            if name not in index:
                near = difflib.get_close_matches(name, list(index), n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(near)}?" if near else ""
                raise ConfigError(f"benchmark: {name!r} is not a lm-evaluation-harness task or group{hint} (known "
                                  f"short names: {', '.join(ALIASES)}; `lm-eval ls tasks` lists all; a task of your own: "
                                  "--benchmark FILE.yaml or --benchmark-dir DIR)")
            specs.append(name)
            leaves[name] = _leaves(index[name], index)
    code = [leaf.name for group in leaves.values() for leaf in group if leaf.config.get("unsafe_code")]
    if code and not cfg.allow_code_execution:
        raise ConfigError(f"benchmark: {', '.join(code)} run the code the model writes to score it; pass "
                          "--allow-code-execution to run it in tunesmith's sandbox (a subprocess with CPU, memory and "
                          "time limits, no network, a temporary directory: tunesmith/eval/sandbox.py)")
    endpoints = [t.name for t in targets if t.kind == "endpoint"]
    likelihood = [leaf.name for group in leaves.values() for leaf in group
                  if leaf.config.get("output_type", "generate_until") in SCORES_LIKELIHOOD]
    if endpoints and likelihood:
        raise ConfigError(
            f"benchmark: {', '.join(likelihood[:5])}{' ...' if len(likelihood) > 5 else ''} score the log-likelihood "
            f"of each answer, which needs the prompt's log-probabilities; an endpoint ({', '.join(endpoints)}) gives "
            "them only if its /v1/completions answers echo + logprobs (vLLM does; tunesmith deploy does not). Evaluate "
            "the model folder or run instead, or pick generation tasks (gsm8k, humaneval)")
    sources = list(dict.fromkeys(leaf.source for group in leaves.values() for leaf in group
                                 if leaf.config.get("unsafe_code") and leaf.source))
    return Plan(_with_local_data(specs, leaves), leaves, code, sources)


def _config(entry) -> dict[str, Any]:
    from lm_eval.tasks._yaml_loader import load_yaml

    if entry.cfg is not None:
        return dict(entry.cfg)
    return load_yaml(entry.yaml_path, resolve_func=False) if entry.yaml_path else {}


def _leaves(entry, index, overrides: dict[str, Any] | None = None, depth: int = 0) -> list[Leaf]:
    """The tasks under a task, group or tag, with the settings a group passes down (dataset_path and the like)."""
    from lm_eval.tasks._index import Kind

    if depth > 20:
        raise ConfigError(f"benchmark: {entry.name}: groups nest too deep (a cycle?)")
    cfg = _config(entry)
    if entry.kind == Kind.TAG:
        return [leaf for name in sorted(entry.tags) if name in index
                for leaf in _leaves(index[name], index, overrides, depth + 1)]
    if entry.kind != Kind.GROUP:
        return [Leaf(cfg.get("task", entry.name), {**cfg, **(overrides or {})}, entry.yaml_path)]
    passed = {k: v for k, v in cfg.items() if k not in {"group", "group_alias", "task", "aggregate_metric_list",
                                                         "metadata", "tag"}} | (overrides or {})
    out: list[Leaf] = []
    for item in cfg.get("task") or []:
        name, extra = (item, {}) if isinstance(item, str) else (item.get("task") or item.get("group"), item)
        extra = {k: v for k, v in extra.items() if k not in {"task", "group"}}
        if name in index:
            out += _leaves(index[name], index, passed | extra, depth + 1)
        elif isinstance(item, dict):
            out.append(Leaf(str(name), passed | extra))
    return out


def _with_local_data(specs: list[str], leaves: dict[str, list[Leaf]]) -> list[str | dict]:
    """Stop with what to download for every dataset missing here; a hub dataset found in the cache is read from
    there (the harness would ask the hub for it, which fails offline)."""
    from tunesmith.hub import cached_snapshot, hub_reachable

    missing: dict[str, list[str]] = {}
    out: list[str | dict] = []
    online: bool | None = None
    for spec in specs:
        paths = {leaf.dataset for leaf in leaves[spec]}
        for leaf in leaves[spec]:
            _check_files(spec, leaf)
        local = {}
        for path in sorted(p for p in paths if p and not _is_local(p)):
            folder = cached_snapshot(path, "dataset")
            if folder:
                local[path] = folder
                continue
            if online is None:
                online = hub_reachable()
            if not online:
                missing.setdefault(path, []).append(Path(spec).name if os.sep in spec else spec)
        if len(local) == 1 and len(paths) == 1:  # one hub dataset for the whole task or group: read the cached copy
            out.append({"spec": spec, "dataset_path": next(iter(local.values()))})
        else:
            out.append(spec)
    if missing:
        lines = [f"  {path} (for {', '.join(users)}): tunesmith download {path} --kind dataset"
                 for path, users in missing.items()]
        raise DataError(
            "benchmark: these datasets are not in the hub cache and the hub cannot be reached from here:\n"
            + "\n".join(lines) + "\nRun the commands on a machine with internet access and copy the folders they print "
            "(under ~/.cache/huggingface/hub/) to the same place here (or set HF_HOME), then run again. Or give the "
            "task as YAML in the harness's format over local files (dataset_path: json + dataset_kwargs.data_files) "
            "with --benchmark FILE.yaml or --benchmark-dir DIR.")
    return out


def _is_local(path: str) -> bool:
    return path in LOCAL_BUILDERS or Path(path).expanduser().exists()


def _check_files(spec: str, leaf: Leaf) -> None:
    files = (leaf.config.get("dataset_kwargs") or {}).get("data_files")
    if leaf.dataset not in LOCAL_BUILDERS or files is None:
        return
    names = files.values() if isinstance(files, dict) else [files]
    for group in names:
        for name in [group] if isinstance(group, str) else group:
            if "://" not in name and not glob.glob(os.path.expanduser(name)):
                raise DataError(f"benchmark: {leaf.name} ({spec}): data file {name} not found (a relative path is read "
                                f"from the working directory {os.getcwd()}, as the harness reads it)")


# -----------------------------------------------------------------------------
# Running the harness, one target at a time


def model_for(target: Target, cfg: EvalConfig) -> tuple[str, dict[str, Any], str]:
    """The harness's model type and arguments for a target, and the device it runs on."""
    if target.kind == "endpoint":
        args = {"model": target.served_model, "tokenizer_backend": None, "tokenized_requests": False,
                "num_concurrent": cfg.batch_size, "max_retries": 2}
        if cfg.benchmark_chat_template:  # the server renders the messages with its own chat template
            return "local-chat-completions", args | {"base_url": f"{target.spec}/chat/completions"}, "cpu"
        return "local-completions", args | {"base_url": f"{target.spec}/completions"}, "cpu"
    from tunesmith.models.load import pick_device, pick_dtype, resolve
    from tunesmith.models.runs import read_run_output

    device = pick_device(cfg.device)
    dtype = str(pick_dtype(cfg.dtype, device)).removeprefix("torch.")
    args: dict[str, Any] = {"dtype": dtype}
    if target.kind == "adapters" or (Path(target.spec) / "adapter_config.json").exists():
        run = read_run_output(target.spec)
        if run.reft:
            from tunesmith.errors import ConfigError

            raise ConfigError(f"{target.spec}: a ReFT run's interventions are hooks on the model tunesmith loads, and "
                              "the benchmark harness loads its own; serve the run (tunesmith deploy --adapters "
                              f"{target.spec}) and benchmark the endpoint: --compare reft=http://127.0.0.1:8000/v1")
        if run.is_adapter:
            args |= {"pretrained": str(resolve(target.base or run.base_model)), "peft": str(run.folder)}
        else:
            args["pretrained"] = str(run.folder)
    else:
        args["pretrained"] = str(resolve(target.spec))
    return "hf", args, device


@contextlib.contextmanager
def _code_eval_here(needed: bool):
    """Code tasks call evaluate.load("code_eval") on import; a local folder of that name wins over the hub, so they
    get eval/code_eval.py's metric, which runs every program in the sandbox."""
    if not needed:
        yield
        return
    from tunesmith.eval.code_eval import LOADER

    before = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="tunesmith-code-eval-") as folder:
        (Path(folder) / "code_eval").mkdir()
        (Path(folder) / "code_eval" / "code_eval.py").write_text(LOADER, encoding="utf-8")
        os.chdir(folder)
        try:
            yield
        finally:
            os.chdir(before)


def load_tasks(tm, the_plan: Plan) -> list:
    """The harness's Task and Group objects for the plan (top level only; groups hold their tasks)."""
    from lm_eval.api.group import Group
    from lm_eval.tasks._yaml_loader import load_yaml

    with _code_eval_here(bool(the_plan.code)):  # only the import of the code tasks' utils.py (cached by the harness
        for source in the_plan.code_sources:  # by file), so their data_files still resolve from the working directory
            load_yaml(source, resolve_func=True)
    built = []
    for spec in the_plan.specs:
        if isinstance(spec, dict):  # a hub dataset read from the cache: the task as its YAML says, data from there
            entry = tm.task_index.get(spec["spec"])
            if entry is None:
                from lm_eval.tasks._index import TaskIndex

                entry = TaskIndex.entry_from_path(Path(spec["spec"]))
            built.append(tm._factory.build(entry, overrides={"dataset_path": spec["dataset_path"]},
                                           registry=tm.task_index))
        else:
            loaded = tm.load([spec])
            children = {id(c) for g in loaded.get("groups", {}).values() for c in g}
            top = [g for g in loaded.get("groups", {}).values() if id(g) not in children]
            built += top or list(loaded["tasks"].values())
    return [b for item in built for b in (item if isinstance(item, list) else [item])
            if isinstance(b, Group) or hasattr(b, "config")]


def run_lm_eval(targets: list[Target], cfg: EvalConfig, out: Path) -> BenchmarkScores:
    _require_lm_eval()
    import lm_eval
    from lm_eval.utils import make_table

    tm = task_manager(cfg)
    the_plan = plan(cfg, targets, tm)
    if cfg.limit is not None and cfg.limit < 0:
        raise ConfigError("limit: benchmarks take the first N documents of each task (the harness's --limit); "
                          "give N > 0")
    folder = out / "benchmarks"
    folder.mkdir(parents=True, exist_ok=True)
    result = BenchmarkScores([], {}, {}, {})
    if the_plan.code:
        from tunesmith.eval.sandbox import probe

        sandbox = probe().describe()
        result.how["sandbox"] = f"{', '.join(the_plan.code)}: generated code ran in tunesmith's sandbox: {sandbox}"
        log.info("eval: %s run the generated code in the sandbox: %s", ", ".join(the_plan.code), sandbox)
    # --max-tokens given on the command line caps generation tasks, as the harness's --gen_kwargs max_gen_toks=N
    # does; otherwise each task's own (humaneval: 1024, gsm8k: 256)
    gen_kwargs = {"max_gen_toks": cfg.generation.max_tokens} if "max_tokens" in cfg.generation.model_fields_set else None
    for target in targets:
        kind, args, device = model_for(target, cfg)
        log.info("eval: %s through lm-evaluation-harness %s (%s model)", target.name, lm_eval.__version__, kind)
        tasks = load_tasks(tm, the_plan)  # fresh per target: the harness keeps each task's answers on it
        if the_plan.code:
            from tunesmith.eval import code_eval

            code_eval.RECORD = folder / f"{target.name}-sandbox.jsonl"
            code_eval.RECORD.write_text("", encoding="utf-8")
        start = time.time()
        try:
            raw = lm_eval.simple_evaluate(
                model=kind, model_args=args, tasks=tasks, task_manager=tm, num_fewshot=cfg.num_fewshot,
                batch_size=cfg.batch_size, device=device, limit=cfg.limit, log_samples=True, gen_kwargs=gen_kwargs,
                apply_chat_template=cfg.benchmark_chat_template, fewshot_as_multiturn=cfg.benchmark_chat_template,
                confirm_run_unsafe_code=cfg.allow_code_execution)
        except TunesmithError:
            raise
        except (ConnectionError, OSError) as err:
            raise TunesmithError(f"benchmark: {target.name}: the harness failed: {type(err).__name__}: {err}") from None
        seconds = time.time() - start
        print(make_table(raw))
        if raw.get("groups"):
            print(make_table(raw, "groups"))
        _save(folder, target, raw, args, seconds)
        _collect(result, target.name, raw, [s if isinstance(s, str) else s["spec"] for s in the_plan.specs])
        result.seconds[target.name] = round(seconds, 2)
    result.how["benchmarks"] = (f"lm-evaluation-harness {lm_eval.__version__}: each task's own prompts, few-shot "
                                "examples and metrics (the `hf` model for folders and runs, `local-completions` for "
                                "endpoints); its raw results in benchmarks/")
    return result


def _collect(result: BenchmarkScores, model: str, raw: dict[str, Any], specs: list[str]) -> None:
    """Columns for the requested tasks and groups (each subtask's score stays in benchmarks/MODEL.json)."""
    names = []
    for spec in specs:
        if spec.endswith((".yaml", ".yml")):
            from lm_eval.tasks._yaml_loader import load_yaml

            cfg = load_yaml(spec, resolve_func=False)
            names.append(cfg.get("group") or cfg.get("task"))
        else:
            names.append(spec)
    table = {**raw.get("results", {}), **raw.get("groups", {})}
    scores, details = result.scores.setdefault(model, {}), result.details.setdefault(model, {})
    queue = list(names)
    while queue:
        name = queue.pop(0)
        pairs = [(key, value) for key, value in (table.get(name) or {}).items()
                 if "," in key and "_stderr" not in key and isinstance(value, (int, float))]
        if not pairs and raw.get("group_subtasks", {}).get(name):  # a group without an aggregate: its tasks' columns
            queue[:0] = raw["group_subtasks"][name]
            continue
        for key, value in pairs:
            metric, _, filt = key.partition(",")
            column = f"{name}:{metric}" + ("" if filt == "none" else f"({filt})")
            scores[column] = float(value)
            stderr = table[name].get(f"{metric}_stderr,{filt}")
            details[column] = {"value": float(value), "stderr": stderr if isinstance(stderr, float) else None,
                               "samples": (raw.get("n-samples", {}).get(name) or {}).get("effective")}
            if column not in result.columns:
                result.columns.append(column)


def _save(folder: Path, target: Target, raw: dict[str, Any], args: dict[str, Any], seconds: float) -> None:
    """The harness's own results (as its --output_path writes them) and every scored document."""
    samples = raw.pop("samples", {})
    raw = {**raw, "tunesmith": {"model": target.name, "spec": target.spec, "model_args": args,
                                "seconds": round(seconds, 2)}}
    (folder / f"{target.name}.json").write_text(json.dumps(raw, indent=2, default=str, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
    with (folder / f"{target.name}-samples.jsonl").open("w", encoding="utf-8") as f:
        for task, docs in samples.items():
            for doc in docs:
                f.write(json.dumps({"task": task, **doc}, default=str, ensure_ascii=False) + "\n")


# -----------------------------------------------------------------------------
# --benchmark without --dataset: the same table, results.json and chart as the other metrics


def check_benchmarks(cfg: EvalConfig, targets: list[Target]) -> None:
    """Everything that can be known before a model loads: the tasks, their data, the code gate."""
    if cfg.benchmark_backend == "evalscope":
        from tunesmith.eval.evalscope_backend import check_evalscope

        check_evalscope(cfg, targets)
        return
    _require_lm_eval()
    plan(cfg, targets)


def add_benchmarks(targets: list[Target], cfg: EvalConfig, out: Path,
                   models: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Benchmarks beside --dataset's metrics: their columns join each model's scores in eval/run.py's table; returns
    the columns and how they were computed."""
    bench = run_benchmarks(targets, cfg, out)
    for name, m in models.items():
        m["scores"].update(bench.scores.get(name, {}))
        m["benchmarks"] = bench.details.get(name, {})
        m["seconds"] = round(m["seconds"] + bench.seconds.get(name, 0.0), 2)
    return bench.columns, bench.how


def run_benchmarks(targets: list[Target], cfg: EvalConfig, out: Path) -> BenchmarkScores:
    if cfg.benchmark_backend == "evalscope":
        from tunesmith.eval.evalscope_backend import run_evalscope

        return run_evalscope(targets, cfg, out)
    return run_lm_eval(targets, cfg, out)


def evaluate_benchmarks(cfg: EvalConfig):
    from tunesmith.eval import report
    from tunesmith.eval.run import EvalResult, _save_config, output_dir_for
    from tunesmith.eval.targets import check_endpoints, targets_from

    targets = targets_from(cfg)
    check_endpoints(targets, cfg)
    check_benchmarks(cfg, targets)
    out = output_dir_for(cfg)
    _save_config(cfg, out, targets, 0, 0)
    bench = run_benchmarks(targets, cfg, out)
    models = {t.name: {"kind": t.kind, "spec": t.spec + (f"#{t.served_model}" if t.served_model else ""),
                       "scores": bench.scores.get(t.name, {}),
                       "seconds": bench.seconds.get(t.name, 0.0),
                       "benchmarks": bench.details.get(t.name, {})} for t in targets}
    results = {"dataset": list(cfg.benchmark), "rows": 0, "skipped_rows": 0, "metrics": [],
               "benchmarks": list(cfg.benchmark), "backend": cfg.benchmark_backend, "columns": bench.columns,
               "models": models, "how": bench.how,
               "created": datetime.datetime.now().isoformat(timespec="seconds")}
    results["rows"] = max((d.get("samples") or 0 for m in models.values() for d in m["benchmarks"].values()),
                          default=0)  # the table's title: documents of the largest task
    report.write_results(out / "results.json", results)
    chart = report.plot_scores(out / "scores.png", results)
    report.print_table(results)
    for line in bench.how.values():
        log.info("eval: %s", line)
    log.info("eval: results in %s (results.json, benchmarks/%s)", out, ", scores.png" if chart else "")
    return EvalResult(out, {name: m["scores"] for name, m in models.items()}, out / "results.json",
                      out / "benchmarks", chart)
