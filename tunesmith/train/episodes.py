"""Multi-turn episodes for GRPO: the policy acts in an environment for several turns and the episode's reward
trains it.  Run: tunesmith rlhf --method grpo --grpo.env examples/volunteer-matcher/env.py:VolunteerScheduling

An environment is any class with `reset(row) -> observation` and `step(action) -> (observation, reward, done)`,
built with no arguments, one instance per episode. The dataset rows are what `reset` receives (any JSON object).

How an episode becomes one GRPO sample (TRL's `rollout_func`):
  prompt      = Template.render_prompt([user: reset(row)])
  completion  = action 1 + [end of turn, user: observation 1, assistant header] + action 2 + ...
  env_mask    = 1 on the policy's own tokens, 0 on what the environment said (TRL drops those from the loss, as it
                does for tool results), so only the actions are trained
  env_reward  = the sum of the step rewards, read by the reward function `env_reward`
Each action is generated on prompt + completion so far, so the trainer scores exactly the tokens that were sampled.
The observation tokens are the text the Template renders after an assistant turn, tokenized on their own as the
Template cuts them, so a served multi-turn conversation gets the same ids. An episode ends when the environment says
done, after `max_turns` actions, or when the completion would pass grpo's completion budget (`max_completion_length`,
TRL's rule for tool loops).

The environment file, its class, and the shape of what `reset` and `step` return are checked on every row before
any weights load; errors name the file and line.
"""

from __future__ import annotations

import importlib.util
import inspect
import numbers
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tunesmith.errors import ConfigError, DataError
from tunesmith.models.patches.trl_rollouts import generate_turn
from tunesmith.train.rewards.registry import ROW_KEY  # a prompt's row index rides in its last message, as in grpo.py

_FILES: dict[type, str] = {}  # environment class -> its file as the user wrote it, for error messages
SHAPE = ("an environment needs reset(row) -> observation (str) and "
         "step(action) -> (observation: str, reward: float, done: bool)")


# -----------------------------------------------------------------------------
# Loading and checking the environment class


def load_env(spec: str) -> type:
    """`path.py:ClassName` -> the class, or a ConfigError naming the file (and line) at fault."""
    file, sep, name = spec.rpartition(":")
    if not sep or not file.endswith(".py") or not name.isidentifier():
        raise ConfigError(f"env: expected path.py:ClassName, got {spec!r}")
    path = Path(file).expanduser()
    if not path.is_file():
        raise ConfigError(f"env: {file}: file not found")
    source = path.read_text(encoding="utf-8")
    try:
        compile(source, str(path), "exec")
    except SyntaxError as err:
        raise ConfigError(f"{file}:{err.lineno}: syntax error: {err.msg} (env {spec})") from None
    module_name = f"tunesmith_env_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise ConfigError(f"{_where(err, path, file)}: {type(err).__name__}: {err} "
                          f"(while importing env {spec})") from None
    cls = getattr(module, name, None)
    if cls is None:
        found = sorted(n for n, v in vars(module).items() if inspect.isclass(v) and v.__module__ == module_name)
        raise ConfigError(f"{file}: no class {name}; classes defined there: {', '.join(found) or 'none'}")
    if not inspect.isclass(cls):
        raise ConfigError(f"{file}: {name} is a {type(cls).__name__}, not a class; {SHAPE}")
    line = _line_of(cls)
    for method in ("reset", "step"):
        fn = getattr(cls, method, None)
        if not callable(fn):
            raise ConfigError(f"{file}:{line}: {name} has no {method}() method; {SHAPE}")
        try:
            inspect.signature(fn).bind(None, "x")
        except TypeError:
            raise ConfigError(f"{file}:{_line_of(fn) or line}: {name}.{method} must take one argument "
                              f"({'row' if method == 'reset' else 'action'}); {SHAPE}") from None
    try:
        inspect.signature(cls).bind()
    except TypeError:
        raise ConfigError(f"{file}:{line}: {name}() must be callable with no arguments "
                          "(one instance per episode)") from None
    _FILES[cls] = file
    return cls


def _line_of(obj: Any) -> int | str:
    try:
        return inspect.getsourcelines(obj)[1]
    except (OSError, TypeError):
        return "?"


def _where(err: BaseException, path: Path, shown: str) -> str:
    """`file:line` of the deepest traceback frame inside the environment file (else just the file)."""
    lines = [f.lineno for f in traceback.extract_tb(err.__traceback__) if Path(f.filename).resolve() == path.resolve()]
    return f"{shown}:{lines[-1]}" if lines else shown


class EnvError(DataError):
    """The environment raised or returned the wrong shape while an episode ran."""


def _call(env: Any, method: str, arg: Any, context: str) -> Any:
    file = _FILES[type(env)]
    try:
        return getattr(env, method)(arg)
    except Exception as err:
        raise EnvError(f"{_where(err, Path(file), file)}: {type(env).__name__}.{method} raised "
                       f"{type(err).__name__}: {err} ({context})") from None


def reset(env: Any, row: Any, context: str) -> str:
    obs = _call(env, "reset", row, context)
    if not isinstance(obs, str) or not obs.strip():
        raise EnvError(f"{_FILES[type(env)]}:{_line_of(type(env).reset)}: {type(env).__name__}.reset returned "
                       f"{obs!r} for {context}; it must return the first observation as non-empty text")
    return obs


def step(env: Any, action: str, context: str) -> tuple[str, float, bool]:
    out = _call(env, "step", action, context)
    ok = (isinstance(out, (tuple, list)) and len(out) == 3 and isinstance(out[0], str)
          and isinstance(out[1], numbers.Real) and not isinstance(out[1], bool) and isinstance(out[2], bool))
    if not ok:
        raise EnvError(f"{_FILES[type(env)]}:{_line_of(type(env).step)}: {type(env).__name__}.step returned "
                       f"{out!r} ({context}); it must return (observation: str, reward: float, done: bool)")
    return out[0], float(out[1]), out[2]


def read_rows(specs: list[str], seed: int, encoding: str = "utf-8") -> list[Any]:
    """The raw JSON rows of the dataset (the environment defines their shape), with file and line kept."""
    from tunesmith.data import load

    return load.read_raw(specs, seed, encoding)


def check_env(cls: type, rows: list[Any]) -> list[str]:
    """reset every row (its first observation is the prompt) and try one step on each with an empty answer (the
    policy can write anything, so step must take anything). Returns the first observations."""
    first = []
    for row in rows:
        where = f"row {row.source}:{row.line}"
        env = cls()
        first.append(reset(env, row.data, where))
        step(env, "", f"{where}, checked with an empty action")
    return first


# -----------------------------------------------------------------------------
# Running episodes: the rollout function GRPOTrainer calls instead of its own generation


@dataclass
class Episode:
    env: Any
    context: str
    messages: list[dict]
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    reward: float = 0.0
    turns: int = 0
    done: bool = False      # the environment said so
    finished: bool = False  # done, out of turns, or out of completion budget

    def add(self, ids: list[int], trained: bool, logprobs: list[float] | None = None) -> None:
        self.completion_ids += ids
        self.env_mask += [int(trained)] * len(ids)
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)


def observation_ids(template: Any, messages: list[dict], action: str, observation: str) -> list[int]:
    """Ids between the end of the policy's answer and the next assistant header: the Template's own cut (it keeps the
    end-of-turn token with the answer and starts the next segment after it), tokenized on its own."""
    through = template.render_text(messages + [{"role": "assistant", "content": action}]).rstrip(" \n")
    after = template.render_text(messages + [{"role": "assistant", "content": action},
                                             {"role": "user", "content": observation}], add_generation_prompt=True)
    if not after.startswith(through):
        raise ConfigError(f"the chat template of {template.tokenizer.name_or_path} renders an answer differently "
                          "once a user turn follows it, so multi-turn episodes cannot be tokenized exactly")
    return encode(template, after[len(through):])


def encode(template: Any, text: str) -> list[int]:
    return template.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def make_rollout(cls: type, rows: list[Any], template: Any, max_turns: int,
                 max_turn_tokens: int | None = None) -> Callable[[list, Any], dict]:
    """rollout_func(prompts, trainer) for GRPOTrainer: one episode per prompt (TRL has already repeated each prompt
    num_generations times), all episodes of a batch advancing one turn per generate call. Each episode gets a fresh
    instance and its own reset(row), so the prompt is what reset says now (the dataset's copy is for logs)."""
    tokenizer = template.tokenizer
    end_ids = encode(template, template.end_of_turn.rstrip(" \n"))
    stop_ids = set(template.stop_token_ids)

    def rollout(prompts: list, trainer: Any) -> dict:
        budget = trainer.max_completion_length
        sampled_logprobs = True  # vLLM reports them; transformers generation does not (None)
        episodes = []
        for prompt in prompts:
            row = rows[prompt[-1][ROW_KEY]]
            env = cls()
            context = f"row {row.source}:{row.line}"
            messages = [{"role": "user", "content": reset(env, row.data, context)}]
            episodes.append(Episode(env, context, messages, template.render_prompt(messages)))
        for turn in range(max_turns):
            live = [e for e in episodes if not e.finished]
            if not live:
                break
            new_ids, new_logprobs = generate_turn(trainer, [e.prompt_ids + e.completion_ids for e in live],
                                                  max_turn_tokens or budget)
            sampled_logprobs = sampled_logprobs and new_logprobs is not None
            for i, (e, ids) in enumerate(zip(live, new_ids)):
                ids = list(ids)[: budget - len(e.completion_ids)]
                e.add(ids, True, new_logprobs[i][: len(ids)] if new_logprobs is not None else None)
                action = tokenizer.decode(ids, skip_special_tokens=True)
                observation, reward, e.done = step(e.env, action, f"{e.context}, turn {turn + 1}")
                e.reward += reward
                e.turns += 1
                if e.done or turn + 1 == max_turns:
                    e.finished = True
                    continue
                closing = [] if ids and ids[-1] in stop_ids else end_ids  # cut at max tokens: close the turn
                following = closing + observation_ids(template, e.messages, action, observation)
                if len(e.completion_ids) + len(following) >= budget:
                    e.finished = True  # no room left to answer the observation
                    continue
                e.add(following, False)
                e.messages += [{"role": "assistant", "content": action}, {"role": "user", "content": observation}]
        return {
            "prompt_ids": [e.prompt_ids for e in episodes],
            "completion_ids": [e.completion_ids for e in episodes],
            "logprobs": [e.logprobs for e in episodes] if sampled_logprobs else None,
            "env_mask": [e.env_mask for e in episodes],
            "env_reward": [e.reward for e in episodes],
            "env_turns": [e.turns for e in episodes],
            "env_done": [e.done for e in episodes],
        }

    return rollout


def env_reward(completions: list, env_reward: list[float], env_turns: list[int] | None = None,
               env_done: list[bool] | None = None, log_metric: Callable | None = None, **_: Any) -> list[float]:
    """The episode reward, forwarded by the rollout; logs turns per episode and the share the environment ended."""
    if log_metric is not None and env_turns:
        log_metric("episodes/turns", sum(env_turns) / len(env_turns))
        log_metric("episodes/done", sum(map(bool, env_done or [])) / len(env_turns))
    return [float(r) for r in env_reward]


# -----------------------------------------------------------------------------
# The hook grpo.py calls


@dataclass
class EnvRun:
    train_dataset: Any            # column `prompt`: the first observation, as a user turn
    rollout_func: Callable        # pass to GRPOTrainer(rollout_func=...)
    reward_funcs: list[Callable]  # [env_reward]; add the run's other reward functions beside it
    rows: int


def rollout_func_for(cfg: Any, template: Any) -> EnvRun:
    """Everything GRPO needs for `--grpo.env`: call before the weights load, so a broken environment costs no time."""
    import datasets

    from tunesmith.data.load import describe_problems
    from tunesmith.train.tokenize import length_problem

    cls = load_env(cfg.grpo.env)
    rows = read_rows(cfg.dataset, cfg.seed, cfg.encoding)
    first = check_env(cls, rows)
    problems = []  # as grpo checks its prompts: what the memory plan assumed must hold
    for row, obs in zip(rows, first):
        n = len(template.render_prompt([{"role": "user", "content": obs}]))
        too_long = length_problem(row, "reset()", n, cfg.max_length, cfg.rollout.max_completion_length)
        if too_long:
            problems.append(too_long)
    if problems:
        raise DataError(describe_problems(problems))
    observation_ids(template, [{"role": "user", "content": first[0]}], "probe", "probe")  # the template can cut turns
    prompts = [[{"role": "user", "content": obs, ROW_KEY: i}] for i, obs in enumerate(first)]
    rollout = make_rollout(cls, rows, template, cfg.grpo.max_turns, cfg.grpo.max_turn_tokens)
    return EnvRun(datasets.Dataset.from_dict({"prompt": prompts}), rollout, [env_reward], len(rows))
