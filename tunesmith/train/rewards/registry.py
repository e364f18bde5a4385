"""Reward functions by name: the decorator plugins use, plugin loading, and the wrapper TRL calls.

Every mistake a plugin can make is reported as `file:line: what is wrong`, before any weights load: the plugin is
imported when the config is resolved, and grpo.py calls each reward once on real rows before training.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import numbers
import re
import sys
import traceback
from importlib.machinery import SourceFileLoader
from pathlib import Path
from typing import Any, Callable

from tunesmith.errors import ConfigError, TunesmithError
from tunesmith.train.rewards import builtin

BUILTINS: dict[str, Callable[[Any], Callable]] = {
    "format": builtin.make_format,
    "length": builtin.make_length,
    "repetition": builtin.make_repetition,
    "accuracy": builtin.make_accuracy,
}
ROW_KEY = "tunesmith_row"  # rides in each prompt's last message: the row it came from (see train/grpo.py)
NAME = re.compile(r"[A-Za-z_][\w.\-]*")
NOT_WORD = re.compile(r"\W")
_REGISTERED: dict[str, Callable] = {}
_LOG: list[str] = []  # every name registered, in order: what each plugin registered (load_plugins)
_SHOWN: dict[str, str] = {}  # plugin file, resolved -> as the user wrote it, for messages
_EMPTY = inspect.Parameter.empty
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def register_reward(name: str) -> Callable[[Callable], Callable]:
    """`@register_reward("name")` over `def f(completions: list[str], **columns) -> list[float]`."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ConfigError(f"register_reward: {name!r} is not a usable name (letters, digits, _ . -)")

    def decorate(fn: Callable) -> Callable:
        where = _defined_at(fn)
        if not callable(fn):
            raise ConfigError(f"{where}: register_reward({name!r}) must decorate a function")
        if inspect.iscoroutinefunction(fn):
            raise ConfigError(f"{where}: reward {name!r} is async; write it as a plain def")
        params = inspect.signature(fn).parameters.values()
        if not any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params):
            raise ConfigError(f"{where}: reward {name!r} must take the completions as its first argument")
        if name in BUILTINS:
            raise ConfigError(f"{where}: reward {name!r} is a built-in; register yours under another name")
        old = _REGISTERED.get(name)
        if old is not None and _file_of(old) != _file_of(fn):  # the same file loaded again replaces its own
            raise ConfigError(f"{where}: reward {name!r} is already registered at {_defined_at(old)}")
        _REGISTERED[name] = fn
        _LOG.append(name)
        return fn

    return decorate


def known_rewards() -> list[str]:
    return sorted(BUILTINS) + sorted(_REGISTERED)


# -----------------------------------------------------------------------------
# Plugins


def load_plugins(paths: list[str]) -> dict[str, list[str]]:
    """Import each plugin file (its @register_reward decorators run) -> {file as given: the reward names it registered}.

    Whatever the file is called (a web upload may arrive as .jsonl or .txt): its content is what matters, so Python
    source under any name loads. Everything else is a ConfigError naming rewards.plugin, the file (and line) and what to
    do: a missing file, a folder, text that is not Python, a file that raises while imported or registers nothing."""
    return {shown: _load_plugin(shown) for shown in paths}


def _load_plugin(shown: str) -> list[str]:
    path = Path(shown).expanduser()
    if path.is_dir():
        raise ConfigError(f"rewards.plugin: {shown} is a folder; give the Python file in it that holds your "
                          "@register_reward functions")
    if not path.is_file():
        raise ConfigError(f"rewards.plugin: {shown}: file not found; give the path of the Python file that holds your "
                          "@register_reward functions")
    hint = _not_python_hint(path)
    try:
        source = path.read_bytes()
        code = compile(source, str(path), "exec")  # bytes: compile honours a coding cookie or BOM, as import does
    except SyntaxError as err:
        at = f"{shown}:{err.lineno}" if err.lineno else shown
        raise ConfigError(f"{at}: syntax error: {err.msg} (rewards.plugin {shown} must be Python source: fix the "
                          f"file or point rewards.plugin at your rewards .py file){hint}") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"rewards.plugin: {shown}: cannot read it as Python source ({err}){hint}") from None
    _SHOWN[str(path.resolve())] = shown
    module_name = f"tunesmith_plugin_{NOT_WORD.sub('_', path.stem)}_{abs(hash(str(path.resolve())))}"
    # An explicit loader, not spec_from_file_location (which finds no loader, so returns None, for a name not ending
    # in .py). We run the code compiled above rather than loader.exec_module: one read of the file, and no __pycache__
    # written beside it (whose name would drop the suffix: my_rewards.txt's would be my_rewards.py's).
    spec = importlib.util.spec_from_loader(module_name, SourceFileLoader(module_name, str(path)))
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path)
    sys.modules[module_name] = module  # dataclasses and pickle look a module up by name
    first = len(_LOG)
    try:
        exec(code, module.__dict__)
    except TunesmithError:
        del sys.modules[module_name]
        raise
    except (Exception, SystemExit) as err:  # SystemExit: a script that calls sys.exit() or argparse at import
        del sys.modules[module_name]
        raise ConfigError(f"{_raised_at(err, str(path))}: {type(err).__name__}: {err} (while loading rewards.plugin "
                          f"{shown}: fix the plugin, or run `python {shown}` to see the whole traceback){hint}") from None
    names = list(dict.fromkeys(_LOG[first:]))
    if not names:
        del sys.modules[module_name]
        raise ConfigError(f"rewards.plugin: {shown} registers no reward; decorate each reward function "
                          "with @register_reward(\"name\") (from tunesmith import register_reward) and list the names in "
                          f"rewards.funcs{hint}")
    return names


def _not_python_hint(path: Path) -> str:
    """For messages about a file not named .py: perhaps data or a config given to rewards.plugin by mistake."""
    if path.suffix == ".py":
        return ""
    named = f"ends in {path.suffix}" if path.suffix else "has no .py suffix"
    return f". Note: {path.name} {named}; is it your reward plugin, or data given to rewards.plugin by mistake?"


def build_rewards(cfg: Any) -> list["RewardFn"]:
    """cfg.rewards.funcs as callables for TRL, after loading cfg.rewards.plugin. Unknown names list the known ones."""
    loaded = load_plugins(cfg.rewards.plugin)
    out = []
    for name in cfg.rewards.funcs:
        if cfg.rewards.funcs.count(name) > 1:
            raise ConfigError(f"rewards.funcs: {name} is listed twice; give it a larger --rewards.weights instead")
        if name in _REGISTERED:
            out.append(RewardFn(name, _REGISTERED[name]))
        elif name in BUILTINS:
            out.append(RewardFn(name, BUILTINS[name](cfg), where="built-in"))
        else:
            near = difflib.get_close_matches(name, known_rewards(), n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
            where = ("; ".join(f"rewards.plugin {f} registers: {', '.join(names)}" for f, names in loaded.items())
                     or "no --rewards.plugin given")
            raise ConfigError(f"rewards.funcs: unknown reward {name!r}{hint} Known: {', '.join(known_rewards())} ({where})")
    return out


# -----------------------------------------------------------------------------
# The callable TRL sees


class RewardFn:
    """Calls a reward the way our users write them: completions as text, dataset columns by name (only those the
    function names, unless it takes **columns), and checks what comes back: one float (or None) per completion.

    `rows` (set by grpo.py) holds each prompt's conversation and columns as read from the dataset: TRL hands us the
    prompts with a row index in their last message (ROW_KEY), and we look the row up rather than trusting the Arrow
    table, which adds None for keys a row lacks."""

    def __init__(self, name: str, fn: Callable, rows: list[tuple[list[dict], dict]] | None = None,
                 where: str | None = None):
        self.name = self.__name__ = name  # TRL logs rewards/<__name__>/mean
        self.fn = fn
        self.rows = rows
        self.where = where or _defined_at(fn)
        params = list(inspect.signature(fn).parameters.values())
        self.takes_all = any(p.kind is p.VAR_KEYWORD for p in params)
        named = [p for p in params[1:] if p.kind in _NAMED]
        self.accepts = {p.name for p in named}
        self.required = {p.name for p in named if p.default is _EMPTY}

    def __call__(self, prompts: list | None = None, completions: list | None = None, **kwargs: Any) -> list[float | None]:
        texts = [_text(c) for c in completions or []]
        columns = dict(kwargs)
        if prompts is not None:
            columns |= self._columns(prompts)
        missing = sorted(self.required - columns.keys())
        if missing:
            have = ", ".join(sorted(k for k in columns if k not in ("trainer_state", "log_extra", "log_metric"))) or "none"
            raise ConfigError(f"{self.where}: reward {self.name} needs the column(s) {', '.join(missing)}, which the "
                              f"dataset lacks (it has: {have})")
        given = columns if self.takes_all else {k: v for k, v in columns.items() if k in self.accepts}
        try:
            out = self.fn(texts, **given)
        except TunesmithError:
            raise
        except Exception as err:
            raise TunesmithError(f"{_raised_at(err, _file_of(self.fn))}: reward {self.name} raised "
                                 f"{type(err).__name__}: {err}") from err
        return self._check(out, len(texts))

    def _columns(self, prompts: list) -> dict[str, list]:
        index = [p[-1].get(ROW_KEY) if p and isinstance(p[-1], dict) else None for p in prompts]
        if self.rows is None or None in index:
            return {"prompts": [_clean(p) for p in prompts]}
        rows = [self.rows[i] for i in index]
        names = {k for _, cols in rows for k in cols}
        return {"prompts": [conv for conv, _ in rows]} | {k: [cols.get(k) for _, cols in rows] for k in sorted(names)}

    def _check(self, out: Any, n: int) -> list[float | None]:
        if isinstance(out, (str, bytes, dict)) or not hasattr(out, "__len__"):
            raise ConfigError(f"{self.where}: reward {self.name} returned {type(out).__name__}; return a list with one "
                              "float per completion")
        out = list(out)
        if len(out) != n:
            raise ConfigError(f"{self.where}: reward {self.name} returned {len(out)} values for {n} completions; "
                              "return one float per completion")
        for i, value in enumerate(out):
            if value is not None and not isinstance(value, numbers.Real):
                raise ConfigError(f"{self.where}: reward {self.name} returned {value!r} ({type(value).__name__}) for "
                                  f"completion {i}; return floats (None where the reward does not apply)")
        return [None if v is None else float(v) for v in out]


def _text(completion: Any) -> str:
    """TRL passes conversational completions as [{"role": "assistant", "content": ...}]; our rewards see the text."""
    if isinstance(completion, list):
        return "".join(m.get("content") or "" for m in completion if isinstance(m, dict))
    if isinstance(completion, dict):
        return completion.get("content") or ""
    return completion


def _clean(prompt: Any) -> Any:
    if not isinstance(prompt, list):
        return prompt
    return [{k: v for k, v in m.items() if v is not None and k != ROW_KEY} if isinstance(m, dict) else m for m in prompt]


def _file_of(fn: Callable) -> str:
    code = getattr(fn, "__code__", None) or getattr(getattr(fn, "__call__", None), "__code__", None)
    return code.co_filename if code else "<unknown>"


def _defined_at(fn: Callable) -> str:
    code = getattr(fn, "__code__", None) or getattr(getattr(fn, "__call__", None), "__code__", None)
    return f"{_display(code.co_filename)}:{code.co_firstlineno}" if code else getattr(fn, "__name__", repr(fn))


def _raised_at(err: BaseException, file: str) -> str:
    """file:line of the innermost frame in `file` (the user's code), else of the innermost frame."""
    frames = traceback.extract_tb(err.__traceback__)
    mine = [f for f in frames if _display(f.filename) == _display(file)]
    frame = (mine or frames or [None])[-1]
    return f"{_display(frame.filename)}:{frame.lineno}" if frame else file


def _display(filename: str) -> str:
    return _SHOWN.get(str(Path(filename).resolve()), filename) if not filename.startswith("<") else filename
