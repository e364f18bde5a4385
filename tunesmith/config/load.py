"""Fill a command's config from `-c file.yaml` and flags: the file first, flags override it.

    cfg = load(SFTConfig, ["-c", "sft.yaml", "--learning-rate", "1e-4", "--lora.rank", "8"])

Keys in the file are field names; flags are the same names with dashes or underscores; nested sections are
written `--lora.rank 8` (or `lora: {rank: 8}` in YAML). Peers' spellings (cutoff_len, lora_r...) are accepted with a
one-line note naming ours. Unknown keys fail with the nearest valid name.
"""

from __future__ import annotations

import difflib
import logging
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from tunesmith.errors import ConfigError

log = logging.getLogger("tunesmith")
C = TypeVar("C", bound=BaseModel)

# Peers' names for our keys (LLaMA-Factory, axolotl, ms-swift, HF Trainer).
ALIASES = {
    "lora_r": "lora.rank",
    "lora_rank": "lora.rank",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "lora_target": "lora.targets",
    "lora_target_modules": "lora.targets",
    "target_modules": "lora.targets",
    "cutoff_len": "max_length",
    "sequence_len": "max_length",
    "max_seq_length": "max_length",
    "max_seq_len": "max_length",
    "model_name_or_path": "model",
    "base_model": "model",
    "adapter_name_or_path": "adapters",
    "per_device_train_batch_size": "batch_size",
    "micro_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "num_train_epochs": "epochs",
    "num_epochs": "epochs",
    "datasets": "dataset",
    "finetuning_type": "tuner",  # how the weights train: `tuner` (rlhf's `method` names the algorithm)
    "train_type": "tuner",
    "tuner_type": "tuner",
    "resume_from_checkpoint": "resume",
    "max_new_tokens": "generation.max_tokens",
    "lr_scheduler_type": "lr_scheduler",  # HF TrainingArguments, LLaMA-Factory: the same transformers names
    "overwrite_output_dir": "overwrite",  # HF TrainingArguments: start over in an output_dir that holds a run
    "val_set_size": "val_split",  # axolotl: the share of rows held out for eval loss
}

# Peers' keys that are no rename of one of ours: what to write instead, said where the key is refused. A hint that
# names a key of ours is given only where the command has that key (the loader checks with `resolves`).
LLAMA_FACTORY_STAGES = {"sft": "tunesmith sft", "pt": "tunesmith pt", **{m: f"tunesmith rlhf --method {m}" for m in (
    "rm", "dpo", "kto", "orpo", "simpo", "cpo", "ppo", "grpo")}}
PEER_HINTS: dict[str, tuple[str | None, str]] = {
    # key: (our key the hint needs, or None; the hint, formatted with the value given)
    "stage": (None, "LLaMA-Factory's stage is the command in tunesmith ({stage}); drop the key"),
    "do_train": (None, "not needed: a training command always trains; drop the key"),
    "do_eval": ("val_dataset", "eval loss while training comes from val_dataset or val_split, scores after it from "
                               "`tunesmith eval`; drop the key"),
    "template": ("chat_template_kwargs", "tunesmith renders with the model's own chat template (its tokenizer's, "
                                         "saved with the run), and has no key to pick another: drop it (variables "
                                         "for the template: chat_template_kwargs)"),
    "max_samples": ("dataset", "N rows of a dataset are NAME#N in dataset (drawn with the seed), e.g. dataset: "
                               "[data.jsonl#1000] (--dataset data.jsonl#1000)"),
    "bf16": ("dtype", "{dtype}"),
    "fp16": ("dtype", "{dtype}"),
    "load_in_4bit": ("tuner", "a 4-bit base with LoRA adapters is tuner: qlora (--tuner qlora)"),
    "quantization_bit": ("tuner", "a 4-bit base with LoRA adapters is tuner: qlora (--tuner qlora); 8-bit bases are "
                                  "not trained"),
    "warmup_steps": ("warmup_ratio", "tunesmith warms up over a share of the steps: warmup_ratio (e.g. 0.03; 0 for "
                                     "none), not a step count"),
    "adapter": ("tuner", "axolotl's adapter (lora, qlora) is tuner in tunesmith: tuner: {value} (--tuner {value}); "
                         "adapters is a trained adapter folder to start from"),
}


def peer_hint(cls: type[BaseModel], key: str, value: Any = None) -> str | None:
    """What to write instead of a peer's key (`bf16: true` -> `dtype: bfloat16`), or None where we have no hint."""
    if key not in PEER_HINTS or key in cls.model_fields:
        return None
    needs, text = PEER_HINTS[key]
    if needs and not resolves(cls, needs):
        return None
    if key == "adapter" and str(value) not in ("lora", "qlora", "dora"):
        return None  # a folder: `adapters`, which the nearest-name suggestion names
    if key in ("bf16", "fp16"):
        named = "bfloat16" if key == "bf16" else "float16"
        dtype = (f"{key}: true is dtype: {named} in tunesmith (--dtype {named})" if value is True else
                 f"{key}: auto is dtype: auto in tunesmith, the default: drop it" if value == "auto" else
                 "drop it: dtype: auto (the default) picks bfloat16 on GPUs that have it, else float32; dtype: float32 "
                 "asks for full precision")
        return text.format(dtype=dtype)
    stage = (f"stage {value} = `{LLAMA_FACTORY_STAGES[str(value)]}`" if str(value) in LLAMA_FACTORY_STAGES else
             "sft = `tunesmith sft`, pt = `tunesmith pt`, dpo = `tunesmith rlhf --method dpo`, likewise kto, orpo, "
             "rm, ppo")
    return text.format(stage=stage, value=value)


# The key under which a run's config.yaml records what it resolved (versions, plan, counts): `-c runs/NAME/config.yaml`
# reruns the settings and reads past it.
RUN_RECORD = "_resolved"


def load(cls: type[C], argv: list[str] | None = None, path: str | Path | None = None) -> C:
    """Build `cls` from an optional YAML file and CLI-style flags."""
    argv = list(argv or [])
    file_values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    config_path, flags, positionals = _split_argv(argv)
    config_path = config_path or (str(path) if path else None)
    if config_path:
        file_values, lines = read_yaml(config_path)
        file_values.pop(RUN_RECORD, None)  # a run's config.yaml: what the run resolved, not settings
    flag_values = _parse_flags(cls, flags, positionals)
    values = _normalise(cls, file_values, source=config_path, lines=lines)
    _deep_update(values, _normalise(cls, flag_values, source=None, lines={}))
    return validate(cls, values, source=config_path, lines=lines)


def validate(cls: type[C], values: dict[str, Any], source: str | None = None, lines: dict[str, int] | None = None) -> C:
    """Validate and turn pydantic's report into one line per problem: `file:line: key: problem`."""
    try:
        return cls.model_validate(values)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            named = msg.split(":", 1)[0]
            if ":" in msg and named.replace("_", "").replace(".", "").isalnum():  # a section's check naming its key
                key, msg = f"{key}.{named}" if key else named, msg.split(":", 1)[1].strip()
            key = key or "config"
            if e["type"] == "missing":  # pydantic says "Field required": say how to give it
                msg = _how_to_give(cls, key)
            where = _where(source, (lines or {}).get(key) or (lines or {}).get(key.split(".")[0]))
            given = f" (got {e['input']!r})" if e["type"] != "missing" and not isinstance(e["input"], dict) else ""
            problems.append(f"{where}{key}: {msg}{given}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None


def _how_to_give(cls: type[BaseModel], key: str) -> str:
    flag = "--" + key.replace("_", "-")
    order = [name for name in getattr(cls, "positional", ()) if name != "action"]  # data ACTION: the action is argv's
    if key in order:
        return f"required: give it as argument {order.index(key) + 1} after the command, or {flag}"
    return f"required: give {flag}, or {key}: in the -c file"


def read_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The file's mapping plus the line of every key (dotted for nested ones), for error messages."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        loader = _UniqueKeyLoader(text)
        try:
            node = loader.get_single_node()
            values = (loader.construct_document(node) if node is not None else None) or {}
        finally:
            loader.dispose()
    except DuplicateKey as err:
        at_lines: dict[str, int] = {}
        _key_lines(yaml.compose(text, Loader=yaml.SafeLoader), "", at_lines)  # the key's section too: lora.rank
        key = next((k for k, at in at_lines.items() if at == err.line and k.rsplit(".", 1)[-1] == err.key), err.key)
        raise ConfigError(f"{path}:{err.line}: {key}: given twice in one mapping (first on line {err.first}); YAML "
                          "would silently keep the last: keep one") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f"{mark.line + 1}:" if mark else ""
        raise ConfigError(f"{path}:{line} not valid YAML: {getattr(err, 'problem', err)}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values at the top level")
    lines: dict[str, int] = {}
    _key_lines(node, "", lines)
    return values, lines


class DuplicateKey(Exception):
    """A key given twice in one YAML mapping: the key, the line of the second and of the first occurrence."""

    def __init__(self, key: str, line: int, first: int):
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error instead of last-wins (the YAML spec
    requires unique keys; `lora_rank: 8` ... `lora_rank: 64` further down would otherwise train at 64 unsaid).
    A merge (`<<: *base`) may still be overridden by the mapping's own keys: those are not duplicates."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise DuplicateKey(str(key), line, seen[key])
                seen[key] = line
            except TypeError:  # an unhashable key: SafeLoader's own error says so
                break
        return super().construct_mapping(node, deep)


def _key_lines(node: Any, prefix: str, out: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            out[key] = key_node.start_mark.line + 1
            _key_lines(value_node, key + ".", out)


def _where(source: str | None, line: int | None) -> str:
    if not source:
        return ""
    return f"{source}:{line}: " if line else f"{source}: "


# -----------------------------------------------------------------------------
# Flags


def _split_argv(argv: list[str]) -> tuple[str | None, list[str], list[str]]:
    config_path, flags, positionals = None, [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-c", "--config"):
            if i + 1 >= len(argv):
                raise ConfigError(f"{arg} needs a file name")
            config_path = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
        elif arg.startswith("-") and not _is_number(arg) or flags:
            flags.append(arg)
        else:
            positionals.append(arg)
        i += 1
    return config_path, flags, positionals


def _parse_flags(cls: type[BaseModel], flags: list[str], positionals: list[str]) -> dict[str, Any]:
    """`--key value`, `--key=value`, `--flag` (true), `--no-flag`, `--list a b c`, `--section.key value`."""
    values: dict[str, Any] = {}
    positionals = list(positionals)
    i = 0
    while i < len(flags):
        arg = flags[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; options are written --name value (see --help)")
        name, _, inline = arg[2:].partition("=")
        key = name.replace("-", "_")
        i += 1
        args: list[str] = [inline] if inline else []
        while not inline and i < len(flags) and not (flags[i].startswith("--") and not _is_number(flags[i])):
            args.append(flags[i])
            i += 1
        # one value for a single-valued option: what follows is the command's positional arguments (`data check
        # --model M FILE`, `plan --tuner lora MODEL`), as argparse reads them; a plain bool takes none but true/false
        negated = key.startswith("no_") and _field_kind(cls, key[3:]) == "bool"  # --no-packing
        kind = "bool" if negated else _field_kind(cls, _aliased(cls, key))
        takes = 0 if negated or (kind == "bool" and _plain_bool(cls, _aliased(cls, key)) and args
                                 and not isinstance(_scalar(args[0]), bool)) else 1
        if kind in ("bool", "scalar", "dict") and not inline and len(args) > takes:
            positionals += args[takes:]
            args = args[:takes]
        if not args:
            if key.startswith("no_") and _field_kind(cls, key[3:]) == "bool":
                values[key[3:]] = False
            else:
                values[key] = True
        elif len(args) == 1 and _field_kind(cls, key) == "dict":  # --chat-template-kwargs '{"enable_thinking": false}'
            values[key] = _mapping(args[0], name)
        elif len(args) == 1 and _field_kind(cls, key) != "list":
            values[key] = _text_or_null(args[0]) if _takes_text(cls, key) else _scalar(args[0])
        else:  # a list; repeated (--image a.png --image b.png) it collects, as argparse's "append" does
            read = (lambda a: a) if _takes_text(cls, key) else _scalar
            if _splits_commas(cls, key):  # --metrics bleu,rouge = --metrics bleu rouge
                items = [read(part.strip()) for a in args for part in a.split(",") if part.strip()]
            else:
                items = [read(a) for a in args]
            values[key] = values[key] + items if isinstance(values.get(key), list) else items
    _place_positionals(cls, positionals, values)
    return values


def _place_positionals(cls: type[BaseModel], positionals: list[str], values: dict[str, Any]) -> None:
    order = list(getattr(cls, "positional", ()))
    for i, value in enumerate(positionals):
        if i < len(order) - 1 or (i == len(order) - 1 and _field_kind(cls, order[-1]) != "list"):
            values[order[i]] = value
        elif order and _field_kind(cls, order[-1]) == "list":
            values.setdefault(order[-1], []).append(value)
        else:
            raise ConfigError(f"unexpected argument {value!r}; options are written --name value (see --help)")


def _aliased(cls: type[BaseModel], key: str) -> str:
    """A peer's spelling (`cutoff_len`) as our key, where this command has it."""
    return ALIASES[key] if key in ALIASES and resolves(cls, ALIASES[key]) else key


def _plain_bool(cls: type[BaseModel], dotted: str) -> bool:
    """A field that is true or false and nothing else (`--skip-bad-rows`), unlike `--gradient-checkpointing offload`
    or plan's `--dp`, which also reads sft's dp section (`--dp epsilon=8`)."""
    if dotted in getattr(cls, "training_sections", {}):
        return False
    model: type[BaseModel] | None = cls
    *sections, name = dotted.split(".")
    for part in sections:
        model = _keys_under(model, part)
    if model is None or name not in model.model_fields:
        return False
    return {a for a in typing.get_args(model.model_fields[name].annotation) or (model.model_fields[name].annotation,)
            if a is not type(None)} == {bool}


def _splits_commas(cls: type[BaseModel], dotted: str) -> bool:
    """List flags take comma-separated values too, unless the field says its items may hold commas (stop strings)."""
    if _field_kind(cls, dotted) != "list":
        return False
    if _renamed(cls, dotted) and dotted not in getattr(cls, "retired", {}):
        dotted = cls.moved_target(dotted)
    model: type[BaseModel] | None = cls
    *sections, name = dotted.split(".")
    for part in sections:
        model = _keys_under(model, part)
    extra = model.model_fields[name].json_schema_extra if model and name in model.model_fields else None
    return not (isinstance(extra, dict) and extra.get("commas") is False)


def _takes_text(cls: type[BaseModel], dotted: str) -> bool:
    """A field that holds text (str, str | None, list[str]): its flag value is the text typed, never read as YAML
    (`--output-dir 2024`, `--system yes`, `--dataset 123` are names, not a number, a bool, an int)."""
    if dotted in ALIASES and resolves(cls, ALIASES[dotted]):
        dotted = ALIASES[dotted]
    if _renamed(cls, dotted) and dotted not in getattr(cls, "retired", {}):
        dotted = cls.moved_target(dotted)
    model: type[BaseModel] | None = cls
    *sections, name = dotted.split(".")
    for part in sections:
        model = _keys_under(model, part)
    if model is None or name not in model.model_fields:
        return False
    ann = model.model_fields[name].annotation
    union = isinstance(ann, types.UnionType) or typing.get_origin(ann) is typing.Union
    options = [a for a in (typing.get_args(ann) if union else (ann,)) if a is not type(None)]
    return bool(options) and all(a is str or (typing.get_origin(a) is list and typing.get_args(a) == (str,))
                                 for a in options)


def _text_or_null(text: str) -> str | None:
    """A text flag's value; `null` (or `~`) unsets it, as in YAML (`-c run.yaml --adapters null`)."""
    return None if text in ("null", "Null", "NULL", "~") else text


def _scalar(text: str) -> Any:
    """Read a flag value the way YAML would (true, null, 8, [a, b]), but keep text that YAML can't read."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if isinstance(value, dict) else value


def _mapping(text: str, name: str) -> dict:
    """A mapping flag's value: JSON or YAML flow text (`{"enable_thinking": false}`, `{enable_thinking: false}`).
    One key may also be set alone: `--chat-template-kwargs.enable-thinking false`."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise ConfigError(f"--{name}: expected a mapping such as '{{\"enable_thinking\": false}}' (got {text!r}); or "
                          f"set one key with --{name}.KEY VALUE")
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# -----------------------------------------------------------------------------
# Keys: aliases, nesting, unknown names


def _normalise(cls: type[BaseModel], flat: dict[str, Any], source: str | None, lines: dict[str, int],
               prefix: str = "") -> dict[str, Any]:
    """Map aliases and dotted keys onto the config's tree; fail on unknown keys with the nearest valid one."""
    out: dict[str, Any] = {}
    for raw_key, value in flat.items():
        key = str(raw_key).replace("-", "_")
        target = ALIASES.get(key, "")
        if target and (resolves(cls, target) or target.split(".")[0] in getattr(cls, "retired", {})):
            log.info("note: %s is called %s in tunesmith", key, ALIASES[key])
            key = ALIASES[key]
        parts = key.split(".")
        if isinstance(value, dict) and _keys_under(cls, parts[0]):
            if len(parts) > 1:  # --peft.args '{r: 4}': a mapping for a key inside the section
                value = {".".join(parts[1:]): value}
            nested = _normalise(_keys_under(cls, parts[0]), value, source, {
                k.split(".", 1)[1]: v for k, v in lines.items() if k.startswith(parts[0] + ".")
            }, prefix=f"{prefix}{parts[0]}.")
            _deep_update(out, {parts[0]: nested})
            continue
        _check_known(cls, parts, raw_key, source, lines, prefix, value)
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return out


def _check_known(cls: type[BaseModel], parts: list[str], raw_key: str, source: str | None, lines: dict[str, int],
                 prefix: str = "", value: Any = None) -> None:
    read_sections = getattr(cls, "training_sections", {})
    if (_renamed(cls, parts[0]) and (len(parts) == 1 or parts[0] in getattr(cls, "retired", {}))
            and parts[0] not in read_sections):
        return  # a key of an earlier release, or a shortcut: the config moves it when it validates
    model: type[BaseModel] | None = cls
    for depth, part in enumerate(parts):
        if depth and model is None and _field_kind(cls, ".".join(parts[:depth])) == "dict":
            return  # a key inside a mapping field (chat_template_kwargs.enable_thinking): the mapping's own
        fields = {**(model.model_fields if model else {}), **(read_sections if not depth else {})}
        if depth and depth == len(parts) - 1 and model is not None and _renamed(model, part):
            return  # a section's own shortcut or old key (--grpo.beta): the section moves it when it validates
        if part not in fields:
            shown = f"--{str(raw_key).replace('_', '-')}" if source is None else str(raw_key)
            hint = peer_hint(cls, part, value) if not depth and not prefix and len(parts) == 1 else None
            if hint:  # a peer's key with no rename of ours (bf16, stage): what to write instead
                raise ConfigError(f"{_where(source, lines.get(str(raw_key)))}unknown option {shown}; {hint}")
            valid = _all_keys(model) if model else []
            parent = ".".join(parts[:depth])
            candidates = [f"{parent}.{k}" if parent else k for k in valid]
            valid_names = candidates + ([a for a in ALIASES if resolves(cls, ALIASES[a])] if not prefix else [])
            valid_names += list(getattr(model, "retired", {})) if not depth else []  # names it reads past (plan)
            # its shortcuts (infer's max_tokens = generation.max_tokens), first: preferred to a peer's alias of them
            shortcuts = getattr(model, "shortcuts", {}) if model else {}
            valid_names = [*(f"{parent}.{k}" if parent else k for k in shortcuts), *valid_names]
            valid_names += [f"{name}.{k}" for name, section in read_sections.items() for k in _all_keys(section)
                            if not depth]
            nearest = difflib.get_close_matches(".".join(parts), valid_names, n=1, cutoff=0.5)
            near = prefix + nearest[0] if nearest else ""
            hint = f"; did you mean {'--' + near.replace('_', '-') if source is None else near}?" if nearest else ""
            raise ConfigError(f"{_where(source, lines.get(str(raw_key)))}unknown option {shown}{hint} (see --help)")
        model = _keys_under(model, part)


def _renamed(cls: type[BaseModel], key: str) -> bool:
    """A key the config itself moves (or retires) when it validates: an old key, a shortcut, a retired flag."""
    return key not in cls.model_fields and any(key in getattr(cls, kind, {}) for kind in ("moved", "shortcuts", "retired"))


def _all_keys(model: type[BaseModel]) -> list[str]:
    keys = []
    for name in model.model_fields:
        section = _section_class(model, name)
        keys.extend([name] + ([f"{name}.{k}" for k in _all_keys(section)] if section else []))
    return keys


def resolves(cls: type[BaseModel], dotted: str) -> bool:
    model: type[BaseModel] | None = cls
    for part in dotted.split("."):
        if model is None or part not in model.model_fields:
            return False
        model = _section_class(model, part)
    return True


def _section_class(model: type[BaseModel] | None, name: str) -> type[BaseModel] | None:
    if model is None or name not in model.model_fields:
        return None
    ann = model.model_fields[name].annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _keys_under(model: type[BaseModel] | None, name: str) -> type[BaseModel] | None:
    """The section whose keys follow `name.` in a flag or a YAML mapping: the field's own section, or a training
    command's section that a config reads without holding it (PlanConfig.training_sections: `plan --dp.epsilon 8` and
    `plan --lora.rank 8` as sft takes them), so its keys are checked, suggested and typed as sft's are."""
    return _section_class(model, name) or (getattr(model, "training_sections", {}).get(name) if model else None)


def _field_kind(cls: type[BaseModel], dotted: str) -> str:
    if _renamed(cls, dotted) and dotted not in getattr(cls, "retired", {}):
        dotted = cls.moved_target(dotted)
    model: type[BaseModel] | None = cls
    parts = dotted.split(".")
    for part in parts[:-1]:
        model = _keys_under(model, part)
    if model is None or parts[-1] not in model.model_fields:
        return "unknown"
    ann = model.model_fields[parts[-1]].annotation
    args = typing.get_args(ann) if isinstance(ann, types.UnionType) or typing.get_origin(ann) is typing.Union else (ann,)
    if any(typing.get_origin(a) is list for a in args):
        return "list"
    if any(a is dict or typing.get_origin(a) is dict for a in args):
        return "dict"
    if bool in args:
        return "bool"
    return "scalar"


def _deep_update(base: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


# -----------------------------------------------------------------------------
# --help


def help_text(cls: type[BaseModel], prog: str) -> str:
    doc = (cls.__doc__ or "").strip()
    rows = [f"usage: {prog} [-c config.yaml] [--option value ...]", "", doc, "", "options (YAML keys are the same names with underscores):"]
    rows.append(f"  {'-c, --config FILE':34} YAML file with any of the options below; flags override it")
    if getattr(cls, "shortcuts", None):
        names = ", ".join("--" + k.replace("_", "-") for k, to in cls.shortcuts.items() if to.startswith("generation."))
        rows.append(f"  {'(' + names + ')':34} accepted for the --generation.* options of the same names")
    if getattr(cls, "training_sections", None):
        names = ", ".join(f"--{name}.KEY" for name in cls.training_sections)
        rows.append(f"  {'(' + names + ')':34} the training commands' sections of these names, with the keys "
                    "`tunesmith sft --help` lists")
    for key, field in _help_fields(cls):
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        rows.append(f"  {'--' + key.replace('_', '-'):34} {field.description or ''} [default: {default}]")
    return "\n".join(rows)


def _help_fields(cls: type[BaseModel], prefix: str = ""):
    for name, field in cls.model_fields.items():
        section = _section_class(cls, name)
        if section:
            yield from _help_fields(section, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field
