"""`tunesmith export`: from a run's adapter (merged first), a full fine-tune or any model, to a plain HF folder, a
bitsandbytes folder, a GGUF file (+ an Ollama Modelfile), or the adapter alone; every export writes lineage.json and
export_report.json.

    tunesmith export --adapters runs/prd/final                        # runs/prd/merged
    tunesmith export --adapters runs/prd/final --quant bnb4           # runs/prd/merged-bnb4
    tunesmith export --adapters runs/prd/final --to ollama --gguf-type q8_0   # runs/prd/merged-ollama-q8_0
    tunesmith export --adapters runs/prd/final --merge-lora false     # runs/prd/adapter: the adapter, with lineage
    tunesmith export --inspect runs/prd/merged-bnb4                   # the chain back to the base model

Order of work: check the input (an already-quantized model is refused) and the output (only an earlier export or an
empty folder is replaced unless --overwrite; never the source's folder or the current directory), merge in float32
and check the merge, measure the model before (perplexity on held-out text, greedy answers), write into a staging
folder beside the output, record the lineage, rename the staging folder into place (an export is whole or absent),
then load the output as a user would and measure it again: export_report.json holds both.
"""

from __future__ import annotations

import gc
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith import lineage
from tunesmith.config import ExportConfig
from tunesmith.errors import ConfigError
from tunesmith.export import bnb, chat_template, compress, gguf, ollama, report
from tunesmith.export.merge import merge_adapter
from tunesmith.models import load as models
from tunesmith.models.runs import read_run_output
from tunesmith.templates import Template


@dataclass
class Source:
    """What an export starts from."""

    model_folder: Path  # the base model (with an adapter) or the model itself
    adapter: Path | None  # a run's adapter folder, merged unless --merge-lora false
    template_folder: Path  # where the run's tokenizer and template are
    parent: dict  # lineage link of the input artifact
    stem: str  # default output name: merged, model, or the model's name (then + -bnb4, -gguf-q8_0 ...)
    label: str  # the run's or the model's name (GGUF file name, general.name)
    config: dict  # the run's config.yaml ({} for a model)
    default_dir: Path  # where default outputs go

    @property
    def size(self) -> int:
        return report.folder_bytes(self.model_folder, *([self.adapter] if self.adapter else []))


def export(cfg: ExportConfig) -> Path:
    if cfg.inspect:
        print(lineage.describe(Path(cfg.inspect)))
        return Path(cfg.inspect)
    started = time.perf_counter()
    if cfg.push_to_hub:
        hub_push_check(cfg.push_to_hub)
    src = source(cfg)
    refuse_quantized(src.model_folder, cfg)
    if cfg.quant in compress.METHODS:  # the group size, the venv and (below) the calibration data, before any work
        if cfg.quant != "fp8":
            compress.check_group_size(json.loads((src.model_folder / "config.json").read_text()), cfg.group_size)
        compress.python()
    out = Path(cfg.output) if cfg.output else src.default_dir / output_name(cfg, src)
    check_output(out, src, cfg)
    device = models.pick_device(cfg.device)
    if cfg.to != "hf":  # refused before any work: an architecture GGUF cannot take, a template Ollama cannot render
        gguf.supported(json.loads((src.model_folder / "config.json").read_text()).get("model_type", "?"))
    template = Template.load(src.template_folder)
    # every folder and GGUF written below carries this one: the --system and chat_template_kwargs the run trained
    # with render without tunesmith too (Template renders the same ids with it)
    template.tokenizer.chat_template = chat_template.standalone(template)
    if cfg.to == "ollama":
        ollama.cut(template)
    probe = report.build_probe(template, cfg.eval_dataset, cfg.eval_tokens, cfg.encoding, cfg.greedy_prompts)
    calib = calibration_rows(cfg, src, template) if cfg.quant in ("gptq", "awq") else []
    if src.adapter and not cfg.merge_lora:
        return export_adapter(cfg, src, out, template, probe, device, started)

    model, merge_diff = load_source(src, cfg, template)
    if merge_diff is not None:
        print(f"merged {src.adapter} into {src.model_folder.name}: max |logit difference| = {merge_diff:.2e} "
              "(float32)", file=sys.stderr)
    before = report.measure(model.to(device), probe)
    staging = staging_folder(out)
    try:
        if cfg.to != "hf":
            return export_gguf(cfg, src, out, staging, model, template, probe, before, merge_diff, started)
        return export_hf(cfg, src, out, staging, model, template, probe, before, merge_diff, calib, device, started)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # there only when writing failed: an export is whole or absent


def export_hf(cfg: ExportConfig, src: Source, out: Path, staging: Path, model: Any, template: Any,
              probe: report.Probe, before: dict, merge_diff: float | None, calib: list[list[int]], device: str,
              started: float) -> Path:
    """A transformers folder: plain, bitsandbytes, or llmcompressor's compressed-tensors (measured in its venv)."""
    dtype = _dtype(cfg.dtype)
    settings = {"quant": cfg.quant, "dtype": cfg.dtype, "merged_adapter": str(src.adapter) if src.adapter else None,
                "merge_max_logit_diff": merge_diff}
    if cfg.quant in compress.METHODS:
        done = compress.run(model.to(dtype).cpu(), template, staging, cfg.quant, cfg.bits, cfg.group_size, calib,
                            calib_length(src), probe, report.GREEDY_TOKENS)
        settings |= {"bits": cfg.bits if cfg.quant != "fp8" else 8, "calibration_rows": len(calib),
                     "calib_dataset": (cfg.calib_dataset or src.config.get("dataset")) if calib else None,
                     "group_size": cfg.group_size if cfg.quant != "fp8" else None, "format": "compressed-tensors"}
        publish(staging, out, src, cfg, "quantized", settings)
        after = {"perplexity": done["perplexity"], "greedy": done["greedy"]}  # measured in .venv-quant
        return finish(cfg, src, out, template, probe, before, after, started)
    if cfg.quant == "none":
        model.to(dtype).save_pretrained(staging, safe_serialization=True)
        template.save(staging)
        kind = "merged" if src.adapter else "model"
    else:
        bnb.write(model, template, staging, cfg.quant, dtype, device)
        kind = "quantized"
    del model
    gc.collect()
    publish(staging, out, src, cfg, kind, settings)
    after_model = bnb.load(out, device) if cfg.quant != "none" else models.load_model(out, dtype, device)
    after = report.measure(after_model, probe)
    return finish(cfg, src, out, template, probe, before, after, started)


# -----------------------------------------------------------------------------
# Input


# models/reft.py: LoReFT edits a layer's output h, the residual stream, as A h + c (A = I + R^T (W - R), c = R^T b).
REFT_HAS_NO_MERGED_FORM = (
    "adapters: {folder} holds ReFT interventions (tuner reft), which have no merged form: at prompt positions (f1+l1 "
    "and the like) they edit chosen tokens of each request, which no weight can single out; and even at every "
    "position (all), the edit A h + c acts on the residual stream after a layer, which reaches every later layer and "
    "the LM head through skip connections that have no weight to fold A into. Serve the run as it is: tunesmith infer "
    "or deploy --adapters {folder} (transformers backend)")


def source(cfg: ExportConfig) -> Source:
    if cfg.adapters:
        run = read_run_output(cfg.adapters)
        if run.reft:
            raise ConfigError(REFT_HAS_NO_MERGED_FORM.format(folder=run.folder))
        if run.is_adapter:
            base = models.resolve(cfg.model or run.base_model)
            return Source(base, run.folder, run.folder, lineage.parent_of(run.folder), "merged",
                          run.folder.parent.name, run.config, run.folder.parent)
        if cfg.model:
            raise ConfigError(f"model: {run.folder} is a full model (no adapter), so there is no base to give; "
                              "drop --model")
        return Source(run.folder, None, run.folder, lineage.parent_of(run.folder), "model", run.folder.parent.name,
                      run.config, run.folder.parent)
    folder = models.resolve(cfg.model)
    name = Path(cfg.model).name if Path(cfg.model).is_dir() else cfg.model.replace("/", "--")
    return Source(folder, None, folder, lineage.parent_of(folder, name=cfg.model), name, name, {}, Path("exports"))


def refuse_quantized(folder: Path, cfg: ExportConfig) -> None:
    config = folder / "config.json"
    quant = json.loads(config.read_text()).get("quantization_config") if config.exists() else None
    if quant:
        method = quant.get("quant_method", "quantized")
        raise ConfigError(f"{folder} is already quantized ({method}); export from the model it was made from "
                          "(its lineage.json names it: tunesmith export --inspect " + str(folder) + ")")


def output_name(cfg: ExportConfig, src: Source) -> str:
    if src.adapter and not cfg.merge_lora:
        return "adapter"
    if cfg.to != "hf":
        return f"{src.stem}-{cfg.to}-{cfg.gguf_type}"
    return src.stem if cfg.quant == "none" else f"{src.stem}-{cfg.quant}"


def calibration_rows(cfg: ExportConfig, src: Source, template: Any) -> list[list[int]]:
    specs = cfg.calib_dataset or list(src.config.get("dataset") or [])
    if not specs:
        raise ConfigError(f"calib_dataset: {cfg.quant} calibrates on rows of data; give --calib-dataset FILE or a "
                          "registry name (a run's adapter uses its own training data by default)")
    kind = None if cfg.calib_dataset else compress.run_kind(src.config)  # the run's data, read as its method read it
    return compress.calibration(template, specs, cfg.calib_samples, calib_length(src), 42, cfg.encoding, kind=kind)


def calib_length(src: Source) -> int:
    return int(src.config.get("max_length") or 2048)


def hub_push_check(repo: str) -> None:
    """--push-to-hub needs the hub and a token: both checked before any work."""
    from tunesmith.hub import hub_reachable

    if not hub_reachable():
        raise ConfigError(f"push_to_hub: the Hugging Face hub cannot be reached from here, so {repo} cannot be "
                          "uploaded; export without --push-to-hub and upload the folder later (huggingface-cli upload "
                          f"{repo} FOLDER)")
    from huggingface_hub import get_token

    if not get_token():
        raise ConfigError("push_to_hub: no hub token; run `huggingface-cli login` or set HF_TOKEN")


def push(repo: str, folder: Path) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, private=True, exist_ok=True)
    return api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message="tunesmith export").commit_url


def load_source(src: Source, cfg: ExportConfig, template: Any) -> tuple[Any, float | None]:
    """The model to export, and the merge's max logit difference (None without an adapter)."""
    if src.adapter:
        return merge_adapter(src.model_folder, src.adapter, template, cfg.verify)
    return models.load_model(src.model_folder, _dtype(cfg.dtype), "cpu"), None


def _dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


# -----------------------------------------------------------------------------
# GGUF and Ollama


def export_gguf(cfg: ExportConfig, src: Source, out: Path, staging: Path, model: Any, template: Any,
                probe: report.Probe, before: dict, merge_diff: float | None, started: float) -> Path:
    """One .gguf (+ Modelfile for Ollama) with the tokenizer and template files beside it. Writing leaves the model in
    memory holding the file's weights, so the report's "after" is the GGUF's own numbers (dequantized; llama.cpp's
    kernels also round activations to 8 bits in quantized matmuls, which this does not)."""
    name = f"{src.label}-{cfg.gguf_type}.gguf"
    written = gguf.write(model.cpu(), template, staging / name, cfg.gguf_type, src.label, src.parent.get("sha256"))
    template.save(staging)
    if cfg.to == "ollama":
        ollama.write(staging, name, template, src.config.get("max_length"))
    settings = {"to": cfg.to, "gguf_type": cfg.gguf_type, "file": name,
                "merged_adapter": str(src.adapter) if src.adapter else None, "merge_max_logit_diff": merge_diff,
                **written}
    publish(staging, out, src, cfg, cfg.to, settings)
    after = report.measure(model.to(models.pick_device(cfg.device)), probe)
    print(f"wrote {out / name}: {written['architecture']}, {written['tokenizer']} tokenizer (pre {written['pre']}), "
          f"tensors {written['tensor_types']}", file=sys.stderr)
    return finish(cfg, src, out, template, probe, before, after, started)


# -----------------------------------------------------------------------------
# The adapter alone (--merge-lora false)


def export_adapter(cfg: ExportConfig, src: Source, out: Path, template: Any, probe: report.Probe, device: str,
                   started: float) -> Path:
    """Copy the adapter with its tokenizer, template and config; measured on its base before (from the run) and after
    (from the copy), which proves the copy loads."""
    import torch

    def measured(adapter: Path) -> dict:
        model = models.attach_adapters(models.load_model(src.model_folder, torch.float32, device), adapter, False)
        try:
            return report.measure(model, probe)
        finally:
            del model
            gc.collect()

    before = measured(src.adapter)
    staging = staging_folder(out)
    try:
        for item in src.adapter.iterdir():
            if item.name not in (lineage.LINEAGE_FILE, lineage.REPORT_FILE) and item.is_file():
                shutil.copy2(item, staging / item.name)
        publish(staging, out, src, cfg, "adapter", {"merge_lora": False, "base_model": str(src.model_folder)})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    after = measured(out)
    return finish(cfg, src, out, template, probe, before, after, started)


# -----------------------------------------------------------------------------
# Output


def staging_folder(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))


def check_output(out: Path, src: Source, cfg: ExportConfig) -> None:
    """Publishing deletes what `out` holds: refuse a folder holding the source or the current directory (even with
    --overwrite: the run or the user's files would go), and one holding files other than an earlier export unless
    --overwrite says so. Checked before any work, and again right before the delete."""
    where = out.resolve()
    kept = {"the source adapter": src.adapter, "the source model": src.model_folder,
            "the source's tokenizer and template": src.template_folder, "the current directory": Path.cwd()}
    for what, folder in kept.items():
        if folder is not None and folder.resolve().is_relative_to(where):
            held = "is" if folder.resolve() == where else f"holds {folder}, which is"
            raise ConfigError(f"output: {out} {held} {what}; an export replaces its --output folder, so it would be "
                              f"deleted. Choose a new folder, e.g. --output {src.default_dir / output_name(cfg, src)}")
    if not out.exists() or cfg.overwrite or is_earlier_export(out):
        return
    if not out.is_dir():
        raise ConfigError(f"output: {out} is a file; choose a folder for --output")
    raise ConfigError(f"output: {out} already holds files that are not an earlier tunesmith export (e.g. "
                      f"{sorted(p.name for p in out.iterdir())[:3]}); choose an empty or new folder for --output, or "
                      "pass --overwrite to delete them")


def is_earlier_export(folder: Path) -> bool:
    """An empty folder, or one holding an export's report or its lineage record (written before the report)."""
    if not folder.is_dir():
        return False
    if not any(folder.iterdir()) or (folder / lineage.REPORT_FILE).exists():
        return True
    try:
        record = lineage.read(folder) or {}
    except (OSError, ValueError):  # an unreadable lineage.json proves nothing
        return False
    return record.get("command") == "export"


def publish(staging: Path, out: Path, src: Source, cfg: ExportConfig, kind: str, settings: dict) -> None:
    """Record the lineage of what is in `staging`, then move it into place (replacing an earlier export)."""
    record = lineage.build(staging, kind, "export", cfg.model_dump(mode="json"), src.parent,
                           extra={"export": settings})
    lineage.write(staging, record)
    check_output(out, src, cfg)  # the folder may have changed while the export ran
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():  # a file, only with --overwrite
        out.unlink()
    shutil.move(str(staging), out)


def finish(cfg: ExportConfig, src: Source, out: Path, template: Any, probe: report.Probe, before: dict, after: dict,
           started: float) -> Path:
    def decode(ids: list[int]) -> str:
        return template.tokenizer.decode(ids, skip_special_tokens=False)

    rep = {
        "output": str(out),
        "input": str(src.adapter or src.model_folder),
        "size_before_bytes": src.size,
        "size_after_bytes": report.folder_bytes(out, skip_optimizer=False),
        "eval_source": probe.source,
        "eval_tokens": probe.tokens,
        "perplexity_before": before["perplexity"],
        "perplexity_after": after["perplexity"],
        "greedy_agreement": report.agreement(before["greedy"], after["greedy"]),
        "greedy": [{"prompt": prompt, "before": decode(b), "after": decode(a)}
                   for prompt, b, a in zip(report.PROMPTS, before["greedy"], after["greedy"])],
        "seconds": round(time.perf_counter() - started, 2),
        "settings": {k: v for k, v in cfg.model_dump(mode="json").items() if v not in (None, [], "")},
    }
    report.write(out, rep)
    report.show(rep)
    if cfg.push_to_hub:
        print(f"pushed {out} to {cfg.push_to_hub}: {push(cfg.push_to_hub, out)}", file=sys.stderr)
    return out
