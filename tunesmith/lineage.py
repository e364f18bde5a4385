"""lineage.json: where an artifact came from, written into every folder tunesmith makes (a run's final/, every export).

    tunesmith export --inspect runs/prd/final          # or an exported folder: prints the chain back to the base

A record holds the content hashes of the data files, of the chat template and of the resolved config, the library
versions, the hash of every file of the artifact, and its parent: the record of the artifact it was made from,
embedded whole with its hash. So adapter -> merged -> quantized -> GGUF is one chain that the last folder carries
alone, and `inspect` can check each link against the files still on disk.

Hashes are SHA-256 of the bytes; a config or record is hashed as canonical JSON (sorted keys), so YAML layout does not
change it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

from tunesmith.versions import installed_versions

LINEAGE_FILE = "lineage.json"
REPORT_FILE = "export_report.json"
FORMAT = 1
PACKAGES = ("tunesmith", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "tokenizers",
            "safetensors", "bitsandbytes", "gguf", "llmcompressor", "compressed-tensors")
# What makes the renderer: the chat template (wherever transformers saved it) and tunesmith's own template record.
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "tunesmith_template.json")
# Not part of the artifact's content: the records themselves, and the run's logs beside the weights.
UNHASHED = {LINEAGE_FILE, REPORT_FILE}


# -----------------------------------------------------------------------------
# Hashes


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def json_sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def folder_files(folder: Path) -> dict[str, dict]:
    """Every file of an artifact folder (recursively, records excluded): name -> {bytes, sha256}."""
    folder = Path(folder)
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name in UNHASHED or name.startswith("."):
            continue
        out[name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    return out


def template_sha256(folder: Path) -> str | None:
    """The renderer's hash: the chat template (tokenizer_config.json's field or its own file) and
    tunesmith_template.json (system prompt, end of turn, stop tokens, chat_template_kwargs)."""
    folder = Path(folder)
    parts: dict[str, Any] = {}
    config = folder / "tokenizer_config.json"
    if config.exists():
        parts["tokenizer_config.chat_template"] = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
    for name in TEMPLATE_FILES:
        if (folder / name).exists():
            parts[name] = (folder / name).read_text(encoding="utf-8")
    if not any(v for v in parts.values()):
        return None
    return json_sha256(parts)


def data_entries(specs: list[str]) -> list[dict]:
    """One entry per dataset spec: the files it read with their content hashes (hub datasets: the id only)."""
    from tunesmith.data.registry import REGISTRY

    out = []
    for spec in specs:
        name, sep, count = spec.rpartition("#")
        if not (sep and count.isdigit() and name):
            name = spec
        path = Path(name).expanduser()
        if not path.exists() and name in REGISTRY and REGISTRY[name].path is not None:
            path = REGISTRY[name].path
        entry: dict[str, Any] = {"spec": spec}
        if path.is_file():
            entry["files"] = [{"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": file_sha256(path)}]
        elif path.is_dir():
            entry["files"] = [{"path": str(p.resolve()), "bytes": p.stat().st_size, "sha256": file_sha256(p)}
                              for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")]
        else:
            entry["hub"] = REGISTRY[name].hub_id if name in REGISTRY else name  # content not on this machine
        out.append(entry)
    return out


# -----------------------------------------------------------------------------
# Records


def read(folder: Path) -> dict | None:
    path = Path(folder) / LINEAGE_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def record_sha256(record: dict) -> str:
    return json_sha256(record)


def parent_of(folder: Path, name: str | None = None) -> dict:
    """The link to an artifact something was made from: its own record (embedded) when it has one, else a stub that
    names it and hashes its config.json (a base model from the hub or a folder tunesmith did not make)."""
    folder = Path(folder)
    record = read(folder)
    if record is not None:
        return {"path": str(folder.resolve()), "kind": record.get("kind"), "sha256": record_sha256(record),
                "record": record}
    stub: dict[str, Any] = {"path": str(folder.resolve()), "kind": "model", "name": name or folder.name}
    if (folder / "config.json").exists():
        stub["config_sha256"] = file_sha256(folder / "config.json")
    return stub


def build(folder: Path, kind: str, command: str, config: dict, parent: dict | None, data: list[dict] | None = None,
          extra: dict | None = None) -> dict:
    """The record of the artifact in `folder` (its files must be written already)."""
    folder = Path(folder)
    record = {
        "format": FORMAT,
        "kind": kind,
        "command": command,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "files": folder_files(folder),
        "template_sha256": template_sha256(folder),
        "config_sha256": json_sha256(config),
        "config": config,
        "data": data or [],
        "versions": installed_versions(PACKAGES),
        "parent": parent,
    }
    if extra:
        record.update(extra)
    return record


def write(folder: Path, record: dict) -> Path:
    path = Path(folder) / LINEAGE_FILE
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_for_run(final: Path, run_dir: Path, cfg: Any) -> Path:
    """final/lineage.json of a training run: its data, template, resolved config (config.yaml) and base model or
    starting adapter as the parent."""
    import yaml

    config_path = Path(final) / "config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.exists() else cfg.model_dump(mode="json")
    specs = list(getattr(cfg, "dataset", None) or []) + list(getattr(cfg, "val_dataset", None) or [])
    start = getattr(cfg, "adapters", None)
    base_folder = (config.get("_resolved") or {}).get("base_model_folder")
    if start and Path(start).is_dir():
        parent = parent_of(Path(start))
    elif base_folder and Path(base_folder).is_dir():
        parent = parent_of(Path(base_folder), name=str(getattr(cfg, "model", None) or base_folder))
    else:
        parent = {"kind": "model", "name": str(getattr(cfg, "model", None))}
    kind = "adapter" if (Path(final) / "adapter_config.json").exists() else \
        "reft" if (Path(final) / "reft").is_dir() else "model"  # reft: interventions on the base (models/reft.py)
    extra = {"base_model": str(getattr(cfg, "model", None)), "run_dir": str(Path(run_dir).resolve())}
    record = build(final, kind, getattr(cfg, "command", "train"), config, parent, data_entries(specs), extra)
    return write(final, record)


def card(folder: str | Path | None) -> dict | None:
    """The short form a server shows per model (/v1/models): the record's hash and kind and the chain's kinds; None
    for a folder without a record (a hub model, a registry name)."""
    path = Path(folder) if folder else None
    record = read(path) if path is not None and path.is_dir() else None
    if record is None:
        return None
    return {"sha256": record_sha256(record), "kind": record["kind"], "created": record.get("created"),
            "chain": [link["kind"] for link in chain(record)], "template_sha256": record.get("template_sha256")}


# -----------------------------------------------------------------------------
# Inspect


def chain(record: dict) -> list[dict]:
    """The record and its ancestors, newest first."""
    out = []
    while record:
        out.append(record)
        parent = record.get("parent") or {}
        record = parent.get("record")
        if record is None and parent:
            out.append({"kind": parent.get("kind", "model"), "stub": parent})
    return out


def verify(folder: Path, record: dict) -> list[str]:
    """Files of `folder` that differ from what its record says (changed, missing or added since it was written)."""
    now = folder_files(folder)
    problems = [f"{name}: changed" for name, meta in record.get("files", {}).items()
                if name in now and now[name]["sha256"] != meta["sha256"]]
    problems += [f"{name}: missing" for name in record.get("files", {}) if name not in now]
    problems += [f"{name}: not in the record" for name in now if name not in record.get("files", {})]
    return problems


def _parent_state(parent: dict) -> str:
    """Whether the parent folder still holds the artifact its child was made from."""
    on_disk = read(Path(parent["path"]))
    if on_disk is None:
        return "no longer on disk (its record is kept here)"
    if record_sha256(on_disk) != parent["sha256"]:
        return "REPLACED since (its lineage.json differs from the one recorded here)"
    problems = verify(Path(parent["path"]), on_disk)
    return "on disk, unchanged" if not problems else "on disk, files DIFFER: " + "; ".join(problems)


def describe(folder: Path) -> str:
    """What `tunesmith export --inspect FOLDER` prints: the chain, newest first, each link with its hashes."""
    from tunesmith.errors import ModelNotFoundError

    folder = Path(folder)
    if read(folder) is None and read(folder / "final") is not None:  # a run folder: its final/
        folder = folder / "final"
    record = read(folder)
    if record is None:
        raise ModelNotFoundError(f"{folder}: no {LINEAGE_FILE} (tunesmith writes one into every run's final/ and "
                                 "every export folder)")
    lines = [f"{folder}: {LINEAGE_FILE} {record_sha256(record)[:16]}"]
    problems = verify(folder, record)
    lines.append("  files: " + ("match the record" if not problems else "DIFFER: " + "; ".join(problems)))
    for depth, link in enumerate(chain(record)):
        pad = "  " * (depth + 1)
        if "stub" in link:
            stub = link["stub"]
            named = [stub.get("name"), stub.get("path")] if stub.get("name") != stub.get("path") else [stub.get("path")]
            lines.append(f"{pad}<- {stub.get('kind')} " + " at ".join(str(n) for n in named if n)
                         + (f" (config.json {stub['config_sha256'][:16]})" if stub.get("config_sha256") else ""))
            continue
        arrow = "" if depth == 0 else "<- "
        size = sum(f["bytes"] for f in link.get("files", {}).values())
        lines.append(f"{pad}{arrow}{link['kind']} by `tunesmith {link.get('command')}` at {link.get('created')} "
                     f"({size / 2**20:.1f} MiB in {len(link.get('files', {}))} files)")
        parent = link.get("parent") or {}
        if parent.get("record") is not None and parent.get("path"):
            lines.append(f"{pad}   from {parent['path']}: " + _parent_state(parent))
        if link.get("export"):
            lines.append(f"{pad}   export: " + ", ".join(f"{k}={v}" for k, v in link["export"].items() if v is not None))
        if link.get("base_model"):
            lines.append(f"{pad}   base model: {link['base_model']}")
        lines.append(f"{pad}   template {str(link.get('template_sha256'))[:16]}  config {link['config_sha256'][:16]}")
        for entry in link.get("data", []):
            files = entry.get("files")
            where = ", ".join(f"{Path(f['path']).name} {f['sha256'][:16]}" for f in files) if files else f"hub {entry.get('hub')}"
            lines.append(f"{pad}   data {entry['spec']}: {where}")
        versions = link.get("versions", {})
        lines.append(f"{pad}   versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if k in
                                                       ("tunesmith", "torch", "transformers", "peft", "trl", "gguf",
                                                        "bitsandbytes", "llmcompressor")))
    return "\n".join(lines)
